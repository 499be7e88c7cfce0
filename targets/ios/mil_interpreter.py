"""A numpy interpreter for the MIL program inside a saved .mlpackage (verification level `simulated`).

There is no Core ML runtime off Apple platforms, and a spec-only check passes a model whose fp16
logits are all zero. So the package's own program is rebuilt with coremltools' milproto loader and
evaluated op by op: every op's result is rounded to the dtype the program declares for it (fp16
stays fp16), while the arithmetic inside one op (a matmul's sums, a reduction) runs in fp32, as
Core ML's GPU and Neural Engine accumulate. Weight compression ops (constexpr_*) are expanded once.
State (keyCache/valueCache) lives in the interpreter between calls, like an MLState.

Every fp16 value is held in fp32, rounded to fp16 (what numpy's matmul needs, and float32 holds any
fp16 value exactly): weights once, and each op's result as it is rounded to its declared dtype. So the
numbers are those of fp16 tensors, without numpy's fp16 casts, which were a quarter of a simulation's
time (torch rounds fp32 to fp16 and back about ten times faster). Ops that only move values (reshape,
slices, gather, ...) are not rounded again: their inputs already hold fp16 values. The program's own
copy of a weight is dropped once the interpreter holds it (three copies of Gemma 3 270M's weights were
0.8 GB of a simulation's 2.5). A program with more than HALF_ABOVE weight values (a 1B model: 4 GB in fp32)
holds the weights that only linears and lookups read in fp16 instead, each linear widening a block of rows
to fp32 at a time: the same values and fp32 sums, half the memory, slower.

What this cannot show: the exact kernels a device picks (fused ops, accumulation order, ANE
placement). The level says so: simulated, not executed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packager.errors import UnsupportedError
from packager.verify.fp32_model import STREAM_ABOVE

# Bump when the interpreter's numbers may change (part of every simulated verification's cache key).
# 2: gelu's tanh form computed in place (x * x * x, not libm's pow: 2 of 82k values differ after rounding to fp16).
# 3: weights held in fp16 above HALF_ABOVE values (the linears' sums still in fp32, a row block at a time).
SIMULATOR_VERSION = 3
Kernel = Callable[["MilInterpreter", Any], Any]
# Ops whose outputs are not scanned for inf/NaN: constants, and whole-state copies whose new values
# were already scanned where they were computed (a scan of the full KV cache per layer is the
# interpreter's largest cost otherwise).
_UNCHECKED = frozenset({"const", "read_state", "slice_update", "coreml_update_state"})
KERNELS: dict[str, Kernel] = {}


def kernel(*names: str) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        for name in names:
            KERNELS[name] = fn
        return fn

    return register


# coremltools rebuilds a program inside its builder's process-wide block context: two packages loaded by two
# threads at once mix their ops ("MIL variable inputIds has no value yet", reproduced 2026-12-05).
_LOADING = threading.Lock()


def load_program(package: Path, function: str | None = None) -> tuple[Any, Any]:
    """Return (MIL program, model spec) of a saved .mlpackage, without loading it into Core ML; with `function`,
    that function of a multifunction package as a package holding it alone (targets.ios.multifunction)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    from targets.ios import compat
    from targets.ios.multifunction import function_spec

    compat.apply()  # the loader's weight reads without a mapping of the whole file (compat.py, 5)
    with _LOADING:
        model = ct.models.MLModel(str(package), skip_model_load=True)
        spec = model.get_spec() if function is None else function_spec(model.get_spec(), function)
        return milproto_load(spec, spec.specificationVersion, model.weights_dir), spec


def _nptype(var: Any) -> Any:
    from coremltools.converters.mil.mil import types

    dtype = var.dtype
    return types.nptype_from_builtin(dtype) if dtype is not None else None


@dataclass(frozen=True)
class _Step:
    """One op as the interpreter runs it, with what never changes between calls looked up once."""

    op: Any
    kernel: Kernel
    # (id of the output variable, the dtype the program declares for it, or None)
    outputs: tuple[tuple[int, Any], ...]
    # Whether its outputs are scanned for inf/NaN on every call (see _UNCHECKED).
    checked: bool
    # An expanded weight (constexpr_*): computed and scanned on the first call only.
    constant: bool
    # Its output must not be a view: it reads a tensor a later slice_update changes in place.
    materialized: bool = False
    # Its outputs are rounded to their declared dtypes (False for ops that only move values).
    rounded: bool = True


class MilInterpreter:
    """Evaluates the `main` function of a MIL program; keeps its states across predict() calls."""

    def __init__(self, program: Any) -> None:
        self.function = program.functions["main"]
        self.states: dict[str, np.ndarray] = {}
        # The running call's values by variable id (empty between calls).
        self.env: dict[int, Any] = {}
        self._constants: dict[int, np.ndarray] = {}
        self.first_nonfinite: str | None = None
        self.ops_evaluated: dict[str, int] = {}
        missing = sorted({op.op_type for op in self.function.operations} - set(KERNELS))
        if missing:
            raise UnsupportedError(f"the MIL interpreter has no kernel for: {', '.join(missing)}; add them to "
                                   "targets/ios/mil_interpreter.py before this package can be simulated.")
        # An op's inputs (a dict coremltools builds anew on every access) and its outputs' dtypes are
        # looked up once: on a 2-layer model they were a third of a decode step's time.
        self._inputs: dict[int, dict[str, Any]] = {id(op): dict(op.inputs) for op in self.function.operations}
        self.in_place, materialized = _in_place_updates(self.function)
        # The inputs only an expanded weight reads (its int8 data, its scales) are dropped once it is expanded.
        self._expansion_inputs = {id(op): [v for v in op.inputs.values() if _only_read_by_expansions(v)]
                                  for op in self.function.operations if op.op_type.startswith("constexpr_")}
        self.half_weights = _weight_values(self.function) > HALF_ABOVE
        # Constants are the same on every call (about half a program's ops): their values are set up once.
        self._const_env = {id(v): _held(v, self.holds_in_fp16(v)) for op in self.function.operations
                           if op.op_type == "const" for v in op.outputs}
        self._plan = [_Step(op, KERNELS[op.op_type], tuple((id(v), _nptype(v)) for v in op.outputs),
                            op.op_type not in _UNCHECKED and not op.op_type.startswith("constexpr_"),
                            op.op_type.startswith("constexpr_"), id(op) in materialized,
                            op.op_type not in _MOVES_VALUES)
                      for op in self.function.operations if op.op_type != "const"]
        self._plan_inputs = [(id(var), name, types_is_state(var), _nptype(var))
                             for name, var in self.function.inputs.items()]
        self._scan_constants = True
        # The linears that compute an output (a decoder's lm_head): with `last_positions`, only their last rows.
        self.output_linears = frozenset(id(var.op) for var in self.function.outputs
                                         if var.op is not None and var.op.op_type == "linear")
        self.last_positions: int | None = None
        self.reset_state()

    def reset_state(self) -> None:
        """Zero every state, as MLModel.makeState() gives a fresh one (reusing its memory)."""
        from coremltools.converters.mil.mil import types

        for name, var in self.function.inputs.items():
            if types.is_state(var.sym_type):
                wrapped = var.sym_type.wrapped_type()
                shape = tuple(wrapped.get_shape())
                dtype = types.nptype_from_builtin(wrapped.get_primitive())
                state = self.states.get(name)
                held = np.float32 if dtype == np.float16 else dtype
                if state is not None and state.shape == shape and state.dtype == held and state.flags.writeable:
                    state.fill(0)
                else:
                    self.states[name] = np.zeros(shape, dtype=held)

    def value(self, var: Any) -> Any:
        """The current value of an op input (a computed tensor, a state, or a constant)."""
        if isinstance(var, list | tuple):
            return [self.value(v) for v in var]
        key = id(var)
        if key in self.env:
            return self.env[key]
        if var.val is not None:
            return var.val
        raise KeyError(f"MIL variable {var.name} has no value yet")

    def inputs(self, op: Any) -> dict[str, Any]:
        """The op's input variables by name."""
        return self._inputs[id(op)]

    def arg(self, op: Any, name: str, default: Any = None) -> Any:
        var = self._inputs[id(op)].get(name)
        return default if var is None else self.value(var)

    def predict(self, inputs: dict[str, np.ndarray], last_positions: int | None = None) -> dict[str, np.ndarray]:
        """Run the program once; states persist (call reset_state() for a new sequence). An fp16 output comes
        back in fp32, holding its fp16 values. With `last_positions`, an output computed by a linear (the
        logits) holds only its last positions: a prompt's answer needs the last row, and the lm_head's other
        rows were half of a prefill's time (262,144 x 640 per position for Gemma 3)."""
        self.last_positions = last_positions
        self.env: dict[int, Any] = dict(self._const_env)
        for key, name, is_state, dtype in self._plan_inputs:
            self.env[key] = name if is_state else as_declared(np.asarray(inputs[name]), dtype)
        # Expanded weights (constexpr_*) are scanned once, on the first call: they never change.
        scan_constants, self._scan_constants = self._scan_constants, False
        with np.errstate(all="ignore"):  # overflow is looked for below, not warned about
            self._run(scan_constants)
        outputs = {var.name: self.env[id(var)] for var in self.function.outputs}
        self.env = {}
        return outputs

    def _run(self, scan_constants: bool) -> None:
        for step in self._plan:
            result = step.kernel(self, step.op)
            results = result if isinstance(result, tuple) else (result,)
            for (key, dtype), out in zip(step.outputs, results, strict=True):
                # An expanded weight is held in fp32, its values already rounded to the declared dtype.
                if step.rounded and dtype is not None and not step.constant \
                        and isinstance(out, np.ndarray | np.generic):
                    out = as_declared(out, dtype)
                if step.materialized and isinstance(out, np.ndarray) and out.base is not None:
                    out = out.copy()  # a view of a tensor a later op updates in place
                self.env[key] = out
                scan = step.checked or (scan_constants and step.constant)
                if scan and self.first_nonfinite is None and isinstance(out, np.ndarray) and out.dtype.kind == "f" \
                        and not np.isfinite(out).all():
                    bad = np.isnan(out).any() or np.isposinf(out).any()
                    if bad:
                        self.first_nonfinite = f"{step.op.op_type} {step.op.name}"

    def holds_in_fp16(self, var: Any) -> bool:
        """Whether weight `var` is held in fp16: this program is large enough (half_weights) and only kernels that
        widen a block at a time (linears, lookups) read it."""
        return self.half_weights and _half_held(var)

    def constant(self, op: Any, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Expanded weights are computed once per op, as Core ML does at load time; what only the expansion
        read is then let go."""
        key = id(op)
        if key not in self._constants:
            value = compute()
            var = op.outputs[0] if hasattr(op, "outputs") else op
            if value.dtype == np.float32 and self.holds_in_fp16(var):
                value = value.astype(np.float16)
            self._constants[key] = value
            # Every reference goes, the running call's environment's included: a 4B's int4 data (4 GB) was
            # otherwise held until the first call ended, beside the weights expanded from it.
            for var in self._expansion_inputs.pop(key, ()):
                if all(id(child) in self._constants for child in var.child_ops):
                    self._const_env.pop(id(var), None)
                    self.env.pop(id(var), None)
                    _drop_program_copy(var)
        return self._constants[key]


# A constant of at least this many values is a weight: the program's copy is dropped once it is held.
_WEIGHT_VALUES = 4096
# Above this many weight values in a program, weights are held in fp16 (module docstring): the checkpoint size
# above which a build reads the model a block at a time (2 GiB in fp32), so its estimates see one regime.
HALF_ABOVE = STREAM_ABOVE // 4
# fp32 values a linear with an fp16-held weight widens at once.
_HALF_ROWS_VALUES = 2**24
# Ops whose outputs are values of their inputs, moved: never rounded again (their inputs hold declared values).
_MOVES_VALUES = frozenset({"reshape", "expand_dims", "squeeze", "transpose", "concat", "tile", "split",
                           "slice_by_index", "slice_by_size", "slice_update", "gather", "read_state",
                           "coreml_update_state", "identity"})


def _weight_values(function: Any) -> int:
    """How many values the program's weights (constants and expanded constexpr outputs) have."""
    import math

    total = 0
    for op in function.operations:
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray) and \
                op.outputs[0].val.size >= _WEIGHT_VALUES and not _only_read_by_expansions(op.outputs[0]):
            total += op.outputs[0].val.size
        elif op.op_type.startswith("constexpr_"):
            total += math.prod(int(d) for d in op.outputs[0].shape)
    return total


def _half_held(var: Any) -> bool:
    """Whether a weight may be held in fp16: declared fp16 and read only as a linear's weight or a lookup's table
    (the kernels that widen it)."""
    return _nptype(var) == np.float16 and all(
        child.op_type == "gather" or (child.op_type == "linear" and child.inputs["weight"] is var)
        for child in var.child_ops)


def _held(var: Any, half: bool = False) -> Any:
    """A constant's value as the interpreter holds it: in the dtype the program declares (fp16 held in fp32, as
    every output is; a weight in fp16 with `half`, MilInterpreter.holds_in_fp16); a float weight's program copy
    is dropped."""
    value, dtype = var.val, _nptype(var)
    if not isinstance(value, np.ndarray | np.generic) or dtype is None:
        return value
    weight = np.dtype(dtype).kind == "f" and value.size >= _WEIGHT_VALUES
    held = np.asarray(value, dtype=np.float16) if half and weight else as_declared(value, dtype)
    if weight:
        _drop_program_copy(var)
    return held


def as_declared(value: np.ndarray | np.generic, dtype: Any) -> np.ndarray:
    """`value` with the values of `dtype`: fp16 is held in fp32 (float32's range and precision hold every fp16
    value, inf included, exactly), any other dtype as itself."""
    if dtype != np.float16:
        return np.asarray(value).astype(dtype, copy=False)
    if value.dtype == np.float16:
        return np.asarray(value, dtype=np.float32)
    return _f16_rounded(np.asarray(value, dtype=np.float32))


# Below this many values numpy's cast is as fast as calls into torch (measured: 10.6 vs 9.3 us at 4,096).
_TORCH_CAST_VALUES = 4096
# torch runs an elementwise op on at most this many values in the calling thread (at::internal::GRAIN_SIZE):
# larger ones wake its thread pool, whose spinning threads then take turns with OpenBLAS's (packager.threads).
_TORCH_GRAIN = 32768


def _f16_rounded(value: np.ndarray) -> np.ndarray:
    """fp32 values rounded to the nearest fp16 (ties to even, overflow to inf), kept in fp32: torch's
    vectorised casts (the same IEEE conversion as numpy's, 10x faster at 82k values), a grain at a time."""
    if value.size < _TORCH_CAST_VALUES or not value.flags.c_contiguous:
        return value.astype(np.float16).astype(np.float32)
    import torch

    source = torch.from_numpy(value.reshape(-1)) if value.flags.writeable else torch.tensor(value.reshape(-1))
    out = torch.empty(value.size, dtype=torch.float32)
    half = torch.empty(min(value.size, _TORCH_GRAIN), dtype=torch.float16)
    for start in range(0, value.size, _TORCH_GRAIN):
        end = min(value.size, start + _TORCH_GRAIN)
        part = half[:end - start]
        part.copy_(source[start:end])
        out[start:end].copy_(part)
    return out.numpy().reshape(value.shape)


def _only_read_by_expansions(var: Any) -> bool:
    return var.op is not None and var.op.op_type == "const" and all(
        child.op_type.startswith("constexpr_") for child in var.child_ops) and \
        isinstance(var.val, np.ndarray) and var.val.size >= _WEIGHT_VALUES


def _drop_program_copy(var: Any) -> None:
    """Let go of coremltools' copy of a constant's value (the interpreter holds what it needs)."""
    # Where coremltools keeps it: the const's output variable and its op's internal `val` input (nothing reads
    # either after set-up).
    for holder in (var, getattr(var.op, "val", None)):
        if holder is not None and hasattr(holder, "_sym_val"):
            holder._sym_val = None


def _in_place_updates(function: Any) -> tuple[frozenset[int], frozenset[int]]:
    """(ids of the slice_update ops that may write into their input, ids of the ops whose outputs must then be
    copies rather than views of it).

    A stateful decoder's cache is one tensor for every layer: each layer's slice_update takes the
    cache the layer before updated, which that layer's attention also read. Copying it for every layer
    moved the whole cache (all layers, all positions) twice per layer and prediction. Writing in place
    is safe when every other reader of the input runs before the update (program order) and keeps no
    view of it, so those readers' outputs are made copies (one layer's slice, not the whole cache).
    Never in place: constants and the function's inputs (their values belong to the caller).
    """
    order = {id(op): i for i, op in enumerate(function.operations)}
    in_place: set[int] = set()
    materialized: set[int] = set()
    for op in function.operations:
        if op.op_type != "slice_update":
            continue
        source = op.inputs["x"]
        producer = source.op
        if producer is None or producer.op_type == "const" or producer.op_type.startswith("constexpr_"):
            continue
        if producer.op_type in ("read_state", "coreml_update_state") and not any(
                child.op_type == "coreml_update_state" for child in op.outputs[0].child_ops):
            continue  # the input is the state's own memory: change it only where the update is stored there
        others = [child for child in source.child_ops if child is not op]
        if all(order.get(id(child), len(order)) < order[id(op)] for child in others) and \
                not any(out is source for out in function.outputs):
            in_place.add(id(op))
            materialized.update(id(child) for child in others)
    return frozenset(in_place), frozenset(materialized)


def types_is_state(var: Any) -> bool:
    from coremltools.converters.mil.mil import types

    return bool(types.is_state(var.sym_type))


def _f32(x: Any) -> np.ndarray:
    a = np.asarray(x)
    return a.astype(np.float32, copy=False) if a.dtype.kind == "f" else a


# ---------------------------------------------------------------------------------------------
# Kernels. Each returns the op's output(s); the interpreter rounds them to the declared dtype. They run inside
# predict()'s np.errstate(all="ignore") (overflow is looked for in the results): none sets its own, which cost
# more than the arithmetic of a decode step's small ops.


@kernel("const")
def _const(vm: MilInterpreter, op: Any) -> Any:
    return op.outputs[0].val


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "maximum": np.maximum,
    "minimum": np.minimum, "pow": np.power, "floor_div": np.floor_divide, "mod": np.mod,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal, "logical_and": np.logical_and,
    "logical_or": np.logical_or,
}


def _binary(vm: MilInterpreter, op: Any) -> Any:
    return _BINARY[op.op_type](_f32(vm.arg(op, "x")), _f32(vm.arg(op, "y")))


for _name in _BINARY:
    KERNELS[_name] = _binary

_UNARY: dict[str, Callable[[Any], Any]] = {
    "abs": np.abs, "exp": np.exp, "sqrt": np.sqrt, "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
    "log": np.log, "floor": np.floor, "ceil": np.ceil, "round": np.round, "sign": np.sign, "square": np.square,
    "identity": lambda x: x, "logical_not": np.logical_not,
}


def _unary(vm: MilInterpreter, op: Any) -> Any:
    return _UNARY[op.op_type](_f32(vm.arg(op, "x")))


for _name in _UNARY:
    KERNELS[_name] = _unary


@kernel("inverse")
def _inverse(vm: MilInterpreter, op: Any) -> Any:
    return 1.0 / (_f32(vm.arg(op, "x")) + np.float32(vm.arg(op, "epsilon", 1e-4)))


@kernel("rsqrt")
def _rsqrt(vm: MilInterpreter, op: Any) -> Any:
    return 1.0 / np.sqrt(_f32(vm.arg(op, "x")) + np.float32(vm.arg(op, "epsilon", 1e-12)))


@kernel("clip")
def _clip(vm: MilInterpreter, op: Any) -> Any:
    return np.clip(_f32(vm.arg(op, "x")), vm.arg(op, "alpha"), vm.arg(op, "beta"))


@kernel("cast")
def _cast(vm: MilInterpreter, op: Any) -> Any:
    return np.asarray(vm.arg(op, "x"))


@kernel("sigmoid")
def _sigmoid(vm: MilInterpreter, op: Any) -> Any:
    return 1.0 / (1.0 + np.exp(-_f32(vm.arg(op, "x"))))


@kernel("silu")
def _silu(vm: MilInterpreter, op: Any) -> Any:
    x = _f32(vm.arg(op, "x"))
    return x / (1.0 + np.exp(-x))


@kernel("gelu")
def _gelu(vm: MilInterpreter, op: Any) -> Any:
    x = _f32(vm.arg(op, "x"))
    mode = vm.arg(op, "mode", "EXACT")
    if mode == "TANH_APPROXIMATION":
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in place: x ** 3 (libm's pow) and the temporaries
        # were 15 % of a Gemma prefill.
        t = x * x
        t *= x
        t *= np.float32(0.044715)
        t += x
        t *= np.float32(np.sqrt(2.0 / np.pi))
        np.tanh(t, out=t)
        t += np.float32(1.0)
        t *= x
        t *= np.float32(0.5)
        return t
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1.0 + np.exp(-1.702 * x))
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)).astype(np.float32))


@kernel("softmax")
def _softmax(vm: MilInterpreter, op: Any) -> Any:
    x = _f32(vm.arg(op, "x"))
    axis = int(vm.arg(op, "axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _axes(vm: MilInterpreter, op: Any) -> tuple[int, ...] | None:
    axes = vm.arg(op, "axes")
    return None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))


_REDUCTIONS: dict[str, Callable[..., Any]] = {
    "reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min,
    "reduce_prod": np.prod,
}


def _reduce(vm: MilInterpreter, op: Any) -> Any:
    x = _f32(vm.arg(op, "x"))
    keep = bool(vm.arg(op, "keep_dims", False))
    return np.asarray(_REDUCTIONS[op.op_type](x, axis=_axes(vm, op), keepdims=keep))


for _name in _REDUCTIONS:
    KERNELS[_name] = _reduce


@kernel("reduce_argmax")
def _argmax(vm: MilInterpreter, op: Any) -> Any:
    x = _f32(vm.arg(op, "x"))
    out = np.argmax(x, axis=int(vm.arg(op, "axis", -1)))
    return np.expand_dims(out, int(vm.arg(op, "axis", -1))) if vm.arg(op, "keep_dims", False) else out


def _dense_weight(vm: MilInterpreter, var: Any) -> np.ndarray:
    """A weight input as fp32, or as held in fp16 (constants and expanded constexpr outputs are cached)."""
    value = vm.value(var)
    if isinstance(value, np.ndarray) and value.dtype == np.float16 and vm.half_weights:
        return value
    if var.op is not None and (var.op.op_type == "const" or var.op.op_type.startswith("constexpr_")):
        return vm.constant(var, lambda: np.asarray(value, dtype=np.float32))
    return np.asarray(value, dtype=np.float32)


@kernel("linear")
def _linear(vm: MilInterpreter, op: Any) -> Any:
    x = _f32(vm.arg(op, "x"))
    if vm.last_positions is not None and x.ndim >= 2 and id(op) in vm.output_linears:
        x = x[..., -vm.last_positions:, :]
    weight = _dense_weight(vm, vm.inputs(op)["weight"])
    if weight.dtype == np.float16:
        step = max(1, _HALF_ROWS_VALUES // weight.shape[1])
        out = np.empty((*x.shape[:-1], weight.shape[0]), dtype=np.float32)
        for start in range(0, weight.shape[0], step):
            out[..., start:start + step] = x @ weight[start:start + step].astype(np.float32).T
    else:
        out = x @ weight.T
    bias = vm.arg(op, "bias")
    return out + _f32(bias) if bias is not None else out


@kernel("matmul")
def _matmul(vm: MilInterpreter, op: Any) -> Any:
    x, y = _f32(vm.arg(op, "x")), _f32(vm.arg(op, "y"))
    if vm.arg(op, "transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if vm.arg(op, "transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@kernel("shape")
def _shape(vm: MilInterpreter, op: Any) -> Any:
    return np.asarray(np.shape(vm.arg(op, "x")), dtype=np.int32)


@kernel("reshape")
def _reshape(vm: MilInterpreter, op: Any) -> Any:
    x = np.asarray(vm.arg(op, "x"))
    shape = [int(s) for s in vm.arg(op, "shape")]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@kernel("expand_dims")
def _expand_dims(vm: MilInterpreter, op: Any) -> Any:
    x = np.asarray(vm.arg(op, "x"))
    rank = x.ndim + len(_axes(vm, op) or ())
    for axis in sorted(a if a >= 0 else a + rank for a in _axes(vm, op) or ()):
        x = np.expand_dims(x, axis)
    return x


@kernel("squeeze")
def _squeeze(vm: MilInterpreter, op: Any) -> Any:
    x = np.asarray(vm.arg(op, "x"))
    axes = _axes(vm, op)
    return np.squeeze(x, axis=axes) if axes else np.squeeze(x)


@kernel("transpose")
def _transpose(vm: MilInterpreter, op: Any) -> Any:
    return np.transpose(np.asarray(vm.arg(op, "x")), [int(p) for p in vm.arg(op, "perm")])


@kernel("concat")
def _concat(vm: MilInterpreter, op: Any) -> Any:
    values = [np.atleast_1d(np.asarray(v)) for v in vm.arg(op, "values")]
    axis = int(vm.arg(op, "axis"))
    if vm.arg(op, "interleave", False):
        stacked = np.stack(values, axis=axis + 1 if axis >= 0 else axis)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


@kernel("tile")
def _tile(vm: MilInterpreter, op: Any) -> Any:
    return np.tile(np.asarray(vm.arg(op, "x")), [int(r) for r in vm.arg(op, "reps")])


@kernel("split")
def _split(vm: MilInterpreter, op: Any) -> Any:
    x = np.asarray(vm.arg(op, "x"))
    axis = int(vm.arg(op, "axis"))
    sizes = vm.arg(op, "split_sizes")
    if sizes is None:
        return tuple(np.split(x, int(vm.arg(op, "num_splits")), axis=axis))
    return tuple(np.split(x, np.cumsum([int(s) for s in sizes])[:-1], axis=axis))


def _slices(vm: MilInterpreter, op: Any, shape: tuple[int, ...]) -> tuple[list[slice | int], list[int]]:
    rank = len(shape)
    begin = [int(b) for b in np.atleast_1d(vm.arg(op, "begin"))]
    end = [int(e) for e in np.atleast_1d(vm.arg(op, "end"))]
    stride = [int(s) for s in np.atleast_1d(vm.arg(op, "stride", [1] * rank))]
    begin_mask = list(np.atleast_1d(vm.arg(op, "begin_mask", [False] * rank)))
    end_mask = list(np.atleast_1d(vm.arg(op, "end_mask", [False] * rank)))
    squeeze = list(np.atleast_1d(vm.arg(op, "squeeze_mask", [False] * rank)))
    index: list[slice | int] = []
    squeezed = []
    for d in range(rank):
        if squeeze[d]:
            index.append(begin[d] if begin[d] >= 0 else begin[d] + shape[d])
            squeezed.append(d)
            continue
        b = None if begin_mask[d] else begin[d]
        e = None if end_mask[d] else end[d]
        index.append(slice(b, e, stride[d]))
    return index, squeezed


@kernel("slice_by_index")
def _slice_by_index(vm: MilInterpreter, op: Any) -> Any:
    x = np.asarray(vm.arg(op, "x"))
    index, _ = _slices(vm, op, x.shape)
    return x[tuple(index)]


@kernel("slice_by_size")
def _slice_by_size(vm: MilInterpreter, op: Any) -> Any:
    x = np.asarray(vm.arg(op, "x"))
    begin = [int(b) for b in vm.arg(op, "begin")]
    size = [int(s) for s in vm.arg(op, "size")]
    return x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size, strict=True))]


@kernel("slice_update")
def _slice_update(vm: MilInterpreter, op: Any) -> Any:
    x = np.asarray(vm.arg(op, "x"))
    # In place where nothing reads the old value afterwards (MilInterpreter._in_place_updates); else a copy.
    out = x if id(op) in vm.in_place and x.flags.writeable else x.copy()
    index, _ = _slices(vm, op, x.shape)
    out[tuple(index)] = np.asarray(vm.arg(op, "update")).astype(out.dtype)
    return out


@kernel("gather")
def _gather(vm: MilInterpreter, op: Any) -> Any:
    x = np.asarray(vm.value(vm.inputs(op)["x"]))
    indices = np.asarray(vm.arg(op, "indices")).astype(np.int64)
    axis = int(vm.arg(op, "axis", 0))
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    out = np.take(x, indices, axis=axis)
    return out.astype(np.float32) if out.dtype == np.float16 else out  # a table held in fp16


@kernel("read_state")
def _read_state(vm: MilInterpreter, op: Any) -> Any:
    return vm.states[vm.value(vm.inputs(op)["input"])]


@kernel("coreml_update_state")
def _update_state(vm: MilInterpreter, op: Any) -> Any:
    name = vm.value(vm.inputs(op)["state"])
    value = np.asarray(vm.arg(op, "value")).astype(vm.states[name].dtype, copy=False)
    vm.states[name] = value
    return value


@kernel("fill")
def _fill(vm: MilInterpreter, op: Any) -> Any:
    return np.full([int(s) for s in vm.arg(op, "shape")], vm.arg(op, "value", 0.0))


@kernel("range_1d")
def _range(vm: MilInterpreter, op: Any) -> Any:
    return np.arange(vm.arg(op, "start"), vm.arg(op, "end"), vm.arg(op, "step"))


@kernel("select")
def _select(vm: MilInterpreter, op: Any) -> Any:
    return np.where(vm.arg(op, "cond"), _f32(vm.arg(op, "a")), _f32(vm.arg(op, "b")))


@kernel("band_part")
def _band_part(vm: MilInterpreter, op: Any) -> Any:
    x = np.asarray(vm.arg(op, "x"))
    lower, upper = int(vm.arg(op, "lower", -1)), int(vm.arg(op, "upper", -1))
    rows, cols = np.indices(x.shape[-2:])
    keep = np.ones_like(rows, dtype=bool)
    if lower >= 0:
        keep &= rows - cols <= lower
    if upper >= 0:
        keep &= cols - rows <= upper
    return np.where(keep, x, 0)


# Weight compression (expanded once, as Core ML decompresses at load time).


def _blocked(values: Any, small: tuple[int, ...]) -> Any:
    """`values` (a torch tensor) reshaped so a blockwise parameter of shape `small`, viewed by `_per_block`,
    broadcasts over it: axis i of n values becomes (small[i], n // small[i])."""
    return values.reshape([d for n, k in zip(values.shape, small, strict=True) for d in (k, n // k)])


def _per_block(small: Any) -> Any:
    return small.reshape([d for k in small.shape for d in (k, 1)])


@kernel("constexpr_blockwise_shift_scale")
def _blockwise(vm: MilInterpreter, op: Any) -> Any:
    def expand() -> np.ndarray:
        import torch

        data = np.asarray(vm.arg(op, "data"))
        scale = torch.from_numpy(np.asarray(vm.arg(op, "scale")).astype(np.float32))
        offset = vm.arg(op, "offset")
        offset = None if offset is None else torch.from_numpy(np.asarray(offset).astype(np.float32))
        # torch's allocation: it asks for huge pages, and first touching 0.7 GB of 4-kB pages (Gemma's embedding
        # table) took 8 s on this build host's VM.
        # A weight held in fp16 (MilInterpreter.half_weights) is expanded into fp16 directly: a fp32 buffer
        # beside its fp16 copy was 4 GB at once for a 4B's embedding table.
        half = vm.holds_in_fp16(op.outputs[0])
        out = torch.empty(data.shape, dtype=torch.float16 if half else torch.float32).numpy()
        # Row blocks of about 2^22 values (whole scale blocks): full-size temporaries were 2 GB for an
        # embedding table. torch's casts and broadcasts: numpy's (np.repeat, int8 -> fp32) were 10 s of a
        # Gemma 3 270M simulation. Same arithmetic: (data - offset) * scale in fp32, rounded to the output dtype.
        rows = data.shape[0] // scale.shape[0]
        step = max(rows, (2**22 // max(1, data[0].size)) // rows * rows)
        declared = _nptype(op.outputs[0])
        for start in range(0, data.shape[0], step):
            blocks = slice(start // rows, (start + min(step, data.shape[0] - start)) // rows)
            small = tuple(scale[blocks].shape)
            part = _blocked(torch.from_numpy(np.array(data[start:start + step])).to(torch.float32), small)
            if offset is not None:
                part -= _per_block(offset[blocks])
            part *= _per_block(scale[blocks])
            out[start:start + step] = as_declared(part.reshape(-1, *data.shape[1:]).numpy(), declared)
        return out

    return vm.constant(op, expand)


@kernel("constexpr_lut_to_dense")
def _lut(vm: MilInterpreter, op: Any) -> Any:
    def expand() -> np.ndarray:
        indices = np.asarray(vm.arg(op, "indices")).astype(np.int64)
        lut = np.asarray(vm.arg(op, "lut"))
        if lut.shape[-1] != 1:
            raise UnsupportedError("vector palettization (lut vector size > 1) is not simulated")
        grids = np.indices(indices.shape, sparse=True)
        group = tuple(g // (n // m) for g, n, m in zip(grids, indices.shape, lut.shape[:-2], strict=True))
        return as_declared(lut[(*group, indices, 0)], _nptype(op.outputs[0]))

    return vm.constant(op, expand)

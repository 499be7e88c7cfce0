"""Where coremltools 9.0 needs help, patched in one spot each (`apply()` installs them all, once per process).

1. It does not work with numpy 2.4: its torch frontend converts aten::Int / aten::Bool of a constant
   with `int(x.val)`; when the constant is a one-element array (a folded `x.shape[-1] // 2`, as in
   rotate_half) numpy >= 2.3 refuses to turn an array of ndim > 0 into a Python scalar and the
   conversion dies with "only 0-dimensional arrays can be converted to Python scalars". The shim reads
   such a value with `.item()` and leaves every other case to coremltools. tests/test_ios.py proves the
   shim is still needed: it fails once upstream fixes the bug, so the shim can be deleted.
   (The field notes also mention torch 2.13 emitting aten::alias; edgepack's traced decoder contains
   no alias node, so no shim is installed for it. tests/test_ios.py lists the traced op kinds.)

2. It is slow where it need not be: the fp16 pass asks, for every op, whether a constant input holds a
   value fp16 cannot (65,504 < |v| < 1e38), by copying the whole weight three times (abs, a boolean
   index, a gather). On Gemma 3 270M that was 23 s of a 113-s conversion, and it grows with the model.
   The same question is answered from the weight's largest and smallest values (two passes, no copy),
   and coremltools' own expression decides only when they leave fp16's range (tests/test_ios.py checks
   the two agree, NaN and infinities included).

3. Its fp16 pass also asks of every constant it casts whether small values underflowed to zero, which it
   fixes only in constants of fewer than 400 values, but it counts the values with `len(var.val.flatten())`:
   a full copy of every weight. For a 1B model's embedding table that was a transient 1.2 GB on top of the
   conversion. The shim answers the count with `.size` and leaves smaller constants to coremltools' check.

4. When it saves an fp16 weight it makes two copies first (`val.flatten().tobytes()`, then a uint16 view of
   those bytes): for that table, 1.2 GB more while the package was written. The shim hands the writer a
   uint16 view of the weight itself (the same bytes) and leaves every other dtype to coremltools.

5. Its program loader (the simulator's, targets.ios.mil_interpreter.load_program) keeps one reader of the
   weight file for the whole load, which maps the file: every page it read stays in the process's resident
   memory until the load ends. For a 4B model's fp16 package that was 7.4 GB beside the 7.4 GB of weights it
   had read (peak 15.4 GB, 8.1 GB with the shim). The shim lets the reader go after each weight (the same
   values: tests/test_ios.py).
"""

from __future__ import annotations

from typing import Any

from targets.ios.verify import FP16_MAX

_applied = False
# coremltools' functions a shim replaced, by what they do (tests compare the two).
ORIGINALS: dict[str, Any] = {}
# coremltools' fp16 pass repairs values that underflow to zero only in constants smaller than this.
UNDERFLOW_CHECKED_BELOW = 400


def _scalar(value: Any) -> Any:
    """A one-element array as its Python scalar; anything else unchanged."""
    import numpy as np

    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(()).item()
    return value


def exceeds_fp16(value: Any) -> bool:
    """coremltools' fp16_overflow test of one constant: some |v| in (65,504, 1e38), NaN ignored."""
    import numpy as np

    array = np.asarray(value)
    if array.size == 0:
        return False
    # fmax / fmin skip NaN, as coremltools' `abs_value < 1e38` filter does.
    if np.fmax.reduce(array, axis=None) <= FP16_MAX and np.fmin.reduce(array, axis=None) >= -FP16_MAX:
        return False
    magnitude = np.abs(np.expand_dims(array, 0))
    return bool(np.max(magnitude[np.where(magnitude < 1e38)], initial=0.0) > FP16_MAX)


def _fp16_overflow(op: Any) -> bool:
    """FP16ComputePrecision.fp16_overflow with `exceeds_fp16` as its per-constant test."""
    for inputs in op.inputs.values():
        for var in inputs if isinstance(inputs, list | tuple) else [inputs]:
            if var.op is not None and var.op.op_type == "const" and var.is_tensor_or_scalar_of(dtype="fp32") \
                    and exceeds_fp16(var.op.val.val):
                return True
    return False


def apply() -> None:
    """Install the scalar-cast shim, the fp16 range test, the underflow count, the fp16 weight writer and the
    weight reader into coremltools (once per process)."""
    global _applied
    if _applied:
        return
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    FP16ComputePrecision.fp16_overflow = staticmethod(_fp16_overflow)
    underflow_check = FP16ComputePrecision._check_underflow_to_zero

    def check_underflow(self: Any, new_var: Any, var: Any) -> None:
        if getattr(var.val, "size", 0) >= UNDERFLOW_CHECKED_BELOW:
            return  # what coremltools' own test (fewer than 400 values) decides, without copying the weight
        underflow_check(self, new_var, var)

    FP16ComputePrecision._check_underflow_to_zero = check_underflow
    from coremltools.converters.mil.backend.mil import helper

    ORIGINALS["write weight"] = write_data = helper._get_offset_by_writing_data

    def write_weight(output_var: Any, blob_writer: Any) -> Any:
        value = output_var.val
        if isinstance(value, np.ndarray) and value.dtype == np.float16:
            return blob_writer.write_fp16_data(np.ascontiguousarray(value).reshape(-1).view(np.uint16))
        return write_data(output_var, blob_writer)

    helper._get_offset_by_writing_data = write_weight
    from coremltools.converters.mil.frontend.milproto import load as milproto_load

    ORIGINALS["read weight"] = read_weight = milproto_load._load_file_value

    def read_unmapped(context: Any, value: Any, dtype: Any) -> Any:
        try:
            return read_weight(context, value, dtype)
        finally:
            context.blob_reader_from_filename.clear()  # its mapping of the weight file goes with it

    milproto_load._load_file_value = read_unmapped

    original_cast = ops._cast

    def cast(context: Any, node: Any, dtype: Any, dtype_name: str) -> None:
        x = ops._get_inputs(context, node, expected=1)[0]
        value = x.val if x.can_be_folded_to_const() else None
        if getattr(value, "ndim", 0) > 0 and value.size == 1:
            context.add(mb.const(val=dtype(_scalar(value)), name=node.name), node.name)
            return
        original_cast(context, node, dtype, dtype_name)

    ops._cast = cast
    _applied = True

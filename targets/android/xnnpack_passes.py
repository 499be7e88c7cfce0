"""XNNPACK's lowering without the work that cannot change the program.

ExecuTorch runs 17 passes over every partition it hands to XNNPACK, and each ExportPass ends by
retracing the partition with fake tensors: with a dynamic sequence length every op re-derives its
symbolic shapes. A pass that rewrites only convolutions, batch norms, PReLU, max-pool/argmax getitems,
bilinear upsampling, dim-order copies, dtype copies or ReLU/hardtanh activations has nothing to rewrite in
most of a decoder's partitions, yet its retrace costs as much as a working pass's: on Gemma 3 270M's 56
partitions 4.3-7.1 s each; skipping nine of them took the example's export from 222 to 172 s.

Each skippable pass is listed with the ops it rewrites; a pass is dropped for a partition only when none
of them is in that partition's graph, so a model that has them still gets every pass. The lowered program
is byte for byte the one ExecuTorch writes with all passes (tests/test_android.py).

The same holds one step earlier: XNNPACK asks ExecuTorch to keep some aten ops whole (linear, ...) and
gives a per-node check, and a per-node check sends to_edge_transform_and_lower down its
EDGE_DO_NOT_DECOMP path, which decomposes the whole program three times instead of two. When every node of
those ops passes the check, keeping the ops whole without it is the same decision (whole_op_partitioner):
the example's export went from 182 to 167 s with the same .pte and .ptd bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

BATCH_NORMS = frozenset({"aten.native_batch_norm.default", "aten._native_batch_norm_legit_no_training.default"})


def _any_of(names: frozenset[str]) -> Callable[[frozenset[str]], bool]:
    return lambda present: not names.isdisjoint(present)


@cache
def _bilinear_patterns() -> tuple[frozenset[str], ...]:
    """The op names of each upsample pattern ConvertToUpsampleBilinear2d matches (a match needs all of them)."""
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d

    return tuple(frozenset(op_name(n.target) for n in pattern.graph.nodes if n.op == "call_function")
                 for pattern in bilinear_2d.get_graphs_dict())


def _bilinear(present: frozenset[str]) -> bool:
    return any(ops <= present for ops in _bilinear_patterns())


@cache
def _fuseable_activations() -> frozenset[str]:
    from executorch.backends.xnnpack._passes.fuse_activation_pass import FuseActivationPass

    return frozenset(op_name(op) for op in FuseActivationPass.FUSEABLE_ACTIVATIONS)


@cache
def _dim_order_ops() -> frozenset[str]:
    from executorch.exir.passes.dim_order_ops_registry import MemoryFormatOpsMap

    return frozenset(op_name(op) for op in MemoryFormatOpsMap)


# Pass class name -> whether a partition holding these op names could be rewritten by it.
SKIPPABLE: dict[str, Callable[[frozenset[str]], bool]] = {
    "FuseBatchNormPass": _any_of(BATCH_NORMS),
    "DecomposeBatchNorm": _any_of(BATCH_NORMS),
    "Conv1dUnsqueezePass": _any_of(frozenset({"aten.convolution.default"})),
    "PReLUReshapePass": _any_of(frozenset({"aten._prelu_kernel.default"})),
    "RemoveGetItemPass": _any_of(frozenset({"aten.max_pool2d_with_indices.default", "aten.max.dim"})),
    "ConvertToUpsampleBilinear2d": _bilinear,
    "DimOrderOpsRevertPass": lambda present: not _dim_order_ops().isdisjoint(present),
    "FuseActivationPass": lambda present: not _fuseable_activations().isdisjoint(present),
    "RemoveRedundantCopyPass": _any_of(frozenset({"aten._to_copy.default"})),
}


def op_name(target: Any) -> str:
    """An fx call target's op name as ExecuTorch's passes compare it ("aten.convolution.default")."""
    return getattr(target, "__name__", str(target))


def applicable(passes: list[Any], present: frozenset[str]) -> list[Any]:
    """The passes that could change a graph holding the ops named in `present` (order kept)."""
    return [p for p in passes if SKIPPABLE.get(p.__name__, lambda _present: True)(present)]


@contextmanager
def only_applicable_passes() -> Iterator[None]:
    """While open, XNNPACK's preprocessing runs only the passes that could rewrite each partition."""
    from executorch.backends.xnnpack import xnnpack_preprocess

    original = xnnpack_preprocess.XNNPACKPassManager

    class ApplicablePassManager(original):  # type: ignore[misc, valid-type]
        def __init__(self, exported_program: Any, passes: list[Any] | None = None) -> None:
            super().__init__(exported_program, passes)
            present = frozenset(op_name(node.target) for node in exported_program.graph.nodes
                                if node.op == "call_function")
            self.passes = applicable(self.passes, present)

    xnnpack_preprocess.XNNPACKPassManager = ApplicablePassManager
    try:
        yield
    finally:
        xnnpack_preprocess.XNNPACKPassManager = original


def whole_op_partitioner() -> Any:
    """An XnnpackPartitioner that drops its per-node check when every node of the ops it keeps whole passes it.

    Without a check ExecuTorch keeps those ops whole in two decompositions of the program instead of three
    (_can_skip_using_EDGE_DO_NOT_DECOMP); with a node that fails it, ExecuTorch gets the check as before.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class WholeOpPartitioner(XnnpackPartitioner):  # type: ignore[misc, valid-type]
        def ops_to_not_decompose(self, ep: Any) -> tuple[list[Any], Callable[[Any], bool] | None]:
            ops, check = super().ops_to_not_decompose(ep)
            if check is None:
                return ops, None
            kept = set(ops)
            nodes = [n for n in ep.graph.nodes if n.op == "call_function" and n.target in kept]
            return (ops, None) if all(check(n) for n in nodes) else (ops, check)

    return WholeOpPartitioner()

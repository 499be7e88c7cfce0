"""Rewrites that let XNNPACK take each decoder block in a few large pieces instead of many small ones.

Lowering time grows with the number of XNNPACK partitions (each is preprocessed and serialized on its
own: Gemma 3 270M had 255 and spent ~800 s in to_backend), and every partition boundary is a
round trip through ExecuTorch's portable kernels on the device. Two kinds of node broke the blocks:

- RMSNorm's `mean(-1, keepdim=True)`: XNNPACK lowers mean only over the two innermost dims of a
  4-D tensor. The mean of squares is computed as a linear layer with a 1 x hidden weight of
  1/hidden instead (XNNPACK's fully connected), and the gain is folded into one constant
  (Gemma's `1 + w` is added once here, not on every call).
- reshapes whose target shape holds the dynamic sequence length as a symbol: XNNPACK lowers only
  static shapes with at most one inferred (-1) dimension, so a shape with exactly one symbolic
  dimension gets -1 in its place (the element count fixes it; the result is the same tensor).

Both are exact up to float rounding (the mean as a dot product with 1/hidden); the artifact is
verified against the fp32 reference as before.
"""

from __future__ import annotations

from typing import Any

from packager.architectures import ArchitectureSpec


def _norm_class() -> Any:
    import torch

    class LinearMeanRMSNorm(torch.nn.Module):
        """x / rms(x) * gain, with the mean of squares as a linear layer XNNPACK can run inside a block."""

        def __init__(self, gain: torch.Tensor, eps: float) -> None:
            super().__init__()
            hidden = gain.shape[0]
            self.register_buffer("gain", gain.detach().float().clone())
            self.register_buffer("mean_weight", torch.full((1, hidden), 1.0 / hidden))
            self.eps = eps

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean_square = torch.nn.functional.linear(x * x, self.mean_weight)
            return x * torch.rsqrt(mean_square + self.eps) * self.gain

    return LinearMeanRMSNorm


def replace_rms_norms(model: Any, spec: ArchitectureSpec) -> int:
    """Swap every RMSNorm module of `model` for the linear-mean form; return how many were swapped.

    A norm is recognised by its class name (transformers names them <Model>RMSNorm) and its epsilon
    attribute; the gain convention (w or 1 + w) is the spec's norm_offset.
    """
    norm = _norm_class()
    swapped = 0
    for name, module in list(model.named_modules()):
        if not type(module).__name__.endswith("RMSNorm"):
            continue
        eps = getattr(module, "eps", None)
        if eps is None:
            eps = module.variance_epsilon
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, norm(module.weight.detach().float() + spec.norm_offset, float(eps)))
        swapped += 1
    return swapped


def static_reshapes(graph_module: Any) -> Any:
    """Edge-dialect pass (exir transform_passes): a view_copy whose shape holds exactly one symbolic
    dimension gets -1 there. Returns exir's PassResult."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    modified = False
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target != exir_ops.edge.aten.view_copy.default:
            continue
        shape = list(node.args[1])
        symbolic = [i for i, size in enumerate(shape) if not isinstance(size, int)]
        if len(symbolic) == 1 and -1 not in shape:
            shape[symbolic[0]] = -1
            node.args = (node.args[0], shape, *node.args[2:])
            modified = True
    if modified:
        graph_module.graph.eliminate_dead_code()
        graph_module.recompile()
    return PassResult(graph_module, modified)

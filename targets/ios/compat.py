"""The one place coremltools 9.0 does not work with numpy 2.4, patched in one spot.

coremltools' torch frontend converts aten::Int / aten::Bool of a constant with `int(x.val)`; when
the constant is a one-element array (a folded `x.shape[-1] // 2`, as in rotate_half) numpy >= 2.3
refuses to turn an array of ndim > 0 into a Python scalar and the conversion dies with
"only 0-dimensional arrays can be converted to Python scalars". The shim reads such a value with
`.item()` and leaves every other case to coremltools.

(The field notes also mention torch 2.13 emitting aten::alias; edgepack's traced decoder contains
no alias node, so no shim is installed for it. tests/test_ios.py lists the traced op kinds.)

`apply()` is idempotent. tests/test_ios.py proves the shim is still needed: it fails once upstream
fixes the bug, so the shim can be deleted.
"""

from __future__ import annotations

from typing import Any

_applied = False


def _scalar(value: Any) -> Any:
    """A one-element array as its Python scalar; anything else unchanged."""
    import numpy as np

    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(()).item()
    return value


def apply() -> None:
    """Install the scalar-cast shim into coremltools' torch frontend (once per process)."""
    global _applied
    if _applied:
        return
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops

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

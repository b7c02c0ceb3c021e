"""Hand NumPy arrays and torch tensors to the Rust core without copying.

The core borrows C-contiguous NumPy arrays of float32, float16, or uint16
(read as bfloat16 bit patterns, since NumPy has no bfloat16). A CPU torch
tensor is viewed through ``Tensor.numpy()``, which shares its memory; a
bfloat16 tensor is reinterpreted as int16 first. Nothing here makes an
array contiguous: the core refuses non-contiguous input with
:class:`~hypergpu.errors.NonContiguousError` rather than copy silently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hypergpu.errors import DtypeMismatchError


def as_array(x: Any, index: int = 0) -> np.ndarray:
    """A NumPy view of ``x`` (ndarray or torch tensor) sharing its memory."""
    if isinstance(x, np.ndarray):
        return x
    torch = _torch_if_tensor(x)
    if torch is not None:
        t = x.detach()
        if t.device.type != "cpu":
            # Device memory cannot be borrowed by CPU code; one copy is unavoidable.
            t = t.cpu()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        return t.numpy()
    raise DtypeMismatchError(
        f"update {index} is a {type(x).__name__}; expected a numpy array or a torch tensor"
    )


def as_arrays(xs: Any) -> list[np.ndarray]:
    """:func:`as_array` over a sequence."""
    return [as_array(x, i) for i, x in enumerate(xs)]


def _torch_if_tensor(x: Any) -> Any:
    """The torch module if ``x`` is a tensor; avoids importing torch otherwise."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        if isinstance(x, torch.Tensor):
            return torch
    return None

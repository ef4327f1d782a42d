"""One implementation for numpy arrays and device tensors: the quantizers' arithmetic in torch.

The sparsifiers, the uniform and STC quantizers, error feedback and reconstruction are
written once, in torch. A numpy array is wrapped with ``torch.from_numpy`` (no copy) and
the result goes back as numpy; a torch tensor is worked on where it lives (the GPU that
trained the model), so an update never goes through numpy before its symbols exist, and
only the int32 symbols move to the host for the entropy coder.

The symbols must not depend on the device or the library, so every reduction that reaches
them is order-independent: maxima, k-th values, counts, and sums accumulated as integers
(:func:`exact_sum`); everything else is element-wise IEEE arithmetic.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def wrap(values: Array) -> torch.Tensor:
    """``values`` as a tensor: a numpy array shares its memory (never written to), a tensor is detached."""
    if isinstance(values, torch.Tensor):
        return values.detach()
    array = np.ascontiguousarray(values)
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():  # read-only buffers (decoded payloads) are only read here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def as_tensor(values: Array, device: torch.device | None = None) -> torch.Tensor:
    """``values`` as a float32 tensor, on ``device`` when given (else where it already lives)."""
    if not isinstance(values, torch.Tensor):
        values = np.asarray(values, dtype=np.float32)
    tensor = wrap(values)
    if tensor.dtype == torch.float32 and (device is None or tensor.device == device):
        return tensor  # the common case, without the cost of a no-op .to()
    return tensor.to(device=device, dtype=torch.float32)


def to_numpy(values: Array) -> np.ndarray:
    """A host numpy array (no copy for numpy input or a CPU tensor)."""
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def like(result: torch.Tensor, template: Array) -> Array:
    """``result`` in the form of ``template``: numpy for a numpy template, else the tensor itself."""
    return result if isinstance(template, torch.Tensor) else result.numpy()


def at_rest(values: torch.Tensor) -> Array:
    """A sender's state entry: a numpy copy on the host; a tensor on an accelerator stays there."""
    return values.numpy().copy() if values.device.type == "cpu" else values.clone()


def finite_peak(values: torch.Tensor) -> float:
    """``max |values|`` (0 when empty); ValueError for NaN or inf: a NaN update is a bug upstream,
    not something to transmit silently."""
    peak = float(values.abs().max()) if values.numel() else 0.0  # NaN when any value is NaN
    if not math.isfinite(peak):
        raise ValueError("cannot quantize non-finite values (NaN or inf in the update)")
    return peak


def kth_smallest(values: torch.Tensor, k: int) -> float:
    """The ``k``-th smallest entry (1-based) of a 1-D tensor: the same value on every device.

    On the CPU numpy's introselect (faster than torch's selection); a sort on an accelerator,
    where one large selection is slow.
    """
    if values.device.type == "cpu":
        return float(np.partition(values.numpy(), k - 1)[k - 1])
    return float(torch.sort(values).values[k - 1])


def exact_sum(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum (float64) whose bits do not depend on the order of the values or on the device.

    The values are scaled by one power of two (exact: from the largest magnitude, so that
    every term is below ``2**62 / n``), truncated to int64 and summed exactly; each term
    loses less than ``max|values| * 2**-(62 - bits(n))``, far below float32 resolution.
    """
    n = values.numel() if dim is None else values.shape[dim]
    peak = float(values.abs().max()) if values.numel() else 0.0
    if peak == 0.0:
        zero = values.to(torch.float64) * 0.0
        return zero.sum() if dim is None else zero.sum(dim)
    shift = 62 - max(n, 1).bit_length() - math.frexp(peak)[1]
    if abs(shift) > 100:  # 2**shift is exact as a float32 scalar only within float32's exponent range
        values = values.to(torch.float64)
    fixed = (values * math.ldexp(1.0, shift)).to(torch.int64)
    total = fixed.sum() if dim is None else fixed.sum(dim)
    return total.to(torch.float64) * math.ldexp(1.0, -shift)

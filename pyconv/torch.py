"""PyTorch adapter: pyconv kernels inside torch.autograd (needs PyTorch).

Functions take the same arguments as their :mod:`pyconv` namesakes, with
CPU tensors instead of arrays (NCHW unless ``layout="NHWC"`` is given), and
are differentiable: each is a ``torch.autograd.Function`` whose backward
runs pyconv's gradient kernels.  Tensors cross into NumPy without copies
(``Tensor.numpy()`` shares memory; results come back through
``torch.from_numpy``).  float32 and float64 tensors are computed natively;
other dtypes and non-CPU tensors raise ``TypeError``.

The modules :class:`Conv2d`, :class:`ConvTranspose2d`, :class:`MaxPool2d`
and :class:`AvgPool2d` subclass their ``torch.nn`` namesakes, so their
constructor arguments, parameter names, initialisation, ``state_dict`` and
``repr`` are PyTorch's own; only ``forward`` runs pyconv.  Replacing
``torch.nn.Conv2d`` by ``pyconv.torch.Conv2d`` in a model needs no other
change.

>>> import torch, pyconv.torch as pt
>>> conv = pt.Conv2d(3, 8, 3, padding=1)
>>> conv(torch.zeros(2, 3, 16, 16)).shape
torch.Size([2, 8, 16, 16])
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import _pool
from .autograd import avg_pool2d_vjp, conv2d_vjp, conv_transpose2d_vjp, max_pool2d_vjp

__all__ = [
    "AvgPool2d",
    "Conv2d",
    "ConvTranspose2d",
    "MaxPool2d",
    "avg_pool2d",
    "conv2d",
    "conv_transpose2d",
    "max_pool2d",
]

_NATIVE = (torch.float32, torch.float64)


def _array(fn: str, name: str, t: Any) -> Any:
    """A tensor's data as a NumPy array sharing its memory (None passes)."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise TypeError(f"{fn}: {name} is on {t.device}; pyconv runs on CPU tensors only "
                        f"(move it with .cpu())")
    if t.dtype not in _NATIVE:
        raise TypeError(f"{fn}: {name} has dtype {t.dtype}; pyconv computes float32 and float64 "
                        f"tensors (convert with .float() or .double())")
    return t.detach().numpy()


def _tensor(a: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def _check_dtypes(fn: str, *tensors: Optional[torch.Tensor]) -> None:
    """torch autograd expects each gradient in its tensor's dtype; mixing
    float32 and float64 operands would promote one of them silently."""
    dtypes = {t.dtype for t in tensors if t is not None}
    if len(dtypes) > 1:
        raise TypeError(f"{fn}: tensors must share one dtype, got {sorted(str(d) for d in dtypes)}")


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                kwargs: dict) -> torch.Tensor:
        fn = "pyconv.torch.conv2d"
        y, pullback = conv2d_vjp(_array(fn, "x", x), _array(fn, "weight", weight), _array(fn, "bias", bias),
                                 **kwargs)
        ctx.pullback = pullback
        out = torch.from_numpy(y)
        # The pullback reads these tensors' memory (the output too, for the
        # activation's mask): saving them lets autograd's version counters
        # refuse a backward after any of them was modified in place.
        ctx.save_for_backward(x, weight, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> Tuple[Any, ...]:
        _ = ctx.saved_tensors  # raises if a saved tensor was modified in place
        gx, gw, gb = ctx.pullback(grad_y.detach().numpy())
        need = ctx.needs_input_grad
        return (_tensor(gx) if need[0] else None, _tensor(gw) if need[1] else None,
                _tensor(gb) if need[2] else None, None)


class _ConvTranspose2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                kwargs: dict) -> torch.Tensor:
        fn = "pyconv.torch.conv_transpose2d"
        y, pullback = conv_transpose2d_vjp(_array(fn, "x", x), _array(fn, "weight", weight),
                                           _array(fn, "bias", bias), **kwargs)
        ctx.pullback = pullback
        ctx.save_for_backward(x, weight)  # see _Conv2d
        return torch.from_numpy(y)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> Tuple[Any, ...]:
        _ = ctx.saved_tensors  # raises if a saved tensor was modified in place
        gx, gw, gb = ctx.pullback(grad_y.detach().numpy())
        need = ctx.needs_input_grad
        return (_tensor(gx) if need[0] else None, _tensor(gw) if need[1] else None,
                _tensor(gb) if need[2] else None, None)


class _MaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kwargs: dict, return_indices: bool) -> Any:
        xa = _array("pyconv.torch.max_pool2d", "x", x)
        y, pullback = max_pool2d_vjp(xa, **kwargs)
        ctx.pullback = pullback
        ctx.save_for_backward(x)  # see _Conv2d
        if not return_indices:
            return torch.from_numpy(y)
        _, idx = _pool.max_pool2d(xa, return_indices=True, **kwargs)
        it = torch.from_numpy(idx)
        ctx.mark_non_differentiable(it)
        return torch.from_numpy(y), it

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor, *unused: Any) -> Tuple[Any, ...]:
        _ = ctx.saved_tensors  # raises if x was modified in place
        return _tensor(ctx.pullback(grad_y.detach().numpy())), None, None


class _AvgPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kwargs: dict, scale: float) -> torch.Tensor:
        y, pullback = avg_pool2d_vjp(_array("pyconv.torch.avg_pool2d", "x", x), **kwargs)
        ctx.pullback, ctx.scale = pullback, scale
        if scale != 1.0:
            y *= y.dtype.type(scale)
        return torch.from_numpy(y)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> Tuple[Any, ...]:
        gy = grad_y.detach().numpy()
        if ctx.scale != 1.0:
            gy = gy * gy.dtype.type(ctx.scale)
        return _tensor(ctx.pullback(gy)), None, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: Any = 1,
           padding: Any = 0, dilation: Any = 1, groups: int = 1, *, layout: str = "NCHW",
           activation: Optional[str] = None, algo: str = "auto") -> torch.Tensor:
    """Differentiable :func:`pyconv.conv2d` on CPU tensors."""
    _check_dtypes("pyconv.torch.conv2d", x, weight, bias)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout,
                  activation=activation, algo=algo)
    return _Conv2d.apply(x, weight, bias, kwargs)


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     stride: Any = 1, padding: Any = 0, output_padding: Any = 0, dilation: Any = 1,
                     groups: int = 1, *, layout: str = "NCHW", output_size: Any = None) -> torch.Tensor:
    """Differentiable :func:`pyconv.conv_transpose2d` on CPU tensors."""
    _check_dtypes("pyconv.torch.conv_transpose2d", x, weight, bias)
    kwargs = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
                  groups=groups, layout=layout, output_size=output_size)
    return _ConvTranspose2d.apply(x, weight, bias, kwargs)


def max_pool2d(x: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1, *,
               ceil_mode: bool = False, return_indices: bool = False, layout: str = "NCHW") -> Any:
    """Differentiable :func:`pyconv.max_pool2d` on CPU tensors (indices, if
    asked for, are int64 tensors and not differentiable)."""
    kwargs = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                  ceil_mode=ceil_mode, layout=layout)
    return _MaxPool2d.apply(x, kwargs, bool(return_indices))


def avg_pool2d(x: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, *,
               ceil_mode: bool = False, count_include_pad: Optional[bool] = None,
               layout: str = "NCHW") -> torch.Tensor:
    """Differentiable :func:`pyconv.avg_pool2d` on CPU tensors."""
    kwargs = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad, layout=layout)
    return _AvgPool2d.apply(x, kwargs, 1.0)


# ---- nn.Module drop-ins ------------------------------------------------------------


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` computed by pyconv (same arguments, parameters and
    initialisation).  ``padding_mode`` other than "zeros" pads with
    ``torch.nn.functional.pad`` first, exactly as PyTorch does."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding: Any = 0
        else:
            padding = self.padding
        return conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` computed by pyconv."""

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("ConvTranspose2d: only padding_mode='zeros' is supported (as in PyTorch)")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                tuple(output_padding), self.dilation, self.groups)


class MaxPool2d(torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` computed by pyconv."""

    def forward(self, input: torch.Tensor) -> Any:
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` computed by pyconv.

    ``divisor_override`` is supported without ``ceil_mode`` (every window is
    then the full kernel, so the sum is the kernel-size average rescaled).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.divisor_override is not None and self.ceil_mode:
            raise ValueError("AvgPool2d: divisor_override with ceil_mode=True is not supported by pyconv")
        if self.divisor_override is not None and self.divisor_override == 0:
            raise ValueError("AvgPool2d: divisor_override must be non-zero")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        kwargs = dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                      ceil_mode=self.ceil_mode, count_include_pad=bool(self.count_include_pad),
                      layout="NCHW")
        scale = 1.0
        if self.divisor_override is not None:
            kwargs["count_include_pad"] = True
            k = self.kernel_size
            kh, kw = (k, k) if isinstance(k, int) else k
            scale = kh * kw / self.divisor_override
        return _AvgPool2d.apply(input, kwargs, scale)


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
>>> x = torch.arange(16.0).reshape(1, 1, 4, 4).requires_grad_()
>>> pt.max_pool2d(x, 2).sum().backward()
>>> x.grad[0, 0]
tensor([[0., 0., 0., 0.],
        [0., 1., 0., 1.],
        [0., 0., 0., 0.],
        [0., 1., 0., 1.]])
"""

from __future__ import annotations

from typing import Any, List, Literal, Optional, SupportsIndex, Tuple, Union, overload

import numpy as np
import torch
import torch.nn.functional as F

from . import _pool
from ._typing import Activation, Algo, ExplicitPadding, IntOrPair, Layout, Padding, Shape
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


def _conv_backward(ctx: Any, grad_y: torch.Tensor) -> Tuple[Any, ...]:
    """Backward of the two convolution Functions: (x, weight, bias, kwargs)."""
    _ = ctx.saved_tensors  # raises if a saved tensor was modified in place
    gx, gw, gb = ctx.pullback(grad_y.detach().numpy())
    need = ctx.needs_input_grad
    return (_tensor(gx) if need[0] else None, _tensor(gw) if need[1] else None,
            _tensor(gb) if need[2] else None, None)


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

    backward = staticmethod(_conv_backward)


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

    backward = staticmethod(_conv_backward)


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


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: IntOrPair = 1,
           padding: Padding = 0, dilation: IntOrPair = 1, groups: SupportsIndex = 1, *,
           layout: Layout = "NCHW", activation: Activation = None, algo: Algo = "auto") -> torch.Tensor:
    """Differentiable :func:`pyconv.conv2d` on CPU tensors.

    Forward runs :func:`pyconv.conv2d`, backward its gradient kernels
    (:func:`pyconv.autograd.conv2d_vjp`); gradients flow to every operand
    that requires them.  ``padding="same"`` is TensorFlow's SAME (any
    stride).

    Parameters
    ----------
    x : torch.Tensor
        CPU, float32 or float64: ``(N, C_in, H, W)`` (NCHW, PyTorch's
        layout) or ``(N, H, W, C_in)`` with ``layout="NHWC"``; 3-D for one
        image.
    weight : torch.Tensor
        ``(C_out, C_in/groups, KH, KW)`` (NCHW, as ``torch.nn.Conv2d``) or
        ``(KH, KW, C_in/groups, C_out)`` (NHWC); ``x``'s dtype.
    bias : torch.Tensor, optional
        ``(C_out,)``, ``x``'s dtype.  Default None.
    stride, padding, dilation, groups, layout, activation, algo : optional
        As in :func:`pyconv.conv2d` (same forms and defaults; no ``out``).

    Returns
    -------
    torch.Tensor
        The convolution, sharing memory with the NumPy result (no copy).

    Raises
    ------
    TypeError
        A non-tensor operand, a non-CPU tensor, a dtype other than float32
        and float64, or operands of different dtypes; and what
        :func:`pyconv.conv2d` raises.
    ValueError
        As :func:`pyconv.conv2d`.

    See Also
    --------
    Conv2d : The ``torch.nn.Conv2d`` drop-in.
    pyconv.conv2d

    Examples
    --------
    >>> import torch, pyconv.torch as pt
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4).requires_grad_()
    >>> w = torch.ones(1, 1, 2, 2, requires_grad=True)
    >>> y = pt.conv2d(x, w, stride=2)
    >>> y.detach()[0, 0]
    tensor([[10., 18.],
            [42., 50.]])
    >>> y.sum().backward()
    >>> w.grad[0, 0]
    tensor([[20., 24.],
            [36., 40.]])
    """
    _check_dtypes("pyconv.torch.conv2d", x, weight, bias)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout,
                  activation=activation, algo=algo)
    return _Conv2d.apply(x, weight, bias, kwargs)


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     stride: IntOrPair = 1, padding: ExplicitPadding = 0, output_padding: IntOrPair = 0,
                     dilation: IntOrPair = 1, groups: SupportsIndex = 1, *, layout: Layout = "NCHW",
                     output_size: Optional[Shape] = None) -> torch.Tensor:
    """Differentiable :func:`pyconv.conv_transpose2d` on CPU tensors.

    Parameters
    ----------
    x : torch.Tensor
        CPU, float32 or float64: ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W,
        C_in)`` (NHWC); 3-D for one image.
    weight : torch.Tensor
        ``(C_in, C_out/groups, KH, KW)`` (NCHW, as
        ``torch.nn.ConvTranspose2d``) or ``(KH, KW, C_out/groups, C_in)``
        (NHWC); ``x``'s dtype.
    bias : torch.Tensor, optional
        ``(C_out,)``, ``x``'s dtype.  Default None.
    stride, padding, output_padding, dilation, groups, layout, output_size : optional
        As in :func:`pyconv.conv_transpose2d` (same forms and defaults).

    Returns
    -------
    torch.Tensor

    Raises
    ------
    TypeError
        As :func:`conv2d` (tensor checks) and :func:`pyconv.conv_transpose2d`.
    ValueError
        As :func:`pyconv.conv_transpose2d`.

    See Also
    --------
    ConvTranspose2d : The ``torch.nn.ConvTranspose2d`` drop-in.
    pyconv.conv_transpose2d

    Examples
    --------
    >>> import torch, pyconv.torch as pt
    >>> x = torch.ones(1, 1, 2, 2, requires_grad=True)
    >>> y = pt.conv_transpose2d(x, torch.ones(1, 1, 2, 2), stride=2)
    >>> y.shape
    torch.Size([1, 1, 4, 4])
    >>> y.sum().backward()
    >>> x.grad[0, 0]
    tensor([[4., 4.],
            [4., 4.]])
    """
    _check_dtypes("pyconv.torch.conv_transpose2d", x, weight, bias)
    kwargs = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
                  groups=groups, layout=layout, output_size=output_size)
    return _ConvTranspose2d.apply(x, weight, bias, kwargs)


@overload
def max_pool2d(x: torch.Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair] = ..., padding: Padding = ...,
               dilation: IntOrPair = ..., *, ceil_mode: bool = ..., return_indices: Literal[False] = ...,
               layout: Layout = ...) -> torch.Tensor: ...
@overload
def max_pool2d(x: torch.Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair] = ..., padding: Padding = ...,
               dilation: IntOrPair = ..., *, ceil_mode: bool = ..., return_indices: Literal[True],
               layout: Layout = ...) -> Tuple[torch.Tensor, torch.Tensor]: ...
@overload
def max_pool2d(x: torch.Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair] = ..., padding: Padding = ...,
               dilation: IntOrPair = ..., *, ceil_mode: bool = ..., return_indices: bool,
               layout: Layout = ...) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]: ...
def max_pool2d(x: torch.Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: Padding = 0,
               dilation: IntOrPair = 1, *, ceil_mode: bool = False, return_indices: bool = False,
               layout: Layout = "NCHW") -> Any:
    """Differentiable :func:`pyconv.max_pool2d` on CPU tensors.

    The gradient goes to each window's winner (the first maximum).

    Parameters
    ----------
    x : torch.Tensor
        CPU, float32 or float64: ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)``
        (NHWC); 3-D for one image.
    kernel_size, stride, padding, dilation, ceil_mode, layout : optional
        As in :func:`pyconv.max_pool2d` (same forms and defaults).
    return_indices : bool, default False
        Also return the int64 indices (flat ``h * W + w`` positions, as
        PyTorch); they are not differentiable.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        The pooled tensor, and the indices with ``return_indices=True``.

    Raises
    ------
    TypeError
        A non-tensor, non-CPU or non-float32/float64 ``x``; and what
        :func:`pyconv.max_pool2d` raises.
    ValueError
        As :func:`pyconv.max_pool2d`.

    See Also
    --------
    MaxPool2d : The ``torch.nn.MaxPool2d`` drop-in.
    pyconv.max_pool2d

    Examples
    --------
    >>> import torch, pyconv.torch as pt
    >>> x = torch.tensor([[[[1.0, 3.0], [3.0, 0.0]]]], requires_grad=True)
    >>> y, idx = pt.max_pool2d(x, 2, return_indices=True)
    >>> idx
    tensor([[[[1]]]])
    >>> y.sum().backward()
    >>> x.grad
    tensor([[[[0., 1.],
              [0., 0.]]]])
    """
    kwargs = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                  ceil_mode=ceil_mode, layout=layout)
    return _MaxPool2d.apply(x, kwargs, bool(return_indices))


def avg_pool2d(x: torch.Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None,
               padding: Padding = 0, *, ceil_mode: bool = False, count_include_pad: Optional[bool] = None,
               layout: Layout = "NCHW") -> torch.Tensor:
    """Differentiable :func:`pyconv.avg_pool2d` on CPU tensors.

    Parameters
    ----------
    x : torch.Tensor
        CPU, float32 or float64: ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)``
        (NHWC); 3-D for one image.
    kernel_size, stride, padding, ceil_mode, count_include_pad, layout : optional
        As in :func:`pyconv.avg_pool2d` (same forms and defaults:
        ``count_include_pad=None`` is True for numeric padding, as PyTorch).

    Returns
    -------
    torch.Tensor

    Raises
    ------
    TypeError
        A non-tensor, non-CPU or non-float32/float64 ``x``; and what
        :func:`pyconv.avg_pool2d` raises.
    ValueError
        As :func:`pyconv.avg_pool2d`.

    See Also
    --------
    AvgPool2d : The ``torch.nn.AvgPool2d`` drop-in.
    pyconv.avg_pool2d

    Examples
    --------
    >>> import torch, pyconv.torch as pt
    >>> x = torch.arange(4.0).reshape(1, 1, 2, 2).requires_grad_()
    >>> y = pt.avg_pool2d(x, 2)
    >>> y.item()
    1.5
    >>> y.sum().backward()
    >>> x.grad[0, 0]
    tensor([[0.2500, 0.2500],
            [0.2500, 0.2500]])
    """
    kwargs = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad, layout=layout)
    return _AvgPool2d.apply(x, kwargs, 1.0)


# ---- nn.Module drop-ins ------------------------------------------------------------


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` computed by pyconv.

    A subclass: constructor arguments, parameters (``weight`` ``(C_out,
    C_in/groups, KH, KW)``, ``bias`` ``(C_out,)``), initialisation,
    ``state_dict`` and ``repr`` are PyTorch's own; only ``forward`` runs
    :func:`conv2d`.  ``padding_mode`` other than "zeros" pads with
    ``torch.nn.functional.pad`` first, exactly as PyTorch does.

    Parameters
    ----------
    in_channels, out_channels : int
        C_in and C_out.
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int, (int, int), "valid" or "same", default 0
    dilation : int or (int, int), default 1
    groups : int, default 1
    bias : bool, default True
    padding_mode : {"zeros", "reflect", "replicate", "circular"}, default "zeros"
    device, dtype : optional
        As ``torch.nn.Conv2d``; the module must stay on the CPU, in float32
        or float64.

    Raises
    ------
    TypeError
        From ``forward``: an input that is not a CPU float32/float64 tensor
        of the parameters' dtype.
    ValueError
        From ``forward``: an input whose shape does not fit the layer.

    See Also
    --------
    conv2d, pyconv.conv2d

    Examples
    --------
    >>> import torch, pyconv.torch as pt
    >>> conv = pt.Conv2d(3, 8, 3, padding=1)
    >>> conv
    Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    >>> ref = torch.nn.Conv2d(3, 8, 3, padding=1)
    >>> _ = ref.load_state_dict(conv.state_dict())
    >>> x = torch.arange(150.0).reshape(2, 3, 5, 5) / 10
    >>> torch.allclose(conv(x), ref(x), atol=1e-4)
    True
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding: Any = 0
        else:
            padding = self.padding
        return conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` computed by pyconv.

    A subclass: constructor arguments, parameters (``weight`` ``(C_in,
    C_out/groups, KH, KW)``), initialisation and ``state_dict`` are
    PyTorch's own; ``forward(input, output_size=None)`` runs
    :func:`conv_transpose2d`.

    Parameters
    ----------
    in_channels, out_channels : int
        C_in and C_out.
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int or (int, int), default 0
    output_padding : int or (int, int), default 0
    groups : int, default 1
    bias : bool, default True
    dilation : int or (int, int), default 1
    padding_mode : {"zeros"}, default "zeros"
        Only "zeros": PyTorch refuses the others at construction.
    device, dtype : optional
        As ``torch.nn.ConvTranspose2d``; CPU, float32 or float64.

    Raises
    ------
    ValueError
        From ``forward``: what :func:`pyconv.conv_transpose2d` refuses (an
        unreachable ``output_size`` included).
    TypeError
        From ``forward``: an input that is not a CPU float32/float64 tensor
        of the parameters' dtype.

    See Also
    --------
    conv_transpose2d, pyconv.conv_transpose2d

    Examples
    --------
    >>> import torch, pyconv.torch as pt
    >>> up = pt.ConvTranspose2d(4, 2, 3, stride=2, padding=1)
    >>> x = torch.zeros(1, 4, 5, 5)
    >>> up(x).shape, up(x, output_size=[10, 10]).shape
    (torch.Size([1, 2, 9, 9]), torch.Size([1, 2, 10, 10]))
    """

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("ConvTranspose2d: only padding_mode='zeros' is supported (as in PyTorch)")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                tuple(output_padding), self.dilation, self.groups)


class MaxPool2d(torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` computed by pyconv.

    A subclass: constructor arguments and ``repr`` are PyTorch's own;
    ``forward`` runs :func:`max_pool2d`.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int, (int, int) or None, default None (= kernel_size)
    padding : int or (int, int), default 0
        At most half the window, as PyTorch.
    dilation : int or (int, int), default 1
    return_indices : bool, default False
        ``forward`` also returns the int64 indices.
    ceil_mode : bool, default False

    Raises
    ------
    TypeError, ValueError
        From ``forward``, as :func:`max_pool2d`.

    See Also
    --------
    max_pool2d, pyconv.max_pool2d

    Examples
    --------
    >>> import torch, pyconv.torch as pt
    >>> pt.MaxPool2d(2)(torch.arange(16.0).reshape(1, 1, 4, 4))
    tensor([[[[ 5.,  7.],
              [13., 15.]]]])
    """

    def forward(self, input: torch.Tensor) -> Any:
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` computed by pyconv.

    A subclass: constructor arguments and ``repr`` are PyTorch's own;
    ``forward`` runs :func:`pyconv.avg_pool2d`.  ``divisor_override`` is
    supported without ``ceil_mode`` (every window is then the full kernel,
    so the sum is the kernel-size average rescaled).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int, (int, int) or None, default None (= kernel_size)
    padding : int or (int, int), default 0
        At most half the window, as PyTorch.
    ceil_mode : bool, default False
    count_include_pad : bool, default True
    divisor_override : int, optional
        Divide every window's sum by this instead.

    Raises
    ------
    ValueError
        ``divisor_override`` with ``ceil_mode=True``, or zero (at
        construction); from ``forward``, as :func:`pyconv.avg_pool2d`.
    TypeError
        From ``forward``, as :func:`avg_pool2d`.

    See Also
    --------
    avg_pool2d, pyconv.avg_pool2d

    Examples
    --------
    >>> import torch, pyconv.torch as pt
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> pt.AvgPool2d(2)(x)
    tensor([[[[ 2.5000,  4.5000],
              [10.5000, 12.5000]]]])
    >>> pt.AvgPool2d(2, divisor_override=2)(x)
    tensor([[[[ 5.,  9.],
              [21., 25.]]]])
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


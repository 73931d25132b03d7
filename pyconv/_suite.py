"""The benchmark shape suite, defined once.

``python -m pyconv bench`` and the pytest-benchmark suites in ``bench/`` both
read :data:`DEFAULT_SUITE` from here, so the numbers the CLI prints and the
ones pytest-benchmark stores are always about the same problems.

The shapes are real layers of LeNet-5, VGG-16, ResNet-50, MobileNet-v1 and a
depthwise-separable FCN block: small and large spatial sizes, 1x1 / 3x3 / 5x5
/ 7x7 kernels, stride 2, ``"same"`` padding with an odd pixel, batch 1 and 8,
dense and depthwise groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Tuple, Union

import numpy as np

from ._normalize import ConvGeometry, PoolGeometry, conv_geometry, layout_name, pool_geometry

__all__ = [
    "DEFAULT_SUITE",
    "POOL_SUITE",
    "QUICK_POOL_SUITE",
    "QUICK_SUITE",
    "QUICK_STEP_SUITE",
    "STEP_SUITE",
    "ConvShape",
    "StepShape",
    "PoolShape",
    "make_inputs",
    "make_pool_inputs",
    "make_step_inputs",
    "select",
]

Padding = Union[int, str]


@dataclass(frozen=True)
class ConvShape:
    """One conv2d layer: square kernel, equal strides, no dilation, no bias."""

    name: str
    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kernel: int
    stride: int
    padding: Padding
    groups: int

    def x_shape(self, layout: str = "NCHW") -> Tuple[int, int, int, int]:
        if layout_name("ConvShape.x_shape", layout) == "NCHW":
            return (self.n, self.c_in, self.h, self.w)
        return (self.n, self.h, self.w, self.c_in)

    def w_shape(self, layout: str = "NCHW") -> Tuple[int, int, int, int]:
        cg = self.c_in // self.groups
        if layout_name("ConvShape.w_shape", layout) == "NCHW":
            return (self.c_out, cg, self.kernel, self.kernel)
        return (self.kernel, self.kernel, cg, self.c_out)

    def min_bytes(self, itemsize: int = 4) -> int:
        """Bytes any implementation must move: input, output and weight once."""
        geo = self.geometry()
        out = geo.n * geo.oc * geo.oh * geo.ow
        x = self.n * self.c_in * self.h * self.w
        w = self.c_out * (self.c_in // self.groups) * self.kernel * self.kernel
        return (x + out + w) * itemsize

    def geometry(self, layout: str = "NCHW") -> ConvGeometry:
        """The resolved problem, through the same normalisation conv2d uses.

        Peers get their explicit pads from here, so ``"same"`` means exactly
        what it means to pyconv (odd pixel bottom/right).
        """
        lay = layout_name("ConvShape.geometry", layout)
        return conv_geometry("ConvShape.geometry", self.x_shape(lay), self.w_shape(lay),
                             self.stride, self.padding, 1, self.groups, lay)

    @property
    def flops(self) -> int:
        """2 x multiply-adds, as ``pyconv.plan(...)["flops"]``."""
        return self.geometry().flops

    @property
    def gflop(self) -> float:
        return self.flops / 1e9

    def describe(self) -> str:
        """The oneDNN-style problem string, e.g. for a benchmark's extra info."""
        return f"{self.geometry().problem_string()}_g{self.groups}"


def make_inputs(shape: ConvShape, layout: str = "NCHW", seed: int = 0,
                dtype: Any = np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded ``(x, weight)`` for ``shape``, C-contiguous, in ``layout``.

    Drawn in float32 and then cast, so float32 and float64 runs see the same
    numbers.

    Both layouts hold the same numbers (NHWC is the NCHW draw transposed), so
    results computed in either layout can be compared.  The weight is scaled
    by 1/sqrt(fan-in) so outputs are O(1) whatever the layer size, which keeps
    one relative tolerance meaningful across the whole suite.
    """
    lay = layout_name("make_inputs", layout)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape.x_shape("NCHW"), dtype=np.float32)
    w = rng.standard_normal(shape.w_shape("NCHW"), dtype=np.float32)
    fan_in = (shape.c_in // shape.groups) * shape.kernel * shape.kernel
    w *= np.float32(1.0 / np.sqrt(fan_in))
    if lay == "NHWC":
        x = x.transpose(0, 2, 3, 1)
        w = w.transpose(2, 3, 1, 0)
    return np.ascontiguousarray(x, dtype=dtype), np.ascontiguousarray(w, dtype=dtype)


def _shape(name: str, n: int, c_in: int, h: int, w: int, c_out: int, kernel: int,
           stride: int, padding: Padding, groups: int) -> ConvShape:
    return ConvShape(name, n, c_in, h, w, c_out, kernel, stride, padding, groups)


#: The default suite: (name, N, C_in, H, W, C_out, kernel, stride, padding, groups).
DEFAULT_SUITE: Tuple[ConvShape, ...] = (
    _shape("lenet_c1", 32, 1, 32, 32, 6, 5, 1, 0, 1),
    _shape("lenet_c2", 32, 6, 14, 14, 16, 5, 1, 0, 1),
    _shape("vgg16_c1_2", 1, 64, 224, 224, 64, 3, 1, 1, 1),
    _shape("vgg16_c3_1", 1, 128, 56, 56, 256, 3, 1, 1, 1),
    _shape("vgg16_c5_1", 8, 512, 14, 14, 512, 3, 1, 1, 1),
    _shape("resnet50_conv1", 1, 3, 224, 224, 64, 7, 2, 3, 1),
    _shape("resnet50_res2_1x1", 1, 64, 56, 56, 256, 1, 1, 0, 1),
    _shape("resnet50_res2_3x3", 1, 64, 56, 56, 64, 3, 1, 1, 1),
    _shape("resnet50_res3_3x3s2", 1, 128, 56, 56, 128, 3, 2, 1, 1),
    _shape("resnet50_res4_1x1", 8, 1024, 14, 14, 256, 1, 1, 0, 1),
    _shape("resnet50_res5_3x3", 8, 512, 7, 7, 512, 3, 1, 1, 1),
    _shape("mbv1_dw_112", 1, 32, 112, 112, 32, 3, 1, 1, 32),
    _shape("mbv1_dw_56s2", 1, 128, 56, 56, 128, 3, 2, 1, 128),
    _shape("mbv1_dw_7", 8, 1024, 7, 7, 1024, 3, 1, 1, 1024),
    _shape("mbv1_pw_14", 8, 512, 14, 14, 512, 1, 1, 0, 1),
    _shape("fcn_sep_dw_s2", 8, 3, 160, 160, 3, 3, 2, "same", 3),
    _shape("fcn_sep_pw", 8, 3, 80, 80, 32, 1, 1, 0, 1),
)

# One of each family, all cheap (the NumPy reference included), so that
# `bench --quick` takes seconds: a 5x5 batch-32 layer, a 1x1, a stride-2 3x3,
# a depthwise stride-2, and the "same" padding with an odd pixel.
_QUICK_NAMES = ("lenet_c2", "resnet50_res2_1x1", "resnet50_res3_3x3s2", "mbv1_dw_56s2",
                "fcn_sep_dw_s2")

#: A few cheap but varied shapes of the default suite, for ``bench --quick``.
QUICK_SUITE: Tuple[ConvShape, ...] = tuple(s for s in DEFAULT_SUITE if s.name in _QUICK_NAMES)


@dataclass(frozen=True)
class StepShape(ConvShape):
    """The training step of one conv layer: the forward pass, then the
    gradients of the input and of the weight for a seeded ``grad_out``
    (what one layer costs in a training loop).  Named ``<layer>_step``."""

    @property
    def flops(self) -> int:
        """Forward, input gradient and weight gradient: three times the layer's."""
        return 3 * self.geometry().flops

    def min_bytes(self, itemsize: int = 4) -> int:
        """Each of the three passes reads two of x / weight / grad_out and writes the third."""
        return 3 * super().min_bytes(itemsize)

    @classmethod
    def of(cls, layer: ConvShape) -> "StepShape":
        return cls(f"{layer.name}_step", layer.n, layer.c_in, layer.h, layer.w, layer.c_out, layer.kernel,
                   layer.stride, layer.padding, layer.groups)


def make_step_inputs(shape: StepShape, layout: str = "NCHW", seed: int = 0,
                     dtype: Any = np.float32) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded ``(x, weight, grad_out)`` for a training-step row (the same
    numbers in both layouts, like :func:`make_inputs`)."""
    lay = layout_name("make_step_inputs", layout)
    x, w = make_inputs(shape, lay, seed, dtype)
    geo = shape.geometry("NCHW")
    rng = np.random.default_rng(seed + 1)
    g = rng.standard_normal((geo.n, geo.oc, geo.oh, geo.ow), dtype=np.float32)
    if lay == "NHWC":
        g = g.transpose(0, 2, 3, 1)
    return x, w, np.ascontiguousarray(g, dtype=dtype)


#: Training-step rows: every layer of the default suite.
STEP_SUITE: Tuple[StepShape, ...] = tuple(StepShape.of(s) for s in DEFAULT_SUITE)

#: Step rows of ``bench --quick``: a 5x5, a stride-2 3x3 and a depthwise layer.
QUICK_STEP_SUITE: Tuple[StepShape, ...] = tuple(
    s for s in STEP_SUITE if s.name in ("lenet_c2_step", "resnet50_res3_3x3s2_step", "mbv1_dw_56s2_step"))


@dataclass(frozen=True)
class PoolShape:
    """One pooling layer: ``op`` is "max", "avg", "global_avg", or "max_grad"
    / "avg_grad" for the training step of that pooling (forward, then the
    gradient of a seeded ``grad_out``; pyconv's max step is
    ``max_pool2d_vjp`` and its pullback, as a trainer calls it)."""

    name: str
    op: str
    n: int
    c: int
    h: int
    w: int
    kernel: int
    stride: int
    padding: Padding

    flops = 0  # pooling is judged by bytes moved, not FLOPs
    gflop = 0.0

    @property
    def backward(self) -> bool:
        return self.op.endswith("_grad")

    def x_shape(self, layout: str = "NCHW") -> Tuple[int, int, int, int]:
        if layout_name("PoolShape.x_shape", layout) == "NCHW":
            return (self.n, self.c, self.h, self.w)
        return (self.n, self.h, self.w, self.c)

    def geometry(self, layout: str = "NCHW") -> PoolGeometry:
        lay = layout_name("PoolShape.geometry", layout)
        if self.op == "global_avg":
            return pool_geometry("PoolShape.geometry", self.x_shape(lay), (self.h, self.w), None, 0, 1,
                                 False, lay)
        return pool_geometry("PoolShape.geometry", self.x_shape(lay), self.kernel, self.stride,
                             self.padding, 1, False, lay)

    def min_bytes(self, itemsize: int = 4) -> int:
        """Bytes any implementation must move: input and output once (and,
        for a training step, grad_out and grad_x once more)."""
        geo = self.geometry()
        moved = self.n * self.c * (self.h * self.w + geo.oh * geo.ow)
        return moved * itemsize * (2 if self.backward else 1)

    def describe(self) -> str:
        return f"{self.op}_pool mb{self.n}_c{self.c}_h{self.h}w{self.w}_k{self.kernel}s{self.stride}p{self.padding}"


def make_pool_inputs(shape: PoolShape, layout: str = "NCHW", seed: int = 0,
                     dtype: Any = np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded ``(x, grad_out)`` for ``shape`` in ``layout`` (the same numbers
    in both layouts; ``grad_out`` has the pooling's output shape)."""
    lay = layout_name("make_pool_inputs", layout)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape.x_shape("NCHW"), dtype=np.float32)
    geo = shape.geometry("NCHW")
    g = rng.standard_normal((shape.n, shape.c, geo.oh, geo.ow), dtype=np.float32)
    if lay == "NHWC":
        x, g = x.transpose(0, 2, 3, 1), g.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x, dtype=dtype), np.ascontiguousarray(g, dtype=dtype)


#: Pooling rows of the bench (issue: ResNet/VGG max pooling, a TF-style
#: "same" average pooling, NiN/ResNet global average pooling, and the
#: training step of max and average pooling).
POOL_SUITE: Tuple[PoolShape, ...] = (
    PoolShape("maxpool_2x2", "max", 8, 64, 112, 112, 2, 2, 0),
    PoolShape("resnet_maxpool", "max", 8, 64, 112, 112, 3, 2, 1),
    PoolShape("avgpool_3x3_same", "avg", 8, 256, 28, 28, 3, 1, "same"),
    PoolShape("global_avg", "global_avg", 32, 2048, 7, 7, 7, 1, 0),
    PoolShape("maxpool_2x2_grad", "max_grad", 8, 64, 112, 112, 2, 2, 0),
    PoolShape("resnet_maxpool_grad", "max_grad", 8, 64, 112, 112, 3, 2, 1),
    PoolShape("avgpool_3x3_same_grad", "avg_grad", 8, 256, 28, 28, 3, 1, "same"),
)

#: Pool rows of ``bench --quick``.
QUICK_POOL_SUITE: Tuple[PoolShape, ...] = tuple(
    s for s in POOL_SUITE if s.name in ("maxpool_2x2", "global_avg"))


def select(names: Iterable[str],
           suite: Tuple[Any, ...] = DEFAULT_SUITE + POOL_SUITE + STEP_SUITE) -> Tuple[Any, ...]:
    """The shapes (conv and pool rows) of ``suite`` called ``names``, in the order given.

    An unknown name raises ``ValueError`` listing the valid ones, rather than
    silently benchmarking fewer rows than asked for.
    """
    by_name = {s.name: s for s in suite}
    wanted = [n.strip() for n in names if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"unknown shape name(s) {unknown}; valid names: {', '.join(by_name)}")
    return tuple(by_name[n] for n in wanted)

"""Sobel and Scharr edge detection with one pyconv.conv2d call.

The four 3x3 derivative filters (Sobel-x, Sobel-y, Scharr-x, Scharr-y) are
stacked into one weight of shape (4, 1, 3, 3), so a single conv2d on a
(1, 1, H, W) image gives all four gradient maps; the edge magnitude is the
hypot of the x and y responses.  The result is checked against the pure-NumPy
``pyconv.reference.conv2d`` and drawn as a PNG grid: input, Sobel |Gx|,
Sobel |Gy|, Sobel magnitude, Scharr magnitude.

    python examples/edge_detection.py                       # camera photo -> edges.png
    python examples/edge_detection.py --synthetic --output /tmp/edges.png
    python examples/edge_detection.py --image photo.jpg --border zero

The photograph is scikit-image's ``data.camera()`` when scikit-image is
installed, else (or with ``--synthetic``) a generated image of a rectangle,
a disc and a gentle ramp with a little noise.  The figure is drawn with
matplotlib (the ``plot`` extra) when it is importable; without it, a small
standard-library PNG writer saves the same grid in grayscale, without titles,
so the example runs with NumPy alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

import pyconv
import pyconv.reference

# conv2d is a cross-correlation (as in PyTorch): the weight is not flipped,
# so with these signs Gx > 0 where the image gets brighter to the right and
# Gy > 0 where it gets brighter downwards.  A true convolution (scipy.signal,
# MATLAB's conv2) would need the kernels rotated by 180 degrees to agree.
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
SCHARR_X = np.array([[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]], dtype=np.float32)
FILTER_NAMES = ("sobel_x", "sobel_y", "scharr_x", "scharr_y")

BORDERS = ("reflect", "edge", "zero")
WRITERS = ("auto", "matplotlib", "stdlib")
PANEL_TITLES = ("input", "Sobel |Gx|", "Sobel |Gy|", "Sobel magnitude", "Scharr magnitude")
GRID_GAP = 4  # white pixels between panels of the stdlib grid
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REC709_LUMA = np.array([0.2126, 0.7152, 0.0722])  # as skimage.color.rgb2gray


def edge_kernels() -> np.ndarray:
    """The conv2d weight, shape (4, 1, 3, 3): Sobel-x, Sobel-y, Scharr-x,
    Scharr-y (the y kernels are the transposed x kernels)."""
    return np.stack([SOBEL_X, SOBEL_X.T, SCHARR_X, SCHARR_X.T])[:, None]


def _prepare(image: np.ndarray, border: str) -> Tuple[np.ndarray, Union[int, str]]:
    """The (1, 1, H', W') float32 conv2d input and the padding that keeps the
    output at (H, W).

    ``"zero"`` lets conv2d pad with zeros (``padding="same"``); the image's
    frame then reads as an edge wherever it is not black.  ``"reflect"``
    (OpenCV's default border) and ``"edge"`` (replicate) pad in NumPy first
    and convolve with ``padding=0``, which leaves the frame edge-free.
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {img.shape}")
    if border == "zero":
        return img[None, None], "same"
    return np.pad(img, 1, mode=border)[None, None], 0


def gradients(image: np.ndarray, border: str = "reflect",
              repeats: int = 1) -> Tuple[np.ndarray, float]:
    """The four gradient maps of a 2-D image from one ``pyconv.conv2d`` call,
    and the best wall time of that call over ``repeats`` runs (the first
    call in a process also pays for starting pyconv's threads).

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Grayscale image; converted to float32.
    border : {"reflect", "edge", "zero"}
        How pixels outside the image are read (see :func:`_prepare`).
    repeats : int
        How many times to run (and time) the convolution.

    Returns
    -------
    grads : ndarray, shape (4, H, W), float32
        In the order of :data:`FILTER_NAMES`.
    seconds : float
        Best time of the conv2d call alone (the NumPy padding excluded).
    """
    x, padding = _prepare(image, border)
    weight = edge_kernels()
    best = float("inf")
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        out = pyconv.conv2d(x, weight, padding=padding)
        best = min(best, time.perf_counter() - start)
    return out[0], best


def reference_gradients(image: np.ndarray, border: str = "reflect") -> np.ndarray:
    """:func:`gradients` computed by ``pyconv.reference.conv2d`` in float64."""
    x, padding = _prepare(image, border)
    return pyconv.reference.conv2d(x.astype(np.float64), edge_kernels().astype(np.float64),
                                   padding=padding)[0]


def magnitudes(grads: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(Sobel magnitude, Scharr magnitude) of :func:`gradients`' output."""
    return np.hypot(grads[0], grads[1]), np.hypot(grads[2], grads[3])


def synthetic_image(height: int = 128, width: int = 128, noise: float = 0.01,
                    seed: int = 0) -> np.ndarray:
    """A test card built with NumPy alone, float32 in about [0, 1].

    Background: a horizontal ramp from 0 to 0.25 (smooth, so almost no edge
    response).  Rectangle of value 0.6: rows ``[height//8, height//2)``,
    columns ``[width//8, width//2)``.  Disc of value 0.9: centre
    ``(0.68*height, 0.68*width)``, radius ``0.18*min(height, width)``.
    Gaussian noise of deviation ``noise`` from a seeded generator, so every
    run is identical.
    """
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    img = 0.25 * cols / max(width - 1, 1)
    img[height // 8:height // 2, width // 8:width // 2] = 0.6
    cy, cx, r = 0.68 * height, 0.68 * width, 0.18 * min(height, width)
    img[(rows - cy) ** 2 + (cols - cx) ** 2 <= r * r] = 0.9
    img += noise * np.random.default_rng(seed).standard_normal(img.shape)
    return img.astype(np.float32)


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """An image array as read by matplotlib (2-D, RGB or RGBA; integer or
    float) as a float32 grayscale image in [0, 1]."""
    img = np.asarray(pixels)
    if np.issubdtype(img.dtype, np.integer):
        img = img / np.iinfo(img.dtype).max
    if img.ndim == 3:
        img = img[..., :3] @ REC709_LUMA if img.shape[2] >= 3 else img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"cannot read an image of shape {np.shape(pixels)} as grayscale")
    return img.astype(np.float32)


def load_input(image_path: Optional[str], synthetic: bool) -> Tuple[np.ndarray, str]:
    """The image to process and a short description of where it came from:
    ``image_path`` if given, else scikit-image's camera photo unless
    ``synthetic`` is set or scikit-image is missing, else
    :func:`synthetic_image`."""
    if image_path is not None:
        try:
            import matplotlib.image as mpimg
        except ImportError:
            sys.exit("--image needs matplotlib to read the file: pip install matplotlib")
        return to_gray(mpimg.imread(image_path)), image_path
    if not synthetic:
        try:
            from skimage import data
        except ImportError:
            pass
        else:
            return to_gray(data.camera()), "skimage.data.camera()"
    return synthetic_image(), "synthetic"


def normalise(a: np.ndarray) -> np.ndarray:
    """``a`` scaled linearly to [0, 1] (all zeros when ``a`` is constant)."""
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape)
    return (a - lo) / (hi - lo)


def panels(image: np.ndarray, grads: np.ndarray) -> List[np.ndarray]:
    """The five display panels of :data:`PANEL_TITLES`, each in [0, 1]."""
    sobel, scharr = magnitudes(grads)
    return [normalise(p) for p in (image, np.abs(grads[0]), np.abs(grads[1]), sobel, scharr)]


def grid(images: Sequence[np.ndarray], gap: int = GRID_GAP) -> np.ndarray:
    """Equal-shape [0, 1] images side by side as one uint8 array, separated
    and framed by ``gap`` white pixels."""
    h, w = images[0].shape
    out = np.full((h + 2 * gap, len(images) * (w + gap) + gap), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        left = gap + i * (w + gap)
        out[gap:gap + h, left:left + w] = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return out


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_gray(path: Union[str, Path], pixels: np.ndarray) -> None:
    """Write a 2-D uint8 array as an 8-bit grayscale PNG, standard library only.

    Each scanline is stored with filter type 0 (none) and the whole image
    deflated into one IDAT chunk: simple, and small enough for a figure.
    """
    img = np.asarray(pixels)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 array, got {img.dtype} of shape {img.shape}")
    height, width = img.shape
    # width, height, bit depth 8, colour type 0 (gray), deflate, filter set 0, no interlace
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    scanlines = np.hstack([np.zeros((height, 1), dtype=np.uint8), img]).tobytes()
    with open(path, "wb") as f:
        f.write(PNG_SIGNATURE)
        f.write(_png_chunk(b"IHDR", header))
        f.write(_png_chunk(b"IDAT", zlib.compress(scanlines, 9)))
        f.write(_png_chunk(b"IEND", b""))


def _have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def save_matplotlib(path: Union[str, Path], images: Sequence[np.ndarray], source: str) -> None:
    """The panels in one titled row, drawn without pyplot (no GUI backend
    and no global figure state, so it is safe inside other programs)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(images), 3.6), layout="constrained")
    axes = fig.subplots(1, len(images))
    for ax, img, title in zip(axes, images, PANEL_TITLES):
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    fig.suptitle(f"pyconv.conv2d edge detection: {source}")
    fig.savefig(path, dpi=100)


def save_figure(path: Union[str, Path], images: Sequence[np.ndarray], source: str,
                writer: str = "auto") -> str:
    """Save the panels with ``writer`` ("auto": matplotlib if importable,
    else the stdlib PNG writer); returns the writer used."""
    if writer not in WRITERS:
        raise ValueError(f"writer must be one of {WRITERS}, got {writer!r}")
    if writer == "auto":
        writer = "matplotlib" if _have_matplotlib() else "stdlib"
    if writer == "matplotlib":
        save_matplotlib(path, images, source)
    else:
        write_png_gray(path, grid(images))
    return writer


def check_against_reference(image: np.ndarray, grads: np.ndarray, border: str) -> float:
    """Max |pyconv - reference| over the four maps; raises AssertionError if
    it exceeds DESIGN.md's float32 tolerance against the float64 reference."""
    ref = reference_gradients(image, border)
    atol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(grads, ref, rtol=1e-4, atol=atol,
                               err_msg="pyconv.conv2d disagrees with pyconv.reference.conv2d")
    return float(np.abs(grads - ref).max())


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Run the example; returns what it printed, as numbers.

    Returns
    -------
    dict
        ``shape`` (H, W), ``source``, ``max_abs_diff`` (pyconv vs the float64
        reference), ``seconds`` (best pyconv.conv2d call), ``output`` (Path),
        ``writer`` ("matplotlib" or "stdlib").
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", action="store_true",
                    help="use the generated test image even if scikit-image is installed")
    ap.add_argument("--image", default=None, help="process this image file (read with matplotlib)")
    ap.add_argument("--output", default="edges.png", help="PNG to write (default: edges.png)")
    ap.add_argument("--border", choices=BORDERS, default="reflect",
                    help="pixels outside the image: reflect (default), edge (replicate) or zero")
    ap.add_argument("--writer", choices=WRITERS, default="auto",
                    help="matplotlib figure, or the stdlib grayscale PNG writer (default: auto)")
    args = ap.parse_args(argv)

    image, source = load_input(args.image, args.synthetic)
    grads, seconds = gradients(image, args.border, repeats=5)
    diff = check_against_reference(image, grads, args.border)
    output = Path(args.output)
    writer = save_figure(output, panels(image, grads), source, args.writer)

    sobel, scharr = magnitudes(grads)
    print(f"{source}: {image.shape[0]}x{image.shape[1]}, pyconv {pyconv.__version__} "
          f"(isa {pyconv.config()['isa']}, {pyconv.get_num_threads()} threads)")
    print(f"conv2d, 4 filters 3x3, border {args.border}: {seconds * 1e3:.2f} ms; "
          f"max |pyconv - reference| = {diff:.2e}")
    print(f"max Sobel magnitude {sobel.max():.3f}, max Scharr magnitude {scharr.max():.3f}")
    print(f"wrote {output} ({writer})")
    return {"shape": image.shape, "source": source, "max_abs_diff": diff,
            "seconds": seconds, "output": output, "writer": writer}


if __name__ == "__main__":
    main()

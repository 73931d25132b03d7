"""examples/edge_detection.py: Sobel/Scharr through one conv2d call.

The filters are checked against hand-computed textbook responses and against
the synthetic image's known geometry (re-derived here from the docstring of
``synthetic_image``, not read from the example); the stdlib PNG writer is
checked by decoding its file with an independent reader written below.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"pyconv_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def edges() -> ModuleType:
    return _load("edge_detection")


def read_png_gray(path: Path) -> np.ndarray:
    """Decode an 8-bit grayscale, non-interlaced PNG whose scanlines use
    filter 0, checking every chunk's CRC and the chunk order."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (8, 0, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, width + 1)
    assert not rows[:, 0].any(), "scanline filter types other than 0"
    return rows[:, 1:]


# ---------------------------------------------------------------- filters

def test_sobel_on_a_vertical_step_is_the_textbook_response(edges):
    """Rows [0 0 0 1 1 1]: Gx = 4 on both sides of the step (Scharr: 16),
    0 elsewhere; Gy = 0 everywhere (the reflected border adds no edge)."""
    step = np.tile(np.array([0, 0, 0, 1, 1, 1], dtype=np.float32), (5, 1))
    grads, seconds = edges.gradients(step)
    assert grads.shape == (4, 5, 6) and grads.dtype == np.float32 and seconds > 0
    expected_gx = np.tile([0, 0, 4, 4, 0, 0], (5, 1))
    np.testing.assert_array_equal(grads[0], expected_gx)
    np.testing.assert_array_equal(grads[1], 0)
    np.testing.assert_array_equal(grads[2], 4 * expected_gx)
    np.testing.assert_array_equal(grads[3], 0)


def test_kernel_signs_follow_cross_correlation(edges):
    """conv2d does not flip the weight: a dark-to-bright step to the right
    gives Gx > 0, bright-to-dark gives Gx < 0, and the transposed image
    swaps the roles of x and y."""
    step = np.tile(np.array([0, 0, 0, 1, 1, 1], dtype=np.float32), (6, 1))
    falling, _ = edges.gradients(step[:, ::-1])
    assert falling[0].min() == -4 and falling[0].max() == 0
    down, _ = edges.gradients(step.T)
    np.testing.assert_array_equal(down[1], np.tile([0, 0, 4, 4, 0, 0], (6, 1)).T)
    np.testing.assert_array_equal(down[0], 0)


def test_zero_border_sees_the_frame(edges):
    """border="zero" (conv2d's padding="same") agrees with the reflected
    border inside and shows the image frame as an edge: on a constant
    image Gx is 0 inside and -/+ 4 at the left/right columns (corners 3)."""
    flat = np.ones((5, 7), dtype=np.float32)
    zero, _ = edges.gradients(flat, border="zero")
    reflect, _ = edges.gradients(flat, border="reflect")
    np.testing.assert_array_equal(reflect, 0)
    np.testing.assert_array_equal(zero[:, 1:-1, 1:-1], 0)
    np.testing.assert_array_equal(zero[0, 1:-1, 0], 4)
    np.testing.assert_array_equal(zero[0, 1:-1, -1], -4)
    assert zero[0, 0, 0] == 3 and zero[1, 0, 0] == 3
    with pytest.raises(ValueError, match="border"):
        edges.gradients(flat, border="wrap")


def test_edges_sit_on_the_synthetic_shapes_borders(edges):
    """Sobel magnitude is ~4 x the step height on the rectangle's and the
    disc's borders, and only noise (< 0.25) wherever the 3x3 window sees a
    single region; Scharr is ~4 x Sobel on a straight edge."""
    h = w = 128
    img = edges.synthetic_image(h, w)
    grads, _ = edges.gradients(img)
    sobel, scharr = edges.magnitudes(grads)

    rows, cols = np.mgrid[0:h, 0:w]
    labels = np.zeros((h, w), dtype=int)
    labels[h // 8:h // 2, w // 8:w // 2] = 1
    cy, cx, r = 0.68 * h, 0.68 * w, 0.18 * min(h, w)
    labels[(rows - cy) ** 2 + (cols - cx) ** 2 <= r * r] = 2
    padded = np.pad(labels, 1, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
    uniform = (windows == labels[:, :, None, None]).all(axis=(2, 3))
    assert uniform.mean() > 0.9
    assert sobel[uniform].max() < 0.25

    # Rectangle's left border (value 0.6 over a ramp of 0.25 * col / 127).
    step = 0.6 - 0.25 * (w // 8 - 1) / (w - 1)
    for col in (w // 8 - 1, w // 8):
        assert sobel[h // 4, col] == pytest.approx(4 * step, abs=0.2)
        assert scharr[h // 4, col] / sobel[h // 4, col] == pytest.approx(4.0, rel=0.1)
    # Rectangle's top border, and the disc's rightmost and topmost points.
    assert sobel[h // 8 - 1:h // 8 + 1, w // 4].min() > 0.8 * 4 * 0.55
    assert sobel[int(cy), int(cx + r) - 1:int(cx + r) + 2].max() > 0.8 * 4 * 0.65
    assert sobel[int(cy - r) - 1:int(cy - r) + 2, int(cx)].max() > 0.8 * 4 * 0.65


def test_reference_check_can_fail(edges):
    img = edges.synthetic_image(32, 40)
    grads, _ = edges.gradients(img)
    assert edges.check_against_reference(img, grads, "reflect") < 1e-4
    grads[2, 10, 10] += 0.05
    with pytest.raises(AssertionError, match="reference"):
        edges.check_against_reference(img, grads, "reflect")


# ---------------------------------------------------------------- output

def test_write_png_gray_round_trips(edges, tmp_path):
    """An odd-sized array with every byte value survives the stdlib writer."""
    pixels = (np.arange(7 * 37) % 256).astype(np.uint8).reshape(7, 37)
    path = tmp_path / "ramp.png"
    edges.write_png_gray(path, pixels)
    np.testing.assert_array_equal(read_png_gray(path), pixels)
    with pytest.raises(ValueError, match="uint8"):
        edges.write_png_gray(path, pixels.astype(np.float32))


def test_main_stdlib_writer(edges, tmp_path, monkeypatch, capsys):
    """Without matplotlib ("auto" falls back), main writes the grid of five
    normalised panels as a grayscale PNG that decodes to the same pixels."""
    monkeypatch.setattr(edges, "_have_matplotlib", lambda: False)
    out = tmp_path / "edges.png"
    result = edges.main(["--synthetic", "--output", str(out)])
    assert result["writer"] == "stdlib" and result["output"] == out
    assert result["shape"] == (128, 128) and result["source"] == "synthetic"
    assert result["max_abs_diff"] < 1e-4 and result["seconds"] > 0
    assert f"wrote {out}" in capsys.readouterr().out

    decoded = read_png_gray(out)
    gap = edges.GRID_GAP
    assert decoded.shape == (128 + 2 * gap, 5 * (128 + gap) + gap)
    img = edges.synthetic_image()
    first = np.round((img - img.min()) / (img.max() - img.min()) * 255)
    np.testing.assert_array_equal(decoded[gap:gap + 128, gap:gap + 128], first)
    assert (decoded[:gap] == 255).all() and (decoded[:, 128 + gap:128 + 2 * gap] == 255).all()
    grads, _ = edges.gradients(img)
    np.testing.assert_array_equal(decoded, edges.grid(edges.panels(img, grads)))
    # The brightest Sobel-magnitude pixel is white, the flat rectangle black.
    sobel_panel = decoded[gap:gap + 128, gap + 3 * (128 + gap):gap + 3 * (128 + gap) + 128]
    assert sobel_panel.max() == 255 and sobel_panel[30:50, 30:50].max() < 255 * 0.1

    mpimg = pytest.importorskip("matplotlib.image")
    np.testing.assert_array_equal(np.round(mpimg.imread(out) * 255), decoded)


def test_main_matplotlib_figure_and_image_input(edges, tmp_path):
    """With matplotlib: a titled figure PNG; --image reads an RGB file and
    converts it to gray."""
    mpimg = pytest.importorskip("matplotlib.image")
    rgb = np.zeros((24, 30, 3), dtype=np.float32)
    rgb[:, 15:] = (1.0, 0.5, 0.25)
    src = tmp_path / "input.png"
    mpimg.imsave(src, rgb)
    out = tmp_path / "figure.png"
    result = edges.main(["--image", str(src), "--output", str(out), "--writer", "matplotlib"])
    assert result["writer"] == "matplotlib" and result["shape"] == (24, 30)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    figure = mpimg.imread(out)
    assert figure.shape[:2] == (360, 1600) and figure.std() > 0.1

    gray = edges.to_gray(mpimg.imread(src))
    assert gray.shape == (24, 30)
    assert gray[0, 0] == 0 and gray[0, -1] == pytest.approx(0.2126 + 0.7152 * 0.5 + 0.0722 * 0.25, abs=3e-3)

"""``to_rgb`` / ``FolderImages.load`` scale every image mode by its bit depth.

One 8-bit picture is saved in many forms (16-bit grayscale PNG/TIFF, 16-bit RGB PNG,
float TIFF, 1-bit, LA, palette, CMYK, ...); each decodes to the 8-bit rendering of the
same picture. Pillow's ``convert("RGB")`` clips 16-bit values at 255 (a 16-bit grayscale
PNG came out nearly white) and truncates float values in 0..1 to black.

Pillow cannot write 16-bit RGB(A) or 16-bit gray+alpha PNGs; ``_png16`` writes them
(a plain PNG encoder: IHDR, one zlib IDAT of unfiltered rows, IEND).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from solens.store.images import FolderImages, to_rgb

H, W = 12, 17


def _picture() -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit RGB picture [H, W, 3] and an 8-bit grayscale one [H, W], both reaching 0
    and 255."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgb[0, 0], rgb[0, 1] = 0, 255
    return rgb, rgb[..., 1].copy()


RGB, GRAY = _picture()


def _png16(path: Path, a: np.ndarray) -> None:
    """A 16-bit PNG of ``a`` (uint16 [H, W] gray, [H, W, 2] gray+alpha, [H, W, 3|4] RGB(A))."""
    channels = 1 if a.ndim == 2 else a.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    h, w = a.shape[:2]
    rows = b"".join(b"\0" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _save(im: Image.Image, **kw: object) -> Callable[[Path], None]:
    return lambda path: im.save(path, **kw)


def _palette() -> tuple[Image.Image, np.ndarray]:
    """A palette image of 16 colours and its RGB rendering."""
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (H, W), dtype=np.uint8)
    im = Image.fromarray(index).convert("P")
    im.putpalette(colours.tobytes())
    return im, colours[index]


PALETTE, PALETTE_RGB = _palette()
G16 = GRAY.astype(np.uint16) * 257  # v * 257: 0..255 -> 0..65535, white stays white
RGB16 = RGB.astype(np.uint16) * 257
THRESHOLDED = np.where(GRAY >= 128, 255, 0).astype(np.uint8)

# file name, writer, the mode Pillow (13) opens it in, the 8-bit picture it must decode to
CASES: list[tuple[str, Callable[[Path], None], str, np.ndarray]] = [
    ("gray16.png", _save(Image.fromarray(G16)), "I;16", GRAY),
    ("gray16-hand.png", lambda p: _png16(p, G16), "I;16", GRAY),
    ("gray16.tif", _save(Image.fromarray(G16)), "I;16", GRAY),
    ("gray16-big-endian.png", _save(Image.frombytes("I;16B", (W, H), G16.astype(">u2").tobytes())),
     "I;16", GRAY),
    ("int32.tif", _save(Image.fromarray(GRAY.astype(np.int32) << 23)), "I", GRAY),
    ("float01.tif", _save(Image.fromarray(GRAY.astype(np.float32) / 255)), "F", GRAY),
    ("float255.tif", _save(Image.fromarray(GRAY.astype(np.float32))), "F", GRAY),
    ("rgb16.png", lambda p: _png16(p, RGB16), "RGB", RGB),
    ("rgba16.png", lambda p: _png16(p, np.dstack([RGB16, G16])), "RGBA", RGB),
    ("gray-alpha16.png", lambda p: _png16(p, np.dstack([G16, G16[::-1]])), "RGBA", GRAY),
    ("gray.png", _save(Image.fromarray(GRAY)), "L", GRAY),
    ("gray-alpha.png", _save(Image.fromarray(np.dstack([GRAY, GRAY[::-1]]), "LA")), "LA", GRAY),
    ("bilevel.png", _save(Image.fromarray(GRAY).convert("1", dither=Image.Dither.NONE)), "1",
     THRESHOLDED),
    ("palette.png", _save(PALETTE), "P", PALETTE_RGB),
    ("palette-transparent.png", _save(PALETTE, transparency=3), "P", PALETTE_RGB),
    ("rgb.png", _save(Image.fromarray(RGB)), "RGB", RGB),
    ("rgba.png", _save(Image.fromarray(np.dstack([RGB, GRAY]))), "RGBA", RGB),
    ("cmyk.tif", _save(Image.fromarray(RGB).convert("CMYK")), "CMYK", RGB),
]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> FolderImages:
    root = tmp_path_factory.mktemp("modes")
    for name, write, _, _ in CASES:
        write(root / name)
    # TIFF is not among the suffixes a scan picks up: list the files directly
    return FolderImages(root, [name for name, *_ in CASES])


@pytest.mark.parametrize(("name", "mode", "want"), [(c[0], c[2], c[3]) for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_every_mode_decodes_to_the_8bit_picture(folder, name, mode, want) -> None:
    with Image.open(folder.root / name) as raw:
        assert raw.mode == mode  # the case tests the mode it means to
    im = folder.load(folder.ids.index(name))
    assert im.mode == "RGB" and im.size == (W, H)
    want = np.dstack([want] * 3) if want.ndim == 2 else want
    diff = np.abs(np.asarray(im).astype(int) - want.astype(int))
    assert diff.max() <= 1, (name, mode, int(diff.max()))


def _gray(im: Image.Image) -> np.ndarray:
    out = np.asarray(to_rgb(im))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    return out[..., 0]


def test_in_memory_wide_modes() -> None:
    """Modes files rarely open in here: older Pillow opens a 16-bit gray PNG as ``I``; the
    little-endian ``I;16L``; ``PA``; float and integer values beyond the range (clipped)."""
    old_png = Image.fromarray(G16.astype(np.int32))
    old_png.format = "PNG"  # as older Pillow opens a 16-bit gray PNG
    np.testing.assert_array_equal(_gray(old_png), GRAY)
    little = Image.frombytes("I;16L", (W, H), G16.astype("<u2").tobytes())
    np.testing.assert_array_equal(_gray(little), GRAY)
    # a mode-I image without a format is taken as 16-bit
    np.testing.assert_array_equal(_gray(Image.fromarray(G16.astype(np.int32))), GRAY)
    pa = Image.fromarray(np.asarray(PALETTE)).convert("P")
    pa.putpalette(np.asarray(PALETTE.getpalette(), np.uint8).tobytes())
    pa = pa.convert("PA")
    assert pa.mode == "PA"
    np.testing.assert_array_equal(np.asarray(to_rgb(pa)), PALETTE_RGB)
    f = Image.fromarray(np.array([[-0.5, 100.0, 300.0]], np.float32))
    np.testing.assert_array_equal(_gray(f), [[0, 100, 255]])
    f01 = Image.fromarray(np.array([[-0.5, 0.5, 1.0, np.nan]], np.float32))
    np.testing.assert_array_equal(_gray(f01), [[0, 128, 255, 0]])
    i = Image.fromarray(np.array([[-7, 65535, 70000]], np.int32))
    np.testing.assert_array_equal(_gray(i), [[0, 255, 255]])

"""Image decoding: DICOM round trips, PNG/JPEG, and every refusal with its check name."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from cxr_fixtures import PATIENT_NAME, dicom_bytes, png_bytes
from PIL import Image

from clinaudit.sources.images import (
    META_KEYS,
    PHI_TAGS,
    ImageDecodeError,
    decode_image,
    resize_for_model,
)

RAMP = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096).astype(np.uint16)


def _fails(data: bytes, check: str, name: str = "images/x.dcm", **kw: int) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, name=name, **kw)
    err = info.value
    assert err.check == check, str(err)
    assert err.file == name and err.fix and name in str(err)
    return err


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_dicom_12_bit_round_trip_and_metadata() -> None:
    img = decode_image(dicom_bytes(RAMP, bits_stored=12), name="a.dcm")
    assert img.format == "dicom" and img.pixels.dtype == np.float32
    assert (img.rows, img.cols, img.bits_stored, img.photometric) == (64, 64, 12, "MONOCHROME2")
    np.testing.assert_allclose(img.pixels, RAMP / 4095.0, atol=1e-6)
    assert img.pixels.max() == pytest.approx(1.0) and img.pixels.min() == 0.0
    assert img.pixel_spacing_mm == pytest.approx(0.2)
    assert set(img.meta) == set(META_KEYS)
    assert img.meta["Modality"] == "DX" and img.meta["BitsStored"] == "12"
    # No identifying value is ever copied out of the header.
    assert not set(img.meta) & set(PHI_TAGS)
    assert all("DOE" not in v and "MRN" not in v for v in img.meta.values())
    assert "PatientName" in PHI_TAGS and "PatientID" in PHI_TAGS


def test_dicom_monochrome1_is_inverted_and_negative_slope_flips() -> None:
    mono1 = decode_image(dicom_bytes(RAMP, photometric="MONOCHROME1"), name="m1.dcm")
    np.testing.assert_allclose(mono1.pixels, 1.0 - RAMP / 4095.0, atol=1e-6)
    assert mono1.photometric == "MONOCHROME1"
    neg = decode_image(dicom_bytes(RAMP, slope=-1.0, intercept=4095.0), name="s.dcm")
    np.testing.assert_allclose(neg.pixels, 1.0 - RAMP / 4095.0, atol=1e-6)
    pos = decode_image(dicom_bytes(RAMP, slope=2.0, intercept=-100.0), name="p.dcm")
    np.testing.assert_allclose(pos.pixels, RAMP / 4095.0, atol=1e-6)


def test_dicom_8_bit() -> None:
    stored = (RAMP % 256).astype(np.uint8)
    img = decode_image(dicom_bytes(stored, bits_stored=8, bits_allocated=8), name="e.dcm")
    np.testing.assert_allclose(img.pixels, stored / 255.0, atol=1e-6)


def test_dicom_refusals() -> None:
    over = RAMP.copy()
    over[3, 5] = 5000
    err = _fails(dicom_bytes(over, bits_stored=12), "pixel_range")
    assert "[0, 5000]" in err.message and "[0, 4095]" in err.message
    rgb = np.zeros((64, 64, 3), np.uint8)
    _fails(
        dicom_bytes(rgb, bits_stored=8, bits_allocated=8, photometric="RGB", samples=3),
        "photometric",
    )
    _fails(dicom_bytes(RAMP, photometric="PALETTE COLOR"), "photometric")
    _fails(dicom_bytes(RAMP, bits_stored=17), "bit_depth")


def test_dicom_decompression_bomb_refused_before_decoding() -> None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(RAMP)))
    ds.Rows, ds.Columns = 60_000, 60_000  # pixel data is only 64 x 64: decoding would fail
    buf = io.BytesIO()
    ds.save_as(buf)
    err = _fails(buf.getvalue(), "decompression_bomb")
    assert "3600000000 pixels exceeds max_pixels=50000000" in err.message
    _fails(dicom_bytes(RAMP), "decompression_bomb", max_pixels=1000)


def test_corrupt_and_truncated_dicom() -> None:
    good = dicom_bytes(RAMP)
    _fails(good[: len(good) - 4000], "corrupt_dicom")  # cut inside the pixel data
    _fails(good[:200], "corrupt_dicom")  # cut inside the header
    _fails(b"\x00" * 300, "corrupt_dicom")  # no DICM marker
    err = _fails(b"hello world", "image_format", name="images/x.bin")
    assert "expected DICOM Part 10, PNG or JPEG" in err.message


def test_png_8_and_16_bit_and_gray_rgb() -> None:
    arr8 = (RAMP % 256).astype(np.uint8)
    img8 = decode_image(png_bytes(arr8), name="a.png")
    assert (img8.format, img8.bits_stored, img8.photometric) == ("png", 8, "MONOCHROME2")
    np.testing.assert_allclose(img8.pixels, arr8 / 255.0, atol=1e-6)
    arr16 = (RAMP * 16).astype(np.uint16)
    img16 = decode_image(png_bytes(arr16), name="b.png")
    assert img16.bits_stored == 16
    np.testing.assert_allclose(img16.pixels, arr16 / 65535.0, atol=1e-6)
    rgb = decode_image(png_bytes(np.repeat(arr8[..., None], 3, axis=2)), name="c.png")
    np.testing.assert_allclose(rgb.pixels, img8.pixels)
    assert img8.pixel_spacing_mm is None and img8.meta["Modality"] == ""


def test_png_refusals() -> None:
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[..., 0] = 200
    err = _fails(png_bytes(colour), "photometric", name="c.png")
    assert "colour" in err.message
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = 10
    _fails(png_bytes(rgba), "photometric", name="t.png")
    noisy = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)
    data = png_bytes(noisy)
    err = _fails(data[: len(data) // 2], "corrupt_image", name="t.png")
    assert "truncated" in err.message or "PNG" in err.message


def test_png_decompression_bombs() -> None:
    # Our limit, from the header alone (the file is a few dozen bytes).
    err = _fails(_png_header_only(8_000, 8_000), "decompression_bomb", name="b.png")
    assert "64000000 pixels exceeds max_pixels=50000000" in err.message
    # PIL's own DecompressionBombWarning (> 89 MP) and Error (> 179 MP) are errors too.
    _fails(_png_header_only(10_000, 10_000), "decompression_bomb", name="b.png", max_pixels=10**10)
    _fails(_png_header_only(20_000, 20_000), "decompression_bomb", name="b.png", max_pixels=10**10)


def test_jpeg_gray() -> None:
    arr = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    img = decode_image(buf.getvalue(), name="x.jpg")
    assert img.format == "jpeg" and img.bits_stored == 8
    assert np.abs(img.pixels - arr / 255.0).max() < 0.05


def test_resize_for_model() -> None:
    rng = np.random.default_rng(1)
    px = rng.random((128, 96), dtype=np.float32)
    small = resize_for_model(px, 32)
    assert small.shape == (32, 32) and small.dtype == np.float32
    assert small.mean() == pytest.approx(px.mean(), abs=1e-3)
    assert small.std() < px.std() / 2  # area averaging removes pixel noise
    assert resize_for_model(np.full((10, 10), 0.3), 40).max() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="2-D"):
        resize_for_model(np.zeros((3, 3, 3)), 8)
    with pytest.raises(ValueError, match="positive integer"):
        resize_for_model(px, 0)


def test_phi_value_not_in_decoded_image() -> None:
    img = decode_image(dicom_bytes(RAMP, patient_name=PATIENT_NAME), name="a.dcm")
    text = repr(img.meta) + repr(img)
    assert "DOE" not in text and "JANE" not in text


def test_truncated_png_is_refused_even_after_weasyprint_is_imported(tmp_path) -> None:
    """WeasyPrint sets PIL's LOAD_TRUNCATED_IMAGES process-wide; decoding must not follow it."""
    import io

    import numpy as np
    import weasyprint  # noqa: F401  (the import flips the PIL flag)
    from PIL import Image, ImageFile

    from clinaudit.sources.images import ImageDecodeError, decode_image

    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    buf = io.BytesIO()
    Image.fromarray((np.arange(256 * 256) % 251).astype(np.uint8).reshape(256, 256)).save(
        buf, format="PNG"
    )
    path = tmp_path / "trunc.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError):
        decode_image(path.read_bytes(), name=path.name)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for WeasyPrint

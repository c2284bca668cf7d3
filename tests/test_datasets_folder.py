"""``imagefolder`` and ``tmed2``: real PNG/JPEG files of mixed sizes and modes written here."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from image_rows import pixels
from PIL import Image

from interlude.config import load_config
from interlude.data import build_data, load_raw
from interlude.data.folder import decode_image
from interlude.errors import DataError

CLASSES = ["cat", "dog", "owl"]
SIZES = [(20, 30), (16, 16), (48, 40)]


def _cfg(root: Path, *overrides: str, test: bool = True):
    keys = ["data.name=imagefolder", f"data.labeled_dir={root / 'labeled'}",
            f"data.unlabeled_dir={root / 'unlabeled'}", "data.resolution=16"]
    if test:
        keys.append(f"data.test_dir={root / 'test'}")
    return load_config(None, keys + list(overrides)).data


def _pixels(seed: int, size: tuple[int, int], gray: bool) -> np.ndarray:
    shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(path: Path, pixels: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def make_folders(root: Path, per_class: int = 3, gray: bool = False, mixed: bool = True) -> dict:
    """labeled/<class>/ (PNG + JPEG, several sizes), unlabeled/ (nested), test/<class>/.

    ``known`` is a 16x16 RGB (or gray) PNG, stored losslessly at the target size, whose pixels
    must come back unchanged.
    """
    known = _pixels(99, (16, 16), gray)
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            fmt = "JPEG" if (mixed and i == 2) else "PNG"
            is_gray = gray or (mixed and i == 1)
            pixels = _pixels(10 * c + i, SIZES[i % 3], is_gray)
            _save(root / "labeled" / name / f"{i}.{fmt.lower()}", pixels, fmt)
        _save(root / "test" / name / "t.png", _pixels(50 + c, (24, 24), gray))
    _save(root / "labeled" / "cat" / "0.png", known)  # first file of the first class
    for i in range(5):
        sub = root / "unlabeled" / ("a" if i % 2 else "b/deeper")
        _save(sub / f"u{i}.png", _pixels(70 + i, SIZES[i % 3], gray))
    return {"known": known}


def test_imagefolder_uses_every_labeled_image_and_resizes(tmp_path):
    ref = make_folders(tmp_path)
    data = build_data(_cfg(tmp_path))  # labels_per_class (default 4) does not apply here
    assert data.class_names == CLASSES
    assert data.labeled.images.shape == (9, 3, 16, 16)
    assert np.bincount(data.labeled.labels).tolist() == [3, 3, 3]
    assert data.unlabeled.images.shape == (5, 3, 16, 16)
    assert data.test.images.shape == (3, 3, 16, 16) and data.test.labels.tolist() == [0, 1, 2]
    assert np.array_equal(pixels(data.labeled.images)[0], ref["known"].transpose(2, 0, 1))
    assert data.split["all_train_labeled"] is True


def test_imagefolder_val_hold_out_is_balanced_and_seeded(tmp_path):
    make_folders(tmp_path, per_class=4)
    a = build_data(_cfg(tmp_path, "data.val_per_class=1", "data.data_seed=0"))
    b = build_data(_cfg(tmp_path, "data.val_per_class=1", "data.data_seed=0"))
    c = build_data(_cfg(tmp_path, "data.val_per_class=1", "data.data_seed=2"))
    assert np.bincount(a.labeled.labels).tolist() == [3, 3, 3]
    assert np.bincount(a.val.labels).tolist() == [1, 1, 1]
    assert a.split["val"] == b.split["val"] != c.split["val"]
    assert not set(a.split["val"]) & set(a.split["labeled"])


def test_grayscale_is_inferred_and_can_be_forced(tmp_path):
    ref = make_folders(tmp_path / "gray", gray=True, mixed=False)
    gray = build_data(_cfg(tmp_path / "gray"))
    assert gray.labeled.images.shape[1] == 1 and len(gray.mean) == 1
    assert np.array_equal(pixels(gray.labeled.images)[0, 0], ref["known"])  # luma of gray is exact
    mixed = build_data(_cfg(tmp_path / "gray", "data.grayscale=false"))
    assert mixed.labeled.images.shape[1] == 3
    assert np.array_equal(pixels(mixed.labeled.images)[:, 0], pixels(mixed.labeled.images)[:, 2])
    make_folders(tmp_path / "rgb")  # one gray PNG per class among RGB files -> 3 channels
    assert build_data(_cfg(tmp_path / "rgb")).labeled.images.shape[1] == 3
    assert build_data(_cfg(tmp_path / "rgb", "data.grayscale=true")).labeled.images.shape[1] == 1


def test_corrupt_images_are_skipped_and_counted(tmp_path, caplog):
    make_folders(tmp_path)
    (tmp_path / "labeled" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    jpeg = tmp_path / "labeled" / "owl" / "2.jpeg"
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated JPEG
    (tmp_path / "unlabeled" / "a" / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="interlude"):
        data = build_data(_cfg(tmp_path))
    assert np.bincount(data.labeled.labels).tolist() == [3, 3, 2]
    assert len(data.unlabeled) == 5
    assert "skipped 2 unreadable image(s)" in caplog.text
    notes = load_raw(_cfg(tmp_path)).notes
    assert any("skipped 2 unreadable" in n and "broken.png" in n for n in notes)
    assert any("skipped 1 unreadable" in n and "empty.jpg" in n for n in notes)


def test_class_in_val_or_test_but_not_labeled_is_an_error(tmp_path):
    make_folders(tmp_path)
    _save(tmp_path / "val" / "zebra" / "z.png", _pixels(1, (8, 8), False))
    with pytest.raises(DataError, match="data.val_dir=.* class folder.s. zebra .*not in"):
        build_data(_cfg(tmp_path, f"data.val_dir={tmp_path / 'val'}"))


def test_empty_class_folder_and_missing_folders_are_clear_errors(tmp_path):
    make_folders(tmp_path)
    (tmp_path / "labeled" / "fox").mkdir()
    (tmp_path / "labeled" / "fox" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="folder.s. fox in data.labeled_dir=.* hold no images"):
        build_data(_cfg(tmp_path))
    with pytest.raises(DataError, match="data.unlabeled_dir is not set"):
        build_data(load_config(None, ["data.name=imagefolder",
                                      f"data.labeled_dir={tmp_path / 'labeled'}"]).data)
    with pytest.raises(DataError, match="has no subfolders"):
        build_data(_cfg(tmp_path, f"data.labeled_dir={tmp_path / 'unlabeled' / 'a'}"))


def test_unreadable_class_is_an_error_not_an_empty_class(tmp_path):
    make_folders(tmp_path, per_class=1)
    (tmp_path / "labeled" / "dog" / "0.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no readable image in class folder.s. dog"):
        build_data(_cfg(tmp_path))


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    make_folders(tmp_path, gray=True, mixed=False)
    wide = np.full((16, 16), 65535, dtype=np.uint16)
    wide[:8] = 257 * 100
    Image.fromarray(wide).save(tmp_path / "labeled" / "cat" / "0.png")
    data = build_data(_cfg(tmp_path))
    assert pixels(data.labeled.images)[0, 0, 0, 0] == 100 and pixels(data.labeled.images)[0, 0, 15, 0] == 255


def _save_16bit(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(values.astype(np.uint16))
    assert img.mode == "I;16"
    img.save(path)


def _tiff12(path: Path, values: np.ndarray) -> None:
    """A minimal little-endian 12-bit grayscale TIFF (one strip; two samples per 3 bytes, most
    significant bits first), which Pillow opens as "I;16" holding 0..4095."""
    import struct

    h, w = values.shape
    packed = bytearray()
    for a, b in values.astype(np.uint32).reshape(-1, 2):
        packed += bytes([a >> 4, ((a & 0xF) << 4) | (b >> 8), b & 0xFF])
    # (tag, type 3 = SHORT / 4 = LONG, value): width, height, BitsPerSample 12, no compression,
    # BlackIsZero, StripOffsets (after the IFD), SamplesPerPixel, RowsPerStrip, StripByteCounts
    entries = [(256, 3, w), (257, 3, h), (258, 3, 12), (259, 3, 1), (262, 3, 1),
               (273, 4, 8 + 2 + 12 * 9 + 4), (277, 3, 1), (278, 3, h), (279, 4, len(packed))]
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, kind, value in entries:
        out += struct.pack("<HHI", tag, kind, 1)
        out += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
    path.write_bytes(bytes(out + struct.pack("<I", 0) + packed))


def test_sixteen_bit_scale_is_the_bit_depth_not_the_image_max(tmp_path):
    """Two 16-bit PNGs with maxima 250 and 260 mean nearly the same brightness: both decode to
    round(250 / 257) = round(260 / 257) = 1 (per-image scaling gave 250 and 1)."""
    for peak in (250, 260):
        values = np.zeros((4, 6), dtype=np.uint16)
        values[:2] = peak
        _save_16bit(tmp_path / f"p{peak}.png", values)
        # Pillow opens 16-bit gray PNGs as "I;16" (older versions: "I"); both are 16-bit data
        assert Image.open(tmp_path / f"p{peak}.png").mode in ("I;16", "I")
        rgb, gray = decode_image(tmp_path / f"p{peak}.png", (4, 6))
        assert gray and rgb.shape == (3, 4, 6)
        assert (rgb[:, :2] == 1).all() and (rgb[:, 2:] == 0).all()
    ramp = np.array([[0, 128, 129, 257 * 100, 65534, 65535]], dtype=np.uint16)
    _save_16bit(tmp_path / "ramp.png", ramp)
    rgb, _ = decode_image(tmp_path / "ramp.png", (1, 6))
    # floor(v * 255 / 65535 + 0.5): 128 / 257 = 0.498 -> 0, 129 / 257 = 0.502 -> 1
    assert rgb[0, 0].tolist() == [0, 0, 1, 100, 255, 255]


def test_float_tiff_is_read_as_zero_to_one(tmp_path):
    """Float TIFFs in [0, 1] (they used to turn black): v * 255, rounding half up, so 0.5 ->
    127.5 -> 128; values outside [0, 1] clip and NaN becomes 0."""
    values = np.array([[0.0, 0.25, 0.5, 1.0, 1 / 255, 0.999], [-0.2, 1.5, np.nan, 0.2, 0.8, 0.6]],
                      dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    rgb, gray = decode_image(tmp_path / "f.tif", (2, 6))
    expected = [[0, 64, 128, 255, 1, 255], [0, 255, 0, 51, 204, 153]]  # 63.75 -> 64
    assert gray and rgb[0].tolist() == expected and (rgb[1] == rgb[0]).all()


def test_twelve_bit_tiff_and_32_bit_int_modes(tmp_path):
    """A 12-bit TIFF declares BitsPerSample 12 and is scaled by 4095; mode "I" is taken as
    16-bit data (values above 65535 clip)."""
    _tiff12(tmp_path / "t12.tif", np.array([[0, 4095, 2048, 16], [1, 2, 4000, 4095]]))
    img = Image.open(tmp_path / "t12.tif")
    assert img.mode == "I;16" and np.asarray(img).max() == 4095
    rgb, _ = decode_image(tmp_path / "t12.tif", (2, 4))
    # floor(v * 255 / 4095 + 0.5): 2048 -> 127.56 -> 128, 16 -> 1.0 -> 1, 4000 -> 249.08 -> 249
    assert rgb[0].tolist() == [[0, 255, 128, 1], [0, 0, 249, 255]]
    wide = np.array([[0, 257 * 3, 65535, 70000]], dtype=np.int32)
    Image.fromarray(wide).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    rgb, _ = decode_image(tmp_path / "i32.tif", (1, 4))
    assert rgb[0, 0].tolist() == [0, 3, 255, 255]


def test_bit_depth_summary_is_logged_once_per_dataset(tmp_path, caplog):
    make_folders(tmp_path, gray=True, mixed=False)  # 17 8-bit gray PNGs
    for i, peak in enumerate((250, 260)):
        values = np.full((16, 16), peak, dtype=np.uint16)
        _save_16bit(tmp_path / "unlabeled" / "a" / f"wide{i}.png", values)
    with caplog.at_level(logging.INFO, logger="interlude"):
        data = build_data(_cfg(tmp_path))
    summaries = [r.getMessage() for r in caplog.records if "decoded 19 images" in r.getMessage()]
    mode = Image.open(tmp_path / "unlabeled" / "a" / "wide0.png").mode  # "I;16" ("I": old PIL)
    assert summaries == [f"decoded 19 images: 17 8-bit gray, 2 16-bit gray [{mode}] (x 1/257)"]
    wide_rows = [i for i, im in enumerate(pixels(data.unlabeled.images)) if (im[0] == 1).all()]
    assert len(wide_rows) == 2  # both 16-bit files decode to the same level, 1
    # every 16-bit file stays below 4096: a warning suggests they may be 12-bit data
    assert "no 16-bit image exceeds 4095" in caplog.text
    notes = load_raw(_cfg(tmp_path)).notes
    assert any(n.startswith("decoded 19 images") for n in notes)


def test_clipped_float_values_are_reported(tmp_path, caplog):
    make_folders(tmp_path, mixed=False)
    (tmp_path / "unlabeled" / "a").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), 3.0, dtype=np.float32)).save(
        tmp_path / "unlabeled" / "a" / "hot.tif")
    with caplog.at_level(logging.INFO, logger="interlude"):
        build_data(_cfg(tmp_path))
    assert "17 8-bit RGB, 1 float gray [F] (0..1 x 255)" in caplog.text
    assert "clipped in 1 float gray [F]" in caplog.text
    assert "16-bit image exceeds" not in caplog.text


def test_tmed2_fixed_classes_resolution_and_no_normalisation(tmp_path):
    for c, view in enumerate(["A2C", "A4C", "PLAX", "PSAX"]):
        for i in range(2):
            _save(tmp_path / "labeled" / view / f"{i}.png", _pixels(c * 2 + i, (40, 40), True))
    for i in range(3):
        _save(tmp_path / "unlabeled" / f"{i}.png", _pixels(30 + i, (40, 40), True))
    cfg = load_config(None, ["data.name=tmed2", f"data.labeled_dir={tmp_path / 'labeled'}",
                             f"data.unlabeled_dir={tmp_path / 'unlabeled'}"]).data
    data = build_data(cfg)
    assert data.class_names == ["PLAX", "PSAX", "A4C", "A2C"]
    assert data.labeled.images.shape == (8, 3, 112, 112)
    assert np.array_equal(pixels(data.labeled.images)[:, 0], pixels(data.labeled.images)[:, 1])
    assert data.mean == (0.0, 0.0, 0.0) and data.std == (1.0, 1.0, 1.0)
    shutil.rmtree(tmp_path / "labeled" / "A2C")
    with pytest.raises(DataError, match="missing: A2C"):
        build_data(cfg)


def test_exif_orientation_is_applied(tmp_path):
    """Phone photos store rotation in EXIF; the pixels we train on must be upright."""
    ref = make_folders(tmp_path, mixed=False)
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotated 180 degrees
    Image.fromarray(ref["known"]).save(tmp_path / "labeled" / "cat" / "0.png", exif=exif)
    data = build_data(_cfg(tmp_path))
    upright = ref["known"][::-1, ::-1].transpose(2, 0, 1)
    assert np.array_equal(pixels(data.labeled.images)[0], upright)

"""Real DICOM files of several vendors and transfer syntaxes: every grayscale one decodes, and a
compressed copy gives the pixels of its uncompressed twin (exactly when lossless).

Files: pydicom-data 1.0.0 (a wheel fetched from PyPI at test time, tests/public_files.py) and the
test files inside the installed pydicom wheel (pydicom.data.get_testdata_file, offline).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medweave.data.readers import dicom, volume
from medweave.errors import MedweaveError

# Damaged on purpose by their publishers (pydicom's test_files/README.txt) or without pixel data.
BROKEN = {
    "JPEG-lossy.dcm": "pixel data cannot be decoded",  # invalid SOS in a 12-bit JPEG (see JPGExtended)
    "JPEG2000-embedded-sequence-delimiter.dcm": "pixel data cannot be decoded",
    "MR_truncated.dcm": "pixel data cannot be decoded",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "has no PixelData",
    "badVR.dcm": "pixel data cannot be decoded",
}
# Transfer syntaxes of grayscale real files that must decode (the decoder plugins in pyproject).
SYNTAXES = {
    "Explicit VR Little Endian",
    "Implicit VR Little Endian",
    "Explicit VR Big Endian",
    "Deflated Explicit VR Little Endian",
    "RLE Lossless",
    "JPEG Extended (Process 2 and 4)",
    "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
    "JPEG-LS Lossless Image Compression",
    "JPEG-LS Lossy (Near-Lossless) Image Compression",
    "JPEG 2000 Image Compression (Lossless Only)",
    "JPEG 2000 Image Compression",
}


def real_files() -> dict[str, Path]:
    import pydicom.data

    from tests.public_files import package_files

    # The wheel's own folder: get_testdata_files() would also ask the network for pydicom-data.
    shipped = Path(pydicom.data.__file__).parent / "test_files"
    files = {p.name: p for p in shipped.glob("*.dcm")}
    files |= {p.name: p for p in package_files("pydicom-data==1.0.0", "**/*.dcm", kind="wheel")}
    return files


@pytest.fixture(scope="module")
def files():
    return real_files()


def _grayscale(files):
    """Files that read_header accepts, with their transfer syntax (colour/pixel-less are refused)."""
    import pydicom

    out = {}
    for name, path in sorted(files.items()):
        if name in BROKEN:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - no preamble/meta: not an image file in this corpus
            continue
        if str(ds.get("PhotometricInterpretation", "")) in dicom.GRAYSCALE and ds.get("BitsAllocated", 0) > 1:
            out[name] = (path, ds.file_meta.TransferSyntaxUID.name)
    return out


def test_every_grayscale_real_file_decodes(files):
    grayscale = _grayscale(files)
    assert len(grayscale) >= 40
    seen = set()
    for name, (path, syntax) in grayscale.items():
        image = dicom.read_image(path)
        assert image.ndim == 2 and image.dtype == np.float32, name
        assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1, name
        assert image.std() > 0.01, name  # not blank: the decoder produced an image
        seen.add(syntax)
    assert SYNTAXES <= seen, SYNTAXES - seen


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_damaged_real_files_name_the_file(files, name):
    with pytest.raises(MedweaveError, match=f"{name}: .*{BROKEN[name]}"):
        dicom.read_image(files[name])


def test_colour_and_palette_real_files_are_refused(files):
    for name in ("SC_rgb.dcm", "US1_J2KR.dcm", "OBXXXX1A.dcm", "color3d_jpeg_baseline.dcm"):
        with pytest.raises(MedweaveError, match=f"{name}: PhotometricInterpretation is .*grayscale"):
            dicom.read_image(files[name])
    with pytest.raises(MedweaveError, match="liver.dcm: 1-bit pixel data"):
        dicom.read_image(files["liver.dcm"])


def _pixels(path) -> np.ndarray:
    return np.stack([f.pixels for f in dicom.read_frames(path)])


LOSSLESS = [
    ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),  # JPEG 2000 lossless, 12-bit MR
    ("RG1_UNCR.dcm", "RG1_J2KR.dcm"),  # 15-bit CR, MONOCHROME1
    ("RG3_UNCR.dcm", "RG3_J2KR.dcm"),
    ("693_UNCR.dcm", "693_J2KR.dcm"),  # signed CT
    ("emri_small.dcm", "emri_small_RLE.dcm"),  # 10 frames
    ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"),
    ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
    ("emri_small.dcm", "emri_small_big_endian.dcm"),
    ("MR_small.dcm", "MR_small_RLE.dcm"),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
    ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
    ("MR_small.dcm", "MR_small_implicit.dcm"),
    ("JPEG2000_UNC.dcm", "JPEG2000.dcm"),
]
LOSSY = [  # the irreversible copy against the original (UNCR); UNCI is the lossy image decompressed
    ("MR2_UNCR.dcm", "MR2_J2KI.dcm"),
    ("RG1_UNCR.dcm", "RG1_J2KI.dcm"),
    ("RG3_UNCR.dcm", "RG3_J2KI.dcm"),
    ("693_UNCR.dcm", "693_J2KI.dcm"),
]


@pytest.mark.parametrize("plain, packed", LOSSLESS, ids=[b for _, b in LOSSLESS])
def test_lossless_copies_give_identical_pixels(files, plain, packed):
    np.testing.assert_array_equal(_pixels(files[plain]), _pixels(files[packed]))


@pytest.mark.parametrize("plain, packed", LOSSY, ids=[b for _, b in LOSSY])
def test_lossy_copies_stay_close(files, plain, packed):
    a, b = _pixels(files[plain]), _pixels(files[packed])
    assert a.shape == b.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98
    assert np.abs(a - b).mean() < 0.02 * np.ptp(a)
    np.testing.assert_array_equal(_pixels(files[plain.replace("UNCR", "UNCI")]), b)  # decoded as published


def test_jpeg_baseline_grayscale_through_the_plugins(tmp_path):
    """No grayscale JPEG baseline file is published in these sets: Pillow writes one (8-bit), we
    encapsulate it, and pydicom's plugin must give the image back within JPEG's loss."""
    import io

    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    y, x = np.mgrid[0:64, 0:96]
    image = (127 + 100 * np.sin(x / 9.0) * np.cos(y / 7.0)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="JPEG", quality=95)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "DX", *image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "dx_jpeg.dcm", enforce_file_format=True)
    decoded = dicom.read_frames(tmp_path / "dx_jpeg.dcm")[0].pixels
    assert np.abs(decoded - image).mean() < 2.0


def test_multiframe_real_files_as_volumes(files):
    data, spacing = volume.read_volume(files["eCT_Supplemental.dcm"])  # Enhanced CT, functional groups
    assert data.shape == (2, 512, 512) and spacing == pytest.approx((10.0, 0.388672, 0.388672))
    data, spacing = volume.read_volume(files["rtdose.dcm"])  # frames at GridFrameOffsetVector
    assert data.shape == (15, 10, 10) and spacing == pytest.approx((5.0, 10.0, 10.0))
    with pytest.raises(MedweaveError, match="emri_small.dcm: no PixelSpacing"):
        volume.read_volume(files["emri_small.dcm"])  # anonymised without geometry: refused, not guessed
    with pytest.raises(MedweaveError, match="MR_small.dcm: a single 2D frame"):
        volume.read_volume(files["MR_small.dcm"])


def _write_series(folder: Path, hu: np.ndarray, spacing, sagittal: bool) -> None:
    """``hu`` [z, y, x] (LPS) written as axial slices or as sagittal ones (rows run head to feet)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sz, sy, sx = spacing
    nz = hu.shape[0]
    series = generate_uid()
    planes = (
        [
            (hu[::-1, :, k], [k * sx, 0.0, (nz - 1) * sz], [0, 1, 0, 0, 0, -1], [sz, sy])
            for k in range(hu.shape[2])
        ]
        if sagittal
        else [(hu[k], [0.0, 0.0, k * sz], [1, 0, 0, 0, 1, 0], [sy, sx]) for k in range(nz)]
    )
    folder.mkdir()
    for k, (plane, position, orientation, pixel_spacing) in enumerate(planes):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID = "MR", series
        ds.ImagePositionPatient, ds.ImageOrientationPatient = position, orientation
        ds.PixelSpacing = pixel_spacing
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(plane, np.int16).tobytes()
        ds.save_as(folder / f"{(k * 7919) % 101:03d}.dcm", enforce_file_format=True)


def test_sagittal_series_is_reoriented_to_the_axial_volume(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1000, (6, 7, 5)).astype(np.int16)  # z, y, x: every axis a different size
    spacing = (3.0, 0.8, 1.2)
    _write_series(tmp_path / "axial", hu, spacing, sagittal=False)
    _write_series(tmp_path / "sagittal", hu, spacing, sagittal=True)
    for name in ("axial", "sagittal"):
        data, got = volume.read_volume(tmp_path / name)
        np.testing.assert_array_equal(data, hu, err_msg=name)
        assert got == pytest.approx(spacing), name

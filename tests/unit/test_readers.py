"""DICOM reading on small files written here (real files: test_dicom_readers.py)."""

import numpy as np
import pytest

from medweave.data.readers.dicom import read_frames, read_image
from medweave.errors import MedweaveError


def _write(path, pixels, photometric="MONOCHROME2", slope=1, intercept=0, with_pixels=True, **extra):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    if with_pixels:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        signed = pixels.dtype.kind == "i"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if pixels.ndim == 3:
            ds.NumberOfFrames = len(pixels)
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def test_dicom_rescale_applied(tmp_path):
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    _write(tmp_path / "a.dcm", pixels, slope=2, intercept=-1024)
    np.testing.assert_allclose(read_frames(tmp_path / "a.dcm")[0].pixels, pixels * 2.0 - 1024)


def test_dicom_signed_pixels_keep_their_sign(tmp_path):
    pixels = np.array([[-2000, -1], [0, 2047]], np.int16)
    _write(tmp_path / "s.dcm", pixels)
    np.testing.assert_array_equal(read_frames(tmp_path / "s.dcm")[0].pixels, pixels)


def test_dicom_monochrome1_inverted(tmp_path):
    pixels = np.array([[0, 4000], [1000, 2000]], np.uint16)
    _write(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    _write(tmp_path / "m2.dcm", pixels, photometric="MONOCHROME2")
    img1, img2 = read_image(tmp_path / "m1.dcm"), read_image(tmp_path / "m2.dcm")
    assert img1[0, 0] > img1[0, 1]  # MONOCHROME1: low stored value = dense = bright after reading
    np.testing.assert_allclose(img1, 1 - img2, atol=1e-6)


def test_dicom_window_first_of_several_values_is_used(tmp_path):
    pixels = np.tile(np.arange(0, 4000, 10, dtype=np.uint16), (4, 1))
    _write(tmp_path / "w.dcm", pixels, WindowCenter=[1000, 2000], WindowWidth=[1000, 4000])
    img = read_image(tmp_path / "w.dcm")
    value = pixels[0]
    assert img[0, value <= 500].max() == 0 and img[0, value >= 1500].min() == 1  # window 500..1500
    inside = (value > 520) & (value < 1480)
    np.testing.assert_allclose(img[0, inside], (value[inside] - 500) / 1000, atol=2e-3)


def test_dicom_without_window_uses_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path / "p.dcm", rng.integers(100, 3000, (64, 64)).astype(np.uint16))
    img = read_image(tmp_path / "p.dcm")
    assert 0.003 < (img == 0).mean() < 0.01 and 0.003 < (img == 1).mean() < 0.01


def test_multiframe_gives_its_middle_frame(tmp_path):
    frames = np.stack([np.full((4, 4), v, np.uint16) for v in (10, 20, 30)])
    frames[:, 0, 0] = 0
    _write(tmp_path / "mf.dcm", frames)
    assert len(read_frames(tmp_path / "mf.dcm")) == 3
    img = read_image(tmp_path / "mf.dcm", frame=None)
    assert img.shape == (4, 4)
    np.testing.assert_allclose(read_frames(tmp_path / "mf.dcm", index=1)[0].pixels[1, 1], 20)
    with pytest.raises(MedweaveError, match="mf.dcm: frame 5 requested; the file has 3"):
        read_image(tmp_path / "mf.dcm", frame=5)


def test_dicom_without_pixels_or_not_dicom(tmp_path):
    _write(tmp_path / "empty.dcm", None, with_pixels=False)
    with pytest.raises(MedweaveError, match="empty.dcm: DICOM file has no PixelData"):
        read_image(tmp_path / "empty.dcm")
    (tmp_path / "text.dcm").write_text("hello")
    with pytest.raises(MedweaveError, match="text.dcm: not a readable DICOM file"):
        read_image(tmp_path / "text.dcm")


def test_colour_dicom_is_refused_by_name(tmp_path):
    from pydicom.data import get_testdata_file

    with pytest.raises(
        MedweaveError, match=r"SC_rgb_rle\.dcm: PhotometricInterpretation is 'RGB'.*grayscale"
    ):
        read_image(get_testdata_file("SC_rgb_rle.dcm"))

import numpy as np
import pytest

from medweave.data.readers.dicom import read_dicom
from medweave.data.readers.vcf import read_dosages
from medweave.errors import MedweaveError

VCF = """##fileformat=VCFv4.2
##contig=<ID=chr2,length=100000>
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t11\t12\t13
chr2\t100\trs1\tA\tG\t.\tPASS\t.\tGT\t0|0\t0|1\t1|1
chr2\t200\t.\tC\tT,G\t.\tPASS\t.\tGT\t1/2\t./.\t0/2
chr2\t300\trs3\tG\tA\t.\tPASS\t.\tGT\t1|.\t0|0\t1|0
"""


def test_vcf_dosages_multiallelic_and_missing(tmp_path):
    path = tmp_path / "v.vcf"
    path.write_text(VCF)
    samples, ids, dosages = read_dosages(path)
    assert samples == ["11", "12", "13"]
    assert ids == ["rs1", "chr2:200:C:T,G", "rs3"]
    np.testing.assert_array_equal(dosages, [[0, 2, -1], [1, -1, 0], [2, 1, 1]])


def test_vcf_garbage_names_the_file(tmp_path):
    path = tmp_path / "broken.vcf.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(MedweaveError, match="broken.vcf.gz"):
        read_dosages(path)


def _write(path, pixels, photometric="MONOCHROME2", slope=1, intercept=0, with_pixels=True):
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
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_rescale_applied(tmp_path):
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    _write(tmp_path / "a.dcm", pixels, slope=2, intercept=-1024)
    np.testing.assert_allclose(read_dicom(tmp_path / "a.dcm")[0], pixels * 2.0 - 1024)


def test_dicom_monochrome1_inverted(tmp_path):
    pixels = np.array([[0, 4000], [1000, 2000]], np.uint16)
    _write(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    img = read_dicom(tmp_path / "m1.dcm")[0]
    assert img[0, 0] > img[0, 1]  # bright means dense after reading


def test_dicom_without_pixels_or_not_dicom(tmp_path):
    _write(tmp_path / "empty.dcm", None, with_pixels=False)
    with pytest.raises(MedweaveError, match="empty.dcm: DICOM file has no PixelData"):
        read_dicom(tmp_path / "empty.dcm")
    (tmp_path / "text.dcm").write_text("hello")
    with pytest.raises(MedweaveError, match="text.dcm"):
        read_dicom(tmp_path / "text.dcm")

"""CT-like chest volumes in Hounsfield units, written as NIfTI and as a DICOM series.

A body ellipsoid of soft tissue (about 40 HU) in air (-1000 HU), two lungs (about -850 HU), a
spine (about 700 HU), and a nodule in one lung whose radius and density grow with the structural
factor l, as the radiograph's opacity does. Arrays are [z, y, x]; z runs from feet to head.

The DICOM series is what a scanner exports: one CT Image Storage file per slice with
ImagePositionPatient, ImageOrientationPatient, SliceThickness and PixelSpacing, int16 pixels with
RescaleIntercept -1024, and file names that do not follow slice order (readers must sort by
position, not by name).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medweave.sandbox.latent import sigmoid

SPACING_MM = (5.0, 2.5, 2.5)  # z, y, x


def draw_volume(structural: float, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """int16 HU [z, y, x]."""
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    hu = np.full(shape, -1000.0)
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.5) / 0.35) ** 2 < 1
    hu[body] = 40.0
    for cx in (0.3, 0.7):
        lung = ((x - cx) / 0.15) ** 2 + ((y - 0.47) / 0.22) ** 2 + ((z - 0.55) / 0.5) ** 2 < 1
        hu[lung] = -850.0
    hu[((x - 0.5) / 0.05) ** 2 + ((y - 0.8) / 0.05) ** 2 < 1] = 700.0
    cx, cy, cz = (
        rng.choice([0.3, 0.7]) + rng.normal(0, 0.03),
        0.47 + rng.normal(0, 0.05),
        rng.uniform(0.3, 0.8),
    )
    radius = 0.02 + 0.08 * sigmoid(1.5 * structural)
    density = -850 + 900 * sigmoid(1.5 * structural)  # from ground glass to solid
    d2 = (
        (x - cx) ** 2
        + (y - cy) ** 2
        + ((z - cz) * shape[0] * SPACING_MM[0] / (shape[2] * SPACING_MM[2])) ** 2
    )
    nodule = np.exp(-d2 / (2 * radius**2))
    hu = hu + nodule * (density - hu) * (hu < -500)
    hu += rng.normal(0, 15, shape)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def write_nifti(path: Path, hu: np.ndarray, spacing=SPACING_MM) -> None:
    """NIfTI-1, gzipped; data stored [x, y, z]. The voxel axes run as in the DICOM series (x to the
    patient's left, y to posterior, z up: LPS); NIfTI's world is RAS, hence the negative x and y."""
    import nibabel as nib

    affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), affine)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    subject_id: int,
    study_time: np.datetime64,
    uid_seed: int,
    rng: np.random.Generator,
    spacing=SPACING_MM,
) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    when = np.datetime_as_string(study_time, unit="s").replace("-", "").replace(":", "")
    study = generate_uid(entropy_srcs=[str(uid_seed), "ct-study"])
    series = generate_uid(entropy_srcs=[str(uid_seed), "ct-series"])
    folder.mkdir(parents=True, exist_ok=True)
    names = rng.permutation(len(hu))  # file names deliberately out of slice order
    for k, plane in enumerate(hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(uid_seed), "ct", str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID = str(subject_id)
        ds.Modality = "CT"
        ds.BodyPartExamined = "CHEST"
        ds.StudyDate, ds.StudyTime = when[:8], when[9:15]
        ds.Manufacturer = "medweave-sandbox"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing[0])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceThickness = spacing[0]
        ds.SliceLocation = float(k * spacing[0])
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.PixelData = (plane.astype(np.int32) + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"{names[k]:04d}.dcm", enforce_file_format=True)

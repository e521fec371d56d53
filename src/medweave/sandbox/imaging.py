"""Chest-X-ray-like radiographs written as real DICOM (CR, 12 bits stored, MONOCHROME2).

Anatomy is a torso with two dark lung fields and a brighter mediastinum; a round opacity sits in
one lung with radius and contrast that grow with the structural factor l. Pixel data are uint16
with RescaleSlope/Intercept, so a reader that ignores them gets the scale wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medweave.sandbox.latent import sigmoid

PIXEL_SPACING_MM = 2.8


def draw_radiograph(structural: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 [size, size] attenuation-like image in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size] / size
    torso = (((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.5) ** 2) < 1
    img = 0.15 + 0.45 * torso
    for cx in (0.32, 0.68):
        lung = (((x - cx) / 0.14) ** 2 + ((y - 0.5) / 0.3) ** 2) < 1
        img = np.where(lung, img - 0.3, img)
    img += 0.2 * ((np.abs(x - 0.5) < 0.06) & (y > 0.25) & torso)
    img += 0.03 * np.sin(2 * np.pi * y * 9 + rng.uniform(0, 6)) * torso  # rib-like banding
    cx = rng.choice([0.32, 0.68]) + rng.normal(0, 0.03)
    cy = 0.5 + rng.normal(0, 0.08)
    radius = (2.0 + 14.0 * sigmoid(1.5 * structural)) / 128
    contrast = 0.05 + 0.35 * sigmoid(1.5 * structural)
    img += contrast * np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2)))
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def write_dicom(
    path: Path, image: np.ndarray, subject_id: int, study_time: np.datetime64, uid_seed: int
) -> None:
    """Write one CR image with the header fields a PACS export carries."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stored = np.round(image * 4000).astype(np.uint16)  # 12-bit values, intercept below
    when = np.datetime_as_string(study_time, unit="s").replace("-", "").replace(":", "")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(uid_seed), "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(uid_seed), "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(uid_seed), "series"])
    ds.PatientID = str(subject_id)
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyDate, ds.StudyTime = when[:8], when[9:15]
    ds.Manufacturer = "medweave-sandbox"
    ds.Rows, ds.Columns = image.shape
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "US"
    ds.WindowCenter, ds.WindowWidth = 976, 4000
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)

"""DICOM images through pydicom, in modality units (RescaleSlope/Intercept applied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medweave.errors import MedweaveError


def read_dicom(path: Path) -> np.ndarray:
    """A float32 [rows, cols] image; MONOCHROME1 is inverted so that bright means dense."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as err:
        raise MedweaveError(f"{path}: not a readable DICOM file ({err})") from None
    if "PixelData" not in ds:
        raise MedweaveError(f"{path}: DICOM file has no PixelData; expected an image")
    try:
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as err:  # decoders raise many types; the file is what matters to the user
        raise MedweaveError(f"{path}: pixel data cannot be decoded ({err})") from None
    if pixels.ndim != 2:
        raise MedweaveError(f"{path}: expected a single 2D frame, got shape {pixels.shape}")
    pixels = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
        getattr(ds, "RescaleIntercept", 0) or 0)
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    return pixels

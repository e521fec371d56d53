"""DICOM images through pydicom, in modality units (RescaleSlope/Intercept applied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medweave.errors import MedweaveError


def read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A float32 [rows, cols] image in modality units, and the (low, high) of the file's display
    window if it has one. MONOCHROME1 is inverted so that bright always means dense."""
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
        getattr(ds, "RescaleIntercept", 0) or 0
    )
    window = None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = (
            float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)
            for v in (ds.WindowCenter, ds.WindowWidth)
        )
        window = (center - width / 2, center + width / 2)
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        low, high = float(pixels.min()), float(pixels.max())
        pixels = low + high - pixels
        if window:
            window = (low + high - window[1], low + high - window[0])
    return pixels, window

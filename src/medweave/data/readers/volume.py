"""3D volumes: a DICOM series folder or a NIfTI file, as float32 [z, y, x] plus spacing in mm.

A series is ordered by each slice's position along the slice normal (ImagePositionPatient
projected on the cross product of ImageOrientationPatient), never by file name or InstanceNumber,
which scanners and exports do not keep in order. Pixel values get the modality LUT (rescale to HU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medweave.errors import MedweaveError


def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    raise MedweaveError(f"{path}: expected a DICOM series folder or a .nii/.nii.gz file")


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reoriented to the DICOM patient axes (x to the left, y to posterior, z up: LPS), so a volume
    reads the same from NIfTI as from its DICOM series."""
    import nibabel as nib
    from nibabel import orientations as o

    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises several types for damaged files
        raise MedweaveError(f"{path}: not a readable NIfTI volume ({err})") from None
    if data.ndim != 3:
        raise MedweaveError(f"{path}: expected a 3D volume, found shape {data.shape}")
    to_lps = o.ornt_transform(o.io_orientation(image.affine), o.axcodes2ornt(("L", "P", "S")))
    data = o.apply_orientation(data, to_lps)
    zooms = np.empty(3)
    zooms[to_lps[:, 0].astype(int)] = image.header.get_zooms()[:3]  # follow the axes' moves
    sx, sy, sz = (float(z) for z in zooms)
    return np.ascontiguousarray(data.transpose(2, 1, 0)), (sz, sy, sx)


def read_dicom_series(folder: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    slices = []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(file)
        except Exception as err:  # pydicom raises many types for damaged files
            raise MedweaveError(f"{file}: not a readable DICOM file ({err})") from None
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelData"):
            if tag not in ds:
                raise MedweaveError(f"{file}: slice has no {tag}; cannot place it in a volume")
        slices.append(ds)
    if len(slices) < 2:
        raise MedweaveError(f"{folder}: a series needs at least 2 slices, found {len(slices)}")
    orientation = np.array(slices[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    position = np.array([np.dot(normal, np.array(ds.ImagePositionPatient, float)) for ds in slices])
    order = np.argsort(position)
    gaps = np.diff(position[order])
    if np.any(gaps <= 1e-6):
        raise MedweaveError(f"{folder}: two slices share a position; is this more than one series?")
    if np.ptp(gaps) > 0.01 * gaps.mean():
        raise MedweaveError(f"{folder}: slices are unevenly spaced ({gaps.min():.3g}-{gaps.max():.3g} mm)")
    planes = [apply_modality_lut(slices[i].pixel_array, slices[i]).astype(np.float32) for i in order]
    row, col = (float(v) for v in slices[0].PixelSpacing)
    return np.stack(planes), (float(gaps.mean()), row, col)

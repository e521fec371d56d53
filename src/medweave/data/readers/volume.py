"""3D volumes: a DICOM series folder, a multi-frame DICOM file, or a NIfTI file, each as float32
[z, y, x] in modality units (HU for CT) plus its spacing (z, y, x) in mm.

Every source ends in the same orientation, the DICOM patient axes LPS (x to the patient's left,
y to posterior, z up), so a volume reads the same whether it came as a series or as NIfTI: each
reader builds the voxel-to-world affine and nibabel's orientation tools reorder and flip the axes.

A series is ordered by each slice's position along the slice normal (ImagePositionPatient
projected on the cross product of ImageOrientationPatient), never by file name or InstanceNumber,
which scanners and exports do not keep in order. A folder with slices of more than one series, two
slices at one position, slices of different size or orientation, or uneven gaps (a missing slice)
is refused: resampling over such a hole would invent anatomy. Pixel values get the modality LUT
(dicom.read_frames), colour and pixel-less files are refused there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medweave.data.readers import dicom
from medweave.errors import MedweaveError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
GAP_TOLERANCE = 0.01  # relative spread of slice gaps accepted as "even" (float noise in positions)


def is_nifti(path: Path | str) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if is_nifti(path) and path.is_file():
        return read_nifti(path)
    if path.is_file():
        return read_multiframe(path)
    raise MedweaveError(
        f"{path}: does not exist; expected a DICOM series folder, a multi-frame DICOM file or a "
        ".nii/.nii.gz file"
    )


def _to_lps(data_ijk: np.ndarray, affine_ras: np.ndarray, zooms) -> tuple[np.ndarray, tuple]:
    """Reorder/flip voxel axes (i, j, k) so they run along L, P, S; return [z, y, x] and spacing."""
    from nibabel import orientations as o

    to_lps = o.ornt_transform(o.io_orientation(affine_ras), o.axcodes2ornt(("L", "P", "S")))
    data = o.apply_orientation(data_ijk, to_lps)
    spacing = np.empty(3)
    spacing[to_lps[:, 0].astype(int)] = np.asarray(zooms, float)[:3]  # follow the axes' moves
    sx, sy, sz = (float(z) for z in spacing)
    return np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32), (sz, sy, sx)


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reoriented to LPS, so a volume reads the same from NIfTI as from its DICOM series."""
    image = _load_nifti(path)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:  # a truncated data block
        raise MedweaveError(f"{path}: NIfTI voxel data cannot be read ({err})") from None
    data = data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data
    if data.ndim != 3:
        raise MedweaveError(f"{path}: expected a 3D volume, found shape {data.shape}")
    return _to_lps(data, image.affine, image.header.get_zooms())


def _load_nifti(path: Path):
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for damaged files
        raise MedweaveError(f"{path}: not a readable NIfTI volume ({err})") from None
    shape = image.shape
    if len(shape) < 3 or (len(shape) == 4 and shape[3] != 1) or len(shape) > 4 or min(shape[:3]) < 2:
        raise MedweaveError(f"{path}: expected a 3D volume (at least 2 voxels per axis), found shape {shape}")
    return image


def _series_headers(folder: Path) -> list:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise MedweaveError(f"{folder}: series folder holds no files; expected DICOM slices")
    headers = [(file, dicom.read_header(file)) for file in files]
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise MedweaveError(
            f"{folder}: holds slices of {len(series)} series (SeriesInstanceUID); "
            "expected one series per folder"
        )
    return headers


def _series_geometry(folder: Path, headers: list):
    if len(headers) < 2:
        raise MedweaveError(f"{folder}: a series needs at least 2 slices, found {len(headers)}")
    for file, ds in headers:
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if tag not in ds:
                raise MedweaveError(f"{file}: slice has no {tag}; cannot place it in a volume")
        if dicom.n_frames(ds) > 1:
            raise MedweaveError(
                f"{file}: a multi-frame file inside a series folder; expected one slice per file"
            )
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        raise MedweaveError(f"{folder}: slices differ in size {sorted(sizes)}; expected one series")
    return _geometry(
        folder,
        [np.array(ds.ImagePositionPatient, float) for _, ds in headers],
        [np.array(ds.ImageOrientationPatient, float) for _, ds in headers],
        np.array(headers[0][1].PixelSpacing, float),
    )


def read_dicom_series(folder: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    folder = Path(folder)
    headers = _series_headers(folder)
    if len(headers) == 1 and dicom.n_frames(headers[0][1]) > 1:
        return read_multiframe(headers[0][0], headers[0][1])
    order, affine, zooms = _series_geometry(folder, headers)
    planes = [dicom.read_frames(headers[i][0], headers[i][1])[0].pixels for i in order]
    return _to_lps(np.stack(planes).transpose(2, 1, 0), affine, zooms)


def read_multiframe(path: Path, ds=None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """An enhanced CT/MR (or any multi-frame grayscale) file as a volume. Frame positions come from
    the per-frame functional groups when present; otherwise frames are taken in stored order at
    SpacingBetweenSlices (or SliceThickness) apart."""
    path = Path(path)
    ds = dicom.read_header(path) if ds is None else ds
    n = dicom.n_frames(ds)
    if n < 2:
        raise MedweaveError(
            f"{path}: a single 2D frame; a volume is a series folder, a NIfTI file or a multi-frame DICOM"
        )
    measures = "PixelMeasuresSequence"
    pixel_spacing = dicom.frame_value(ds, 0, measures, "PixelSpacing")
    if pixel_spacing is None:
        raise MedweaveError(f"{path}: no PixelSpacing (top level or Pixel Measures Sequence)")
    positions = [dicom.frame_value(ds, k, "PlanePositionSequence", "ImagePositionPatient") for k in range(n)]
    orientations = [
        dicom.frame_value(ds, k, "PlaneOrientationSequence", "ImageOrientationPatient") for k in range(n)
    ]
    if any(o is None for o in orientations):
        orientations = [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]] * n  # unknown: rows along x, columns along y
    offsets = ds.get("GridFrameOffsetVector")  # RT Dose: one position, frames at these offsets
    if offsets is not None and len(offsets) == n and positions[0] is not None:
        iop = np.array(orientations[0], float)
        normal = np.cross(iop[:3], iop[3:])
        positions = [np.array(positions[0], float) + float(d) * normal for d in offsets]
    if any(p is None for p in positions):
        gap = ds.get("SpacingBetweenSlices") or dicom.frame_value(ds, 0, measures, "SliceThickness")
        if not gap:
            raise MedweaveError(
                f"{path}: frames have no ImagePositionPatient and the file no SpacingBetweenSlices or "
                "SliceThickness; cannot tell how far apart they are"
            )
        iop = np.array(orientations[0], float)
        normal = np.cross(iop[:3], iop[3:])
        positions = [k * float(gap) * normal for k in range(n)]
    order, affine, zooms = _geometry(
        path,
        [np.array(p, float) for p in positions],
        [np.array(o, float) for o in orientations],
        np.array(pixel_spacing, float),
    )
    frames = dicom.read_frames(path, ds)
    planes = [frames[i].pixels for i in order]
    return _to_lps(np.stack(planes).transpose(2, 1, 0), affine, zooms)


def _geometry(source: Path, positions, orientations, pixel_spacing):
    """Slice order, the RAS voxel-to-world affine of the [col, row, slice] array, and its zooms.

    The DICOM world is LPS; nibabel's is RAS, hence the flip of x and y at the end."""
    iop = orientations[0]
    if any(not np.allclose(o, iop, atol=1e-3) for o in orientations):
        raise MedweaveError(f"{source}: slices have different ImageOrientationPatient; expected one stack")
    normal = np.cross(iop[:3], iop[3:])
    where = np.array([np.dot(normal, p) for p in positions])
    order = np.argsort(where, kind="stable")
    gaps = np.diff(where[order])
    if np.any(gaps < 1e-4):
        k = int(np.argmin(gaps))
        raise MedweaveError(
            f"{source}: two slices share a position ({where[order][k]:.4g} mm along the slice normal); "
            "expected one slice per position (is this more than one series?)"
        )
    if np.ptp(gaps) > GAP_TOLERANCE * gaps.mean():
        raise MedweaveError(
            f"{source}: slices are unevenly spaced ({gaps.min():.4g} to {gaps.max():.4g} mm apart); "
            "expected equal gaps (a slice is missing?)"
        )
    gap = float(gaps.mean())
    row_mm, col_mm = (float(v) for v in pixel_spacing)  # PixelSpacing: between rows, between columns
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_mm  # along a row: the column index grows
    lps[:3, 1] = iop[3:] * row_mm
    lps[:3, 2] = normal * gap
    lps[:3, 3] = positions[order[0]]
    return order, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, (col_mm, row_mm, gap)


def check_volume(path: Path) -> None:
    """Raise MedweaveError if ``path`` cannot be read as a volume; headers only (no pixel decoding),
    for medweave-validate."""
    path = Path(path)
    if is_nifti(path):
        _load_nifti(path)
        return
    if path.is_dir():
        headers = _series_headers(path)
        if len(headers) == 1 and dicom.n_frames(headers[0][1]) > 1:
            return
        _series_geometry(path, headers)
        return
    ds = dicom.read_header(path)
    if dicom.n_frames(ds) < 2:
        raise MedweaveError(
            f"{path}: a single 2D frame; a volume is a series folder, a NIfTI file or a multi-frame DICOM"
        )

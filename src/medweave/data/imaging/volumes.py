"""The volume modality in the prepared cache: each subject's latest CT/MR volume before prediction.

Which rows: imaging/index.parquet rows whose modality is in ``volume.modalities`` (default CT, MR)
and whose path is a DICOM series folder, a NIfTI file or a multi-frame DICOM file; the most
recent strictly before prediction_time (ties: the first in the index; the sandbox lists each CT
twice, as a series and as NIfTI, with one time). Later volumes are ignored, never an error.

What is cached (MONAI transforms on [1, z, y, x] tensors, after readers/volume.read_volume puts
every source in LPS orientation and modality units):

1. intensity -> [0, 1]: ``window`` per modality clips and scales (CT in HU, default -1000..1000:
   air to bone); a modality without a window (MR: arbitrary units) uses the volume's 0.5-99.5
   percentiles (ScaleIntensityRange / ScaleIntensityRangePercentiles, clip=True);
2. ``spacing`` [z, y, x] mm: resampled to it (Resize to the shape that spacing gives, trilinear,
   Gaussian anti-aliasing when shrinking), then centre-cropped or zero-padded (zero = the bottom
   of the window: air) to ``size`` (ResizeWithPadOrCrop), so one voxel is the same size in mm for
   every subject; with ``spacing: null`` the whole volume is resized to ``size`` instead;
3. stored as float16 [items, 1, D, H, W] in the volume store, ``<cache_dir>/volume/<key>/``
   (volume.npy, memory-mapped by the datamodule): one item per index row any prediction time
   could choose, shared by every task over this imaging folder and these options; a task's cache
   links each sample to its item (data/store.py). Subjects without a volume read zeros.

Unreadable volumes stop preparation naming the index row and the file (every stored row is read,
not only this task's choices); data.lenient=true skips them with a counted warning (a subject
whose latest volume it is is then without a volume).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medweave.data import contract as c
from medweave.data import store
from medweave.data.bad_input import BadInput
from medweave.data.imaging.index import ImagingIndex, choose, report_skipped, store_folder, write_store
from medweave.data.readers import dicom, volume
from medweave.errors import MedweaveError

DEFAULTS = {
    "modalities": list(c.VOLUME_MODALITIES),  # index modality values read as volumes
    "spacing": [5.0, 2.5, 2.5],  # z, y, x mm (the sandbox's); null: resize the whole volume to size
    "size": [32, 64, 64],  # z, y, x voxels the encoder sees
    "window": {"CT": [-1000.0, 1000.0]},  # modality -> [low, high] clipped to [0, 1]; others: percentiles
}
PERCENTILES = (0.5, 99.5)


def volume_options(options: dict | None) -> dict:
    """data.volume merged over DEFAULTS, checked as a whole (every fault at once)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULTS))
    merged = {**DEFAULTS, **options}
    faults = [f"unknown key(s) {unknown}; valid: {sorted(DEFAULTS)}"] if unknown else []
    size = merged["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 3 and all(int(v) >= 1 for v in size)):
        faults.append(f"size={size}: expected [z, y, x] positive voxel counts")
    spacing = merged["spacing"]
    if spacing is not None and not (
        isinstance(spacing, (list, tuple)) and len(spacing) == 3 and all(float(v) > 0 for v in spacing)
    ):
        faults.append(f"spacing={spacing}: expected [z, y, x] positive mm, or null")
    for name, window in (merged["window"] or {}).items():
        if not (
            isinstance(window, (list, tuple)) and len(window) == 2 and float(window[0]) < float(window[1])
        ):
            faults.append(f"window.{name}={window}: expected [low, high] with low < high")
    if faults:
        raise MedweaveError("data.volume: " + "; ".join(faults))
    return merged


def _is_volume_row(index: ImagingIndex, i: int, modalities) -> bool:
    if index.modality[i] not in modalities:
        return False
    file = index.absolute(i)
    if file.is_dir() or volume.is_nifti(file.name):
        return True
    try:  # a DICOM file: a volume only if it has several frames (single slices are 2D images)
        import pydicom

        return dicom.n_frames(pydicom.dcmread(file, stop_before_pixels=True)) > 1
    except Exception:  # unreadable: let the reader report it when the row is chosen
        return True


def resample(data: np.ndarray, spacing, modality: str | None, options: dict) -> np.ndarray:
    """float32 [z, y, x] in modality units -> float32 [1, *size] in [0, 1] (steps in the module doc)."""
    import torch
    from monai.transforms import (
        Resize,
        ResizeWithPadOrCrop,
        ScaleIntensityRange,
        ScaleIntensityRangePercentiles,
    )

    image = torch.from_numpy(np.ascontiguousarray(data, np.float32))[None]
    window = (options["window"] or {}).get(modality)
    if window:
        scale = ScaleIntensityRange(float(window[0]), float(window[1]), 0.0, 1.0, clip=True)
    else:
        scale = ScaleIntensityRangePercentiles(*PERCENTILES, 0.0, 1.0, clip=True)
    image = scale(image)
    size = [int(v) for v in options["size"]]
    if options["spacing"] is None:
        image = Resize(size, mode="trilinear", anti_aliasing=True)(image)
    else:
        shape = [
            max(int(round(n * s / t)), 1)
            for n, s, t in zip(data.shape, spacing, options["spacing"], strict=True)
        ]
        image = Resize(shape, mode="trilinear", anti_aliasing=True)(image)
        image = ResizeWithPadOrCrop(size, mode="constant")(image)
    return np.asarray(torch.as_tensor(image).clamp(0, 1), np.float32)


STORE = "volume"  # under cache_dir


def prepare_volumes(root, index: ImagingIndex, subject_ids, pred_time, cfg, out) -> np.ndarray:
    """Link each sample's latest volume before prediction time from the shared volume store
    (built once per imaging folder and data.volume options); returns who has one."""
    options = volume_options(cfg.volume)
    folder = store_folder(out, STORE, root, cfg, volume=options)
    info, built = store.build_once(folder, lambda tmp: _build_store(index, options, cfg.lenient, tmp))
    report_skipped(info, built, "volume")
    rows = choose(index, folder, subject_ids, pred_time)
    store.link(out, STORE, folder, rows, fill=0)
    return rows >= 0


def _build_store(index: ImagingIndex, options: dict, lenient: bool, tmp: Path) -> dict:
    """Every volume any task could choose, resampled: float16 [items, 1, D, H, W] in volume.npy."""
    modalities = set(options["modalities"])
    candidates = np.array([_is_volume_row(index, i, modalities) for i in range(len(index.path))], bool)
    size = tuple(int(v) for v in options["size"])

    def read(i: int) -> np.ndarray:
        data, spacing = volume.read_volume(index.absolute(i))
        return resample(data, spacing, index.modality[i], options)

    return write_store(tmp, STORE, index, candidates, (1, *size), read, BadInput(lenient), "vol")

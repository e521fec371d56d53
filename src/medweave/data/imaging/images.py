"""The image modality in the prepared cache: each subject's latest 2D image before prediction.

Which rows: imaging/index.parquet rows that name one file (a DICOM; NIfTI files and series folders
are volumes, data/volumes.py) whose modality is null or one of data.image_modalities (CR, DX); the
most recent one strictly before the subject's prediction_time (ties: the first in the index).
Later images are ignored, never an error. A multi-frame file gives its middle frame.

What is cached: readers/dicom.read_image's display-ready image (modality LUT, the file's window or
VOI LUT, MONOCHROME1 inverted: bright = dense) in [0, 1], resized to image_size x image_size with
torch's antialiased bilinear interpolation (the aspect ratio is not kept), as float16
[N, 1, S, S]; subjects without an image hold zeros and present=False.

A file that cannot be read (missing, not DICOM, no pixels, colour, undecodable) stops preparation
naming the index row and the file; with data.lenient=true it is skipped with a counted warning and
the subject is treated as without an image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.readers import dicom, meds
from medweave.data.readers.volume import is_nifti
from medweave.errors import MedweaveError


class ImagingIndex:
    """imaging/index.parquet as arrays; rows with an unknown modality are reported (and, lenient,
    left out) once here."""

    def __init__(self, root: Path, bad: BadInput):
        self.root = root
        self.file = root / c.IMAGING_INDEX
        table = meds.read_imaging_index(root)
        self.subject_id = table.column("subject_id").to_numpy(zero_copy_only=False)
        self.time = meds.microseconds(table.column("time"))
        self.path = table.column("path").to_pylist()
        n = table.num_rows
        if "modality" in table.column_names:
            modality = table.column("modality").cast(pa.string())
            self.modality = np.array(modality.to_pylist(), dtype=object)
            unknown = pc.invert(pc.is_in(modality, pa.array(c.IMAGING_MODALITIES))).fill_null(False)
            unknown = unknown.to_numpy(zero_copy_only=False)
        else:
            self.modality = np.full(n, None, dtype=object)
            unknown = np.zeros(n, bool)
        empty = np.array([not p for p in self.path], bool)
        self.usable = ~unknown & ~empty
        if empty.any():
            bad.fault(
                self.file,
                f"row {int(np.flatnonzero(empty)[0])}, field path",
                "is null or empty; expected a file or folder under imaging/",
                count=int(empty.sum()),
            )
        if unknown.any():
            first = int(np.flatnonzero(unknown)[0])
            bad.fault(
                self.file,
                f"row {first}, field modality",
                f"'{self.modality[first]}' is not an imaging modality medweave reads; expected one of "
                f"{list(c.IMAGING_MODALITIES)} or null",
                count=int(unknown.sum()),
            )

    def absolute(self, i: int) -> Path:
        return self.root / c.IMAGING_DIR / self.path[i]

    def latest(self, candidates: np.ndarray, subject_ids: np.ndarray, pred_time: np.ndarray) -> dict:
        """Cohort row -> index row of the subject's most recent candidate before prediction_time."""
        sid, time = self.subject_id, self.time
        row = np.clip(np.searchsorted(subject_ids, sid), 0, len(subject_ids) - 1)
        ok = candidates & self.usable & (subject_ids[row] == sid) & (time < pred_time[row])
        latest: dict[int, int] = {}
        for i in np.flatnonzero(ok):
            if row[i] not in latest or time[i] > time[latest[row[i]]]:
                latest[int(row[i])] = int(i)
        return latest


def is_image_row(index: ImagingIndex, i: int, modalities) -> bool:
    """A single file whose modality is one of data.image_modalities, or not given."""
    name = index.path[i] or ""
    if index.modality[i] is not None and index.modality[i] not in modalities:
        return False
    return not is_nifti(name) and not index.absolute(i).is_dir()


def prepare_images(root, subject_ids, pred_time, cfg, out) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    bad = BadInput(cfg.lenient)
    index = ImagingIndex(root, bad)
    candidates = np.array(
        [is_image_row(index, i, cfg.image_modalities) for i in range(len(index.path))], bool
    )
    latest = index.latest(candidates, subject_ids, pred_time)
    n, s = len(subject_ids), cfg.image_size
    images = np.lib.format.open_memmap(out / "image.npy", mode="w+", dtype=np.float16, shape=(n, 1, s, s))
    images[:] = 0
    present = np.zeros(n, bool)
    for r, i in tqdm(sorted(latest.items()), desc="reading images", unit="img", leave=False):
        file = index.absolute(i)
        try:
            if not file.is_file():
                raise MedweaveError(f"{file}: does not exist; expected a DICOM file under {c.IMAGING_DIR}/")
            pixels = dicom.read_image(file)
        except MedweaveError as err:
            bad.fault(index.file, f"row {i}, field path", f"{err}")
            continue
        tensor = torch.from_numpy(np.ascontiguousarray(pixels))[None, None]
        resized = F.interpolate(tensor, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        images[r, 0] = resized[0, 0].clamp(0, 1).numpy()
        present[r] = True
    images.flush()
    return present

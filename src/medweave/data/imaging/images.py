"""The image modality in the prepared cache: each subject's latest 2D image before prediction.

Which rows: imaging/index.parquet rows that name one file (a DICOM; NIfTI files and series folders
are volumes, volumes.py) whose modality is null or one of data.image_modalities (CR, DX); the
most recent one strictly before the subject's prediction_time (ties: the first in the index).
Later images are ignored, never an error. A multi-frame file gives its middle frame.

What is stored: readers/dicom.read_image's display-ready image (modality LUT, the file's window or
VOI LUT, MONOCHROME1 inverted: bright = dense) in [0, 1], resized to image_size x image_size with
torch's antialiased bilinear interpolation (the aspect ratio is not kept), as float16
[items, 1, S, S] in the image store, ``<cache_dir>/image/<key>/``: one item per index row any
prediction time could choose, shared by every task over this imaging folder (data/store.py); a
task's cache links each sample to its item. Subjects without an image read zeros, present=False.

A file that cannot be read (missing, not DICOM, no pixels, colour, undecodable) stops preparation
naming the index row and the file (every stored row is read, not only this task's choices); with
data.lenient=true it is skipped with a counted warning and a subject whose latest image it is is
treated as without an image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medweave.data import contract as c
from medweave.data import store
from medweave.data.bad_input import BadInput
from medweave.data.imaging.index import ImagingIndex, choose, report_skipped, store_folder, write_store
from medweave.data.readers import dicom
from medweave.data.readers.volume import is_nifti
from medweave.errors import MedweaveError


def is_image_row(index: ImagingIndex, i: int, modalities) -> bool:
    """A single file whose modality is one of data.image_modalities, or not given."""
    name = index.path[i] or ""
    if index.modality[i] is not None and index.modality[i] not in modalities:
        return False
    return not is_nifti(name) and not index.absolute(i).is_dir()


STORE = "image"  # under cache_dir


def prepare_images(root, index: ImagingIndex, subject_ids, pred_time, cfg, out) -> np.ndarray:
    """Link each sample's latest image before prediction time from the shared image store
    (built once per imaging folder, image size and modalities); returns who has one."""
    folder = store_folder(out, STORE, root, cfg, size=cfg.image_size, modalities=list(cfg.image_modalities))
    info, built = store.build_once(folder, lambda tmp: _build_store(index, cfg, tmp))
    report_skipped(info, built, "image")
    rows = choose(index, folder, subject_ids, pred_time)
    store.link(out, STORE, folder, rows, fill=0)
    return rows >= 0


def _build_store(index: ImagingIndex, cfg, tmp: Path) -> dict:
    """Every image any task could choose, resized: float16 [items, 1, S, S] in image.npy."""
    import torch
    import torch.nn.functional as F

    candidates = np.array(
        [is_image_row(index, i, cfg.image_modalities) for i in range(len(index.path))], bool
    )
    s = cfg.image_size

    def read(i: int) -> np.ndarray:
        file = index.absolute(i)
        if not file.is_file():
            raise MedweaveError(f"{file}: does not exist; expected a DICOM file under {c.IMAGING_DIR}/")
        tensor = torch.from_numpy(np.ascontiguousarray(dicom.read_image(file)))[None, None]
        resized = F.interpolate(tensor, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return resized[0].clamp(0, 1).numpy()

    return write_store(tmp, STORE, index, candidates, (1, s, s), read, BadInput(cfg.lenient), "img")

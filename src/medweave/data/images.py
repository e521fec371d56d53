"""The image modality in the prepared cache: each subject's latest radiograph before prediction."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from medweave.data import contract as c
from medweave.data.readers import dicom, meds


def prepare_images(root, subject_ids, pred_time, cfg, out) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    index = meds.read_imaging_index(root)
    if "modality" in index.column_names:  # the image modality is 2D radiography; CT is not (yet)
        modality = index.column("modality")
        index = index.filter(
            pc.or_(pc.is_in(modality, pa.array(c.RADIOGRAPH_MODALITIES)), modality.is_null())
        )
    sid = index.column("subject_id").to_numpy()
    time = meds.microseconds(index.column("time"))
    paths = index.column("path").to_pylist()
    row = np.clip(np.searchsorted(subject_ids, sid), 0, len(subject_ids) - 1)
    ok = (subject_ids[row] == sid) & (time < pred_time[row])
    latest: dict[int, int] = {}  # row -> index entry of the most recent image before prediction
    for i in np.flatnonzero(ok):
        if row[i] not in latest or time[i] > time[latest[row[i]]]:
            latest[row[i]] = i
    n, s = len(subject_ids), cfg.image_size
    images = np.lib.format.open_memmap(out / "image.npy", mode="w+", dtype=np.float16, shape=(n, 1, s, s))
    images[:] = 0
    for r, i in tqdm(sorted(latest.items()), desc="reading images", unit="img", leave=False):
        pixels, window = dicom.read_dicom(root / c.IMAGING_DIR / paths[i])
        lo, hi = window or tuple(np.percentile(pixels, [0.5, 99.5]))
        scaled = np.clip((pixels - lo) / max(hi - lo, 1e-6), 0, 1)
        tensor = torch.from_numpy(scaled)[None, None]
        images[r, 0] = F.interpolate(tensor, size=(s, s), mode="area")[0, 0].numpy()
    images.flush()
    present = np.zeros(n, bool)
    present[list(latest)] = True
    return present

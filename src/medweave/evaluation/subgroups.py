"""Who each test subject is, in coarse groups only: sex, age band at prediction time, and which
modalities they had. Read from the cohort (MEDS birth and sex events); no birth date or subject
ID leaves this module, only group names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.readers import meds


def subject_groups(
    root: Path,
    task: str,
    subject_ids: np.ndarray,
    sex_codes: dict[str, list[str]],
    age_bands: list[int],
    labels_dir: str | None = None,
    label_rows: str = "error",
    lenient: bool = False,
) -> dict[str, np.ndarray]:
    """{"sex": [...], "age_band": [...]} aligned with ``subject_ids``; "unknown" where the cohort
    does not say. ``age_bands`` are lower edges in years, e.g. [18, 40, 60, 75]. The label
    options are the data config's, so the prediction times are those the model saw."""
    labels = meds.read_labels(
        root, task, values=(), labels_dir=labels_dir, label_rows=label_rows, bad=BadInput(lenient)
    )
    pred = dict(
        zip(
            labels.column("subject_id").to_pylist(), labels.column("prediction_time").to_pylist(), strict=True
        )
    )
    wanted = [c.BIRTH_CODE] + [code for codes in sex_codes.values() for code in codes]
    sex_of = {code: name for name, codes in sex_codes.items() for code in codes}
    sex, birth = {}, {}
    for table in _demographic_events(root, subject_ids, wanted, lenient):
        for sid, time, code in zip(
            *(table.column(k).to_pylist() for k in ("subject_id", "time", "code")), strict=True
        ):
            if code == c.BIRTH_CODE:
                birth[sid] = time
            else:
                sex[sid] = sex_of[code]
    edges = sorted(age_bands)
    names = [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"]
    ages = []
    for sid in subject_ids.tolist():
        if sid in birth and sid in pred and birth[sid] is not None:
            years = (pred[sid] - birth[sid]).days / 365.25
            k = np.searchsorted(edges, years, side="right") - 1
            ages.append(names[k] if k >= 0 else f"<{edges[0]}")
        else:
            ages.append("unknown")
    return {
        "sex": np.array([sex.get(sid, "unknown") for sid in subject_ids.tolist()], dtype=object),
        "age_band": np.array(ages, dtype=object),
    }


def _demographic_events(root: Path, subject_ids: np.ndarray, codes: list[str], lenient: bool):
    """The birth and sex events of these subjects, a shard at a time: only those few rows are
    kept between shards, so a national cohort's events are never held at once. The reader
    conforms times (units, zones) as training saw them."""
    bad = BadInput(lenient)
    for path in meds.event_files(root):
        table = meds.read_event_shard(path, False, bad, subject_ids)
        if table is not None:
            yield table.filter(pc.is_in(table.column("code"), pa.array(codes))).select(
                ["subject_id", "time", "code"]
            )


def availability_pattern(present: dict[str, np.ndarray]) -> np.ndarray:
    """Per subject, the modalities they had, e.g. "ehr_codes+image" (or "none")."""
    names = list(present)
    stacked = np.stack([present[m] for m in names], axis=1)
    return np.array(
        ["+".join(n for n, p in zip(names, row, strict=True) if p) or "none" for row in stacked], dtype=object
    )

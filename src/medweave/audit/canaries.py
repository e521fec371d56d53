"""Canary exposure (Carlini et al. 2019, "The Secret Sharer"), for a model over EHR codes.

A canary is a synthetic subject whose record is a random sequence of codes (its secret) with a
planted label. ``planted`` canaries go into the training split (``copies`` subjects each); as
many ``control`` canaries are drawn the same way and never trained on. Each canary is ranked
among ``candidates`` sequences: itself and candidates - 1 other random sequences drawn from the
same codes, on the same frame (the same days before the same prediction time, the same static
events, the same label). The rank is by the model's loss on the planted label (1 = lowest), and

    exposure = log2(candidates) - log2(rank)

so a canary the model has not memorised (its rank uniform) averages about log2(e) = 1.44 bits,
and a memorised one sits near the ceiling log2(candidates). The controls measure that baseline
on the same model.

Everything is drawn from ``seed``: the same cohort and settings give the same canaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medweave.audit.cohorts import label_file
from medweave.data import contract as c
from medweave.errors import MedweaveError

DAY_US = 86_400_000_000


@dataclass
class CanaryPlan:
    """Rows to add to a cohort: the planted copies (train) and every candidate (scored only)."""

    planted_events: pa.Table
    planted_labels: pa.Table
    planted_ids: np.ndarray  # [n_planted * copies]
    candidate_events: pa.Table
    candidate_labels: pa.Table
    candidate_ids: np.ndarray  # [n_canaries, candidates]; column 0: the canary's own sequence
    is_planted: np.ndarray  # [n_canaries] bool: planted canaries first, then controls


def exposure(losses: np.ndarray) -> np.ndarray:
    """Exposure in bits of each row's first entry among the row (lower loss ranks first; ties
    count one half). ``losses`` [n_canaries, candidates]."""
    losses = np.asarray(losses, float)
    if losses.ndim != 2 or losses.shape[1] < 2:
        raise MedweaveError(f"losses {losses.shape}: expected [canaries, candidates >= 2]")
    true, others = losses[:, :1], losses[:, 1:]
    rank = 1 + (others < true).sum(1) + 0.5 * (others == true).sum(1)
    return np.log2(losses.shape[1]) - np.log2(rank)


def code_pool(root, train_ids: np.ndarray, min_subjects: int) -> list[str]:
    """Codes with a time (no static or birth codes, no notes) that at least ``min_subjects``
    training subjects have: in the vocabulary whatever the preparation's threshold below it."""
    table = pq.read_table(root / c.EVENTS_DIR, columns=["subject_id", "time", "code"])
    keep = pc.and_(
        pc.is_valid(table.column("time")),
        pc.is_in(table.column("subject_id"), pa.array(np.asarray(train_ids, np.int64))),
    )
    table = table.filter(keep).select(["subject_id", "code"])
    table = (
        table.group_by(["subject_id", "code"])
        .aggregate([])
        .group_by("code")
        .aggregate([("subject_id", "count")])
    )
    codes = table.column("code").to_pylist()
    counts = table.column("subject_id_count").to_numpy()
    pool = sorted(
        code
        for code, n in zip(codes, counts, strict=True)
        if n >= min_subjects and code != c.BIRTH_CODE and not code.startswith(c.NOTE_PREFIX)
    )
    return pool


def plan_canaries(
    root,
    task: str,
    train_ids: np.ndarray,
    n: int,
    codes: int,
    candidates: int,
    copies: int,
    label: bool,
    min_code_subjects: int,
    history_days: int,
    seed: int,
) -> CanaryPlan:
    """Draw ``n`` planted and ``n`` control canaries for ``root``'s ``task`` (see module doc)."""
    if n < 1 or codes < 1 or candidates < 2 or copies < 1:
        raise MedweaveError(
            f"audit.canaries: n={n}, codes={codes}, candidates={candidates}, copies={copies}; "
            "expected n >= 1, codes >= 1, candidates >= 2, copies >= 1"
        )
    labels_path = label_file(root, task)
    pool = code_pool(root, train_ids, min_code_subjects)
    if len(pool) < codes:
        raise MedweaveError(
            f"audit.canaries.codes={codes}: only {len(pool)} codes are held by at least "
            f"{min_code_subjects} training subjects; lower audit.canaries.codes or min_code_subjects"
        )
    rng = np.random.default_rng([seed, 7])
    labels = pq.read_table(labels_path, columns=["subject_id", "prediction_time"])
    labels = labels.filter(pc.is_in(labels.column("subject_id"), pa.array(np.asarray(train_ids, np.int64))))
    donors = rng.choice(len(labels), size=2 * n, replace=len(labels) < 2 * n)
    events = pq.read_table(root / c.EVENTS_DIR, columns=["subject_id", "time", "code"])
    static = events.filter(
        pc.or_(pc.is_null(events.column("time")), pc.equal(events.column("code"), c.BIRTH_CODE))
    )
    static_of = {}
    for sid, time, code in zip(
        *(static.column(k).to_pylist() for k in ("subject_id", "time", "code")), strict=True
    ):
        static_of.setdefault(sid, []).append((time, code))

    existing = pq.read_table(root / c.SUBJECT_SPLITS, columns=["subject_id"]).column("subject_id").to_numpy()
    next_id = int(existing.max()) + 1
    pools = np.array(pool, dtype=object)
    ev = {"subject_id": [], "time": [], "code": []}
    lab = {"subject_id": [], "prediction_time": [], "boolean_value": []}
    planted_ev = {k: [] for k in ev}
    planted_lab = {k: [] for k in lab}
    candidate_ids = np.zeros((2 * n, candidates), np.int64)
    planted_ids = []
    for i in range(2 * n):
        donor = int(donors[i])
        sid = labels.column("subject_id")[donor].as_py()
        when = labels.column("prediction_time")[donor].as_py()
        when_us = int(pa.scalar(when, pa.timestamp("us")).value)
        days = np.sort(rng.uniform(1, history_days, codes))[::-1]
        times = [when_us - int(d * DAY_US) for d in days]
        sequences = [rng.choice(pools, size=codes, replace=False).tolist() for _ in range(candidates)]

        frame = (static_of.get(sid, []), times, when_us, bool(label))
        if i < n:
            for _ in range(copies):
                _add_subject(planted_ev, planted_lab, next_id, sequences[0], *frame)
                planted_ids.append(next_id)
                next_id += 1
        for j, sequence in enumerate(sequences):
            _add_subject(ev, lab, next_id, sequence, *frame)
            candidate_ids[i, j] = next_id
            next_id += 1

    def events_table(d):
        return pa.table(
            {
                "subject_id": pa.array(d["subject_id"], pa.int64()),
                "time": pa.array(d["time"], pa.timestamp("us")),
                "code": pa.array(d["code"], pa.string()),
            }
        )

    def labels_table(d):
        return pa.table(
            {
                "subject_id": pa.array(d["subject_id"], pa.int64()),
                "prediction_time": pa.array(d["prediction_time"], pa.timestamp("us")),
                "boolean_value": pa.array(d["boolean_value"], pa.bool_()),
            }
        )

    return CanaryPlan(
        planted_events=events_table(planted_ev),
        planted_labels=labels_table(planted_lab),
        planted_ids=np.asarray(planted_ids, np.int64),
        candidate_events=events_table(ev),
        candidate_labels=labels_table(lab),
        candidate_ids=candidate_ids,
        is_planted=np.arange(2 * n) < n,
    )


def _add_subject(events: dict, labels: dict, subject: int, sequence, static, times, when_us, label) -> None:
    """One canary or candidate: the donor's static events, the sequence at ``times``, the label."""
    for time, code in [*static, *zip(times, sequence, strict=True)]:
        events["subject_id"].append(subject)
        events["time"].append(time)
        events["code"].append(code)
    labels["subject_id"].append(subject)
    labels["prediction_time"].append(when_us)
    labels["boolean_value"].append(label)

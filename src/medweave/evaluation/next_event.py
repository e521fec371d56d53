"""Many diseases at once from a next-event pretrained model, as Delphi-2M is judged: the risk of
every diagnosis code within a horizon for each evaluated subject, with no task-specific model,
and a per-code AUROC table over the codes with enough incident cases.

Prediction times: each evaluated subject's earliest ``prediction_time`` in the label files
(``labels``: one file instead), the time that pretraining's leakage rule (pretrain.eval_subjects=
cut, data/ehr/pretrain.py) cut that subject's history at. The model's inputs are read by the
token store's own code with that cutoff (build_unit, then TokenStore.batch on the last window),
so they are exactly what pretraining saw of these subjects; the observed past and future of each
code come from the cohort's MEDS shards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.ehr import pretrain as store
from medweave.data.ehr.events import NO_TIME, read_unit
from medweave.data.ehr.shards import DONE, plan_units
from medweave.data.readers import meds
from medweave.errors import MedweaveError
from medweave.evaluation import resampled
from medweave.evaluation.bootstrap import with_ci

log = logging.getLogger("medweave")

FOLDER = "next_event_eval"  # under cache_dir: the evaluation's token-store shards
US_PER_DAY = store.US_PER_DAY
DAYS_PER_YEAR = 365.25


# ----------------------------------------------------------------------------- the formula
def code_risks(
    log_rate: torch.Tensor, logits: torch.Tensor, horizon_years: float, code_ids=None
) -> torch.Tensor:
    """[n, V] risk of each code within ``horizon_years``: 1 - exp(-rate p(c) H); only the columns
    ``code_ids`` when given. p is the softmax over the whole vocabulary (a softmax over a subset of
    codes would give p(c | the next event is one of them), inflating every risk by a factor that
    differs between subjects).

    The next-event head says the next event comes after an exponential wait of rate ``rate``
    (per year) and is code c with probability p(c): competing exponentials, code c's own hazard
    rate * p(c). Read as the risk of c within H, this assumes (as Delphi-2M does) that the hazard
    stays what it was after the last event before the prediction time for the whole horizon
    (events in between would change it, and the model is not re-run after them) and that c's
    process is not stopped by the other codes' events (no competing censoring). By the
    exponential's lack of memory, the wait from the last event to the prediction time does not
    change the risk after it.
    """
    rate = torch.exp(log_rate.float().clamp(-20, 20)).unsqueeze(-1)
    p = torch.softmax(logits.float(), -1)
    if code_ids is not None:
        p = p[:, torch.as_tensor(code_ids)]
    return -torch.expm1(-rate * p * horizon_years)


# ---------------------------------------------------------------------- checkpoint and model
@dataclass
class NextEventModel:
    backbone: torch.nn.Module
    objective: torch.nn.Module
    vocab: dict
    width: int
    extras: dict


def load_model(path: str) -> NextEventModel:
    """The backbone and NextEvent heads of a medweave-pretrain next_event checkpoint."""
    from medweave.models.pretrain.load import read_checkpoint
    from medweave.models.pretrain.objectives import NextEvent

    extras = read_checkpoint(path)
    if extras["objective"] != "next_event":
        raise MedweaveError(
            f"{path}: pretrained with objective {extras['objective']}, which has no waiting-time head "
            "and so no hazard: per-code risks and simulated futures need a next_event checkpoint "
            "(medweave-pretrain pretrain/objective=next_event)"
        )
    backbone = extras["module"]
    objective = NextEvent(backbone.dim, backbone.vocab_size)
    objective.load_state_dict(extras["objective_state"])
    width = int(extras["config"]["data"]["max_events"])
    return NextEventModel(backbone.eval(), objective.eval(), extras["vocab"], width, extras)


def last_hidden(model: NextEventModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, dim] hidden state after each row's last token (rows right-padded)."""
    h = model.backbone(batch)
    last = ((batch["codes"] != 0).sum(1) - 1).clamp(min=0)
    return h[torch.arange(len(h)), last]


def heads(model: NextEventModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_rate [B], logits [B, V]) of the next event after each row's last token."""
    h = last_hidden(model, batch)
    return model.objective.wait_head(h).squeeze(-1), model.objective.code_head(h)


# ------------------------------------------------------------------------ the evaluated cohort
@dataclass
class Cohort:
    """Subjects with their prediction time, what the model reads, and each code's past and future.

    ``inputs``: the last window before the prediction time, as TokenStore.batch gives it;
    ``last_time``: the last timed event before it (us; NO_TIME if none); ``age_days`` at the
    prediction time (NaN without a birth event); ``first_after`` {code: (subject index, days after
    the prediction time of the first event in (t, t + horizon])}; ``prior`` {code: subject indices
    with the code at or before t}.
    """

    subject_id: np.ndarray
    prediction_time: np.ndarray
    inputs: dict[str, np.ndarray]
    last_time: np.ndarray
    age_days: np.ndarray
    first_after: dict[str, tuple[np.ndarray, np.ndarray]]
    prior: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.subject_id)

    def incident(self, code: str, horizon_days: float) -> tuple[np.ndarray, np.ndarray]:
        """(eligible [n] bool: no ``code`` at or before t, event [n] bool: first in (t, t + h])."""
        eligible = np.ones(len(self), bool)
        eligible[self.prior.get(code, np.zeros(0, np.int64))] = False
        event = np.zeros(len(self), bool)
        rows, days = self.first_after.get(code, (np.zeros(0, np.int64), np.zeros(0)))
        event[rows[days <= horizon_days]] = True
        return eligible, event


def prediction_times(root: Path, labels: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted subject ids, earliest prediction time in us) over all label files, or one."""
    if labels is None:
        return store.earliest_prediction_times(root)
    path = c.label_path(root, labels)
    if not path.is_file():
        raise MedweaveError(f"evaluation.next_event.labels={labels}: no label file {path}")
    table = pq.read_table(path, columns=["subject_id", "prediction_time"])
    ids, times = table.column("subject_id").to_numpy(), meds.microseconds(table.column("prediction_time"))
    order = np.lexsort((times, ids))
    ids, times = ids[order], times[order]
    first = np.r_[True, ids[1:] != ids[:-1]] if len(ids) else np.zeros(0, bool)
    return ids[first], times[first]


def choose_subjects(
    root: Path, split: str, labels: str | None, max_subjects: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(subject ids, prediction times) of up to ``max_subjects`` of ``split``'s labelled subjects,
    a seeded random subset, in id order."""
    splits = meds.read_splits(root)
    in_split = np.asarray(splits.table.column("split").to_pylist(), dtype=object) == split
    wanted = np.sort(splits.table.column("subject_id").to_numpy()[in_split])
    ids, times = prediction_times(root, labels)
    keep = np.isin(ids, wanted)
    ids, times = ids[keep], times[keep]
    if not len(ids):
        raise MedweaveError(
            f"cohort '{root}': no {split} subject has a prediction_time in "
            f"{'labels/' + labels if labels else 'any label file under labels/'}"
        )
    if max_subjects and len(ids) > max_subjects:
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), max_subjects, replace=False))
        ids, times = ids[pick], times[pick]
    return ids, times


def build_history(root: Path, cache_dir: Path, ids: np.ndarray, times: np.ndarray) -> list[Path]:
    """Token-store shards holding only these subjects' events strictly before their time (the
    store's leakage rule with ``times`` as cutoffs; everyone else excluded), reused while the
    inputs stay the same."""
    splits = meds.read_splits(root)
    everyone = np.unique(
        np.concatenate([splits.table.column("subject_id").to_numpy(), np.asarray(splits.unused, np.int64)])
    )
    cutoff = np.full(len(everyone), store.EXCLUDED, np.int64)
    cutoff[np.searchsorted(everyone, ids)] = times
    cutoffs = store.Cutoffs(everyone, cutoff, np.zeros(len(everyone), bool))
    folder = Path(cache_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    units = plan_units(root)
    folders = [folder / store.unit_key(root, files, cutoffs, False) for files in units]
    for files, out in tqdm(
        list(zip(units, folders, strict=True)), desc="history before prediction time", unit="shard"
    ):
        if not (out / DONE).is_file():
            store.build_unit(root, files, cutoffs, False, out)
    return folders


def last_windows(folders: list[Path], vocab: dict, width: int) -> tuple[np.ndarray, dict]:
    """(subject ids, TokenStore.batch of each subject's last window of ``width`` tokens): its
    static events and its latest timed events, as pretraining's windows are made."""
    tokens = store.TokenStore(folders, vocab, width)
    rows = []
    for s, f in enumerate(tokens.folders):
        if (geometry := store.shard_windows(f, width)) is None:
            continue
        timed, room, ids = geometry
        start = np.maximum(timed - room, 0)
        rows.append(np.stack([np.full(len(ids), s), np.arange(len(ids)), start, ids], 1))
    samples = np.concatenate(rows) if rows else np.zeros((0, 4), np.int64)
    samples = samples[np.argsort(samples[:, 3], kind="stable")]
    return samples[:, 3], tokens.batch(samples)


def code_events(
    root: Path, ids: np.ndarray, times: np.ndarray, prefix: str, horizon_days: float
) -> tuple[dict, dict, np.ndarray]:
    """From the MEDS shards: (first_after, prior, birth us) of Cohort, for ``prefix`` codes."""
    bad = BadInput(False)
    first_after: dict[str, list] = {}
    prior: dict[str, list] = {}
    birth = np.full(len(ids), NO_TIME, np.int64)
    for files in tqdm(plan_units(root), desc="observed diagnoses", unit="shard"):
        table = read_unit(files, False, bad, ids)
        if table is None or not table.num_rows:
            continue
        time = table.column("time").cast(pa.int64()).fill_null(NO_TIME).to_numpy()
        row = np.searchsorted(ids, table.column("subject_id").to_numpy())
        is_birth = pc.equal(table.column("code"), c.BIRTH_CODE).to_numpy(zero_copy_only=False)
        is_birth &= time != NO_TIME
        np.minimum.at(birth, row[is_birth], time[is_birth])
        wanted = pc.starts_with(table.column("code"), prefix).to_numpy(zero_copy_only=False)
        wanted &= time != NO_TIME
        sel = np.flatnonzero(wanted)
        codes = np.asarray(table.column("code").take(pa.array(sel)).to_pylist(), dtype=object)
        row, days = row[sel], (time[sel] - times[row[sel]]) / US_PER_DAY
        names, code = np.unique(codes, return_inverse=True) if len(codes) else (np.zeros(0), sel)
        before, after = days <= 0, (days > 0) & (days <= horizon_days)
        for part, into, firsts in ((before, prior, False), (after, first_after, True)):
            k, r, d = code[part], row[part], days[part]
            order = np.lexsort((d, r, k))
            k, r, d = k[order], r[order], d[order]
            first = np.r_[True, (k[1:] != k[:-1]) | (r[1:] != r[:-1])] if len(k) else np.zeros(0, bool)
            k, r, d = k[first], r[first], d[first]
            bounds = np.searchsorted(k, np.arange(len(names) + 1))
            for j in np.flatnonzero(np.diff(bounds)):
                lo, hi = bounds[j], bounds[j + 1]
                into.setdefault(str(names[j]), []).append((r[lo:hi], d[lo:hi]) if firsts else r[lo:hi])
    prior_out = {k: np.unique(np.concatenate(v)) for k, v in prior.items()}
    after_out = {
        k: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v]))
        for k, v in first_after.items()
    }
    return after_out, prior_out, birth


def read_cohort(
    root: Path,
    cache_dir: Path,
    ids: np.ndarray,
    times: np.ndarray,
    vocab: dict,
    width: int,
    prefix: str,
    horizon_days: float,
    query: str | None = None,
) -> Cohort:
    """The Cohort of these subjects; those with no event before their time are left out (the
    model has nothing to read). ``query``: a code the model then reads at each prediction time
    (``with_index_event``)."""
    with_history, inputs = last_windows(build_history(root, cache_dir, ids, times), vocab, width)
    keep = np.isin(ids, with_history)
    if not keep.any():
        raise MedweaveError(
            f"next-event evaluation: none of the {len(ids)} subject(s) chosen has an event before "
            "its prediction time; nothing for the model to read (check the split and the label files)"
        )
    if not keep.all():
        log.info(
            "next-event evaluation: %d subject(s) with no event before prediction time left out",
            (~keep).sum(),
        )
    ids, times = ids[keep], times[keep]
    order = np.searchsorted(with_history, ids)
    inputs = {k: v[order] for k, v in inputs.items()}
    timed = np.where(inputs["time"] == NO_TIME, np.iinfo(np.int64).min, inputs["time"])
    last_time = np.where(timed.max(1) == np.iinfo(np.int64).min, NO_TIME, timed.max(1))
    seen = observed_cohort(root, ids, times, prefix, horizon_days)
    if query is not None:
        if query not in vocab["codes"]:
            raise MedweaveError(
                f"evaluation.next_event.query={query!r} is not in the checkpoint's vocabulary "
                f"({len(vocab['codes'])} codes); pass a code pretraining saw, or query=null"
            )
        code_id = vocab["codes"].index(query) + store.MASK + 1
        inputs = with_index_event(inputs, code_id, times, last_time, seen.age_days)
        last_time = times.copy()
    return Cohort(ids, times, inputs, last_time, seen.age_days, seen.first_after, seen.prior)


def with_index_event(
    inputs: dict[str, np.ndarray],
    code_id: int,
    times: np.ndarray,
    last_time: np.ndarray,
    age_days: np.ndarray,
) -> dict[str, np.ndarray]:
    """``inputs`` with one more event after each row's last: ``code_id`` at the prediction time
    (the task's index event, which the leakage cut leaves out, as the task cache does:
    models/pretrain/load.py's ``query``), its age the subject's then, its delta the days since
    the last timed event (0 without one). One column is added, so no row loses an event."""
    n = len(times)
    pad = {"codes": 0, "bins": 0, "age": np.nan, "delta": np.nan, "time": NO_TIME}
    out = {k: np.concatenate([v, np.full((n, 1), pad[k], v.dtype)], 1) for k, v in inputs.items()}
    rows, at = np.arange(n), (inputs["codes"] != 0).sum(1)
    out["codes"][rows, at], out["bins"][rows, at], out["time"][rows, at] = code_id, 0, times
    out["age"][rows, at] = age_days
    out["delta"][rows, at] = np.where(last_time == NO_TIME, 0.0, (times - last_time) / US_PER_DAY)
    return out


def observed_cohort(
    root: Path, ids: np.ndarray, times: np.ndarray, prefix: str, horizon_days: float
) -> Cohort:
    """A Cohort of what the MEDS shards hold (no model inputs): age, and each code's past and future."""
    first_after, prior, birth = code_events(root, ids, times, prefix, horizon_days)
    age = np.where(birth == NO_TIME, np.nan, (times - birth) / US_PER_DAY)
    return Cohort(ids, times, {}, np.zeros(0, np.int64), age, first_after, prior)


def model_batch(inputs: dict[str, np.ndarray], rows: slice | np.ndarray) -> dict[str, torch.Tensor]:
    """The backbone's inputs of some rows, trimmed to their longest row."""
    codes = inputs["codes"][rows]
    width = max(int((codes != 0).sum(1).max(initial=1)), 1)
    return {
        k: torch.from_numpy(np.ascontiguousarray(inputs[k][rows][:, :width]))
        for k in ("codes", "bins", "age", "delta")
    }


def predict_risks(
    model: NextEventModel, cohort: Cohort, code_ids: np.ndarray, horizon_years: float, batch_size: int
) -> np.ndarray:
    """[n, len(code_ids)] risk of each code within the horizon (code_risks), batched, no grad."""
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(cohort), batch_size), desc="per-code risks", unit="batch"):
            log_rate, logits = heads(model, model_batch(cohort.inputs, slice(start, start + batch_size)))
            out.append(code_risks(log_rate, logits, horizon_years, code_ids).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(code_ids)))


# --------------------------------------------------------------------------- the AUROC table
def auroc_table(
    risks: np.ndarray,
    eligible: np.ndarray,
    events: np.ndarray,
    names: list[str],
    min_cases: int,
    n_boot: int = 0,
    seed: int = 0,
    min_cell: int = 0,
) -> list[dict]:
    """One row per code with at least ``min_cases`` incident cases among its eligible subjects
    (and a non-case), and at least ``min_cell`` cases and non-cases (disclosure control: no row
    reveals a count of fewer people): {code, eligible, cases, auroc, ci_low, ci_high} (no CI: NaN when
    ``n_boot`` is 0), by AUROC, highest first. ``risks``, ``eligible``, ``events``: [n, K]."""
    from sklearn.metrics import roc_auc_score

    rows = []
    for k, name in enumerate(names):
        sel = eligible[:, k]
        y, p = events[sel, k], risks[sel, k]
        cases = int(y.sum())
        if cases < max(min_cases, min_cell) or len(y) - cases < max(min_cell, 1):
            continue
        if n_boot:
            entry = with_ci(
                lambda r, y=y, p=p: {"auroc": roc_auc_score(y[r], p[r])},
                len(y),
                n_boot,
                seed,
                weighted_fn=lambda W, y=y, p=p: {"auroc": resampled.auroc(y, p, W)},
            )["auroc"]
        else:
            entry = {"value": float(roc_auc_score(y, p)), "ci_low": np.nan, "ci_high": np.nan}
        rows.append(
            {
                "code": name,
                "eligible": int(len(y)),
                "cases": cases,
                "auroc": entry["value"],
                "ci_low": entry["ci_low"],
                "ci_high": entry["ci_high"],
            }
        )
    return sorted(rows, key=lambda r: -r["auroc"])


def incidence_matrices(
    cohort: Cohort, names: list[str], horizon_days: float
) -> tuple[np.ndarray, np.ndarray]:
    """([n, K] eligible, [n, K] incident event within the horizon) for these codes."""
    pairs = [cohort.incident(name, horizon_days) for name in names]
    if not pairs:
        return np.zeros((len(cohort), 0), bool), np.zeros((len(cohort), 0), bool)
    return np.stack([e for e, _ in pairs], 1), np.stack([y for _, y in pairs], 1)


def label_check(
    root: Path,
    cohort: Cohort,
    risks: np.ndarray,
    names: list[str],
    pairs: dict,
    split: str,
    min_cell: int = 0,
) -> list[dict]:
    """For each (label task, code) of ``pairs`` whose label file exists: the AUROC of the code's
    risk against that task's labels on the same subjects, beside the sandbox's oracle. With fewer
    than ``min_cell`` cases or non-cases the counts show as "<min_cell" and there is no AUROC."""
    from sklearn.metrics import roc_auc_score

    from medweave.evaluation.run import sandbox_oracle

    out = []
    for task, code in (pairs or {}).items():
        path = c.label_path(root, task)
        if code not in names or not path.is_file():
            continue
        table = pq.read_table(path, columns=["subject_id", "prediction_time", "boolean_value"])
        sid = table.column("subject_id").to_numpy()
        when = meds.microseconds(table.column("prediction_time"))
        value = table.column("boolean_value").to_numpy(zero_copy_only=False)
        at = np.clip(np.searchsorted(cohort.subject_id, sid), 0, len(cohort) - 1)
        match = (cohort.subject_id[at] == sid) & (cohort.prediction_time[at] == when) & (value == value)
        y, p = value[match].astype(bool), risks[at[match], names.index(code)]
        entry = {"task": task, "code": code, "subjects": int(match.sum()), "cases": int(y.sum())}
        entry["auroc"] = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
        if min(y.sum(), len(y) - y.sum()) < min_cell:
            entry.update(subjects=f"<{min_cell}", cases=f"<{min_cell}", auroc=float("nan"))
        oracle = sandbox_oracle(root, task, split)
        if oracle:
            entry["oracle_true_risk"] = oracle.get("true risk")
            entry["oracle_ehr"] = oracle.get(
                "given ehr_codes alone", oracle.get("given the modalities each subject has")
            )
        out.append(entry)
    return out

"""Registry mode: comorbidity trajectories, conditions that raise the hazard of others, with age.

With ``comorbidity=true`` (the default of ``registry_history=true``) the cardiometabolic conditions
of ``registry.CHRONIC`` are no longer drawn independently given m. Each has a hazard in age a

    h(a) = lam exp(b m + g a) prod_{parents p with onset before a} HR_p

(Gompertz: it grows by a factor exp(g) a year of age), with ``lam`` set so that a person with m = 0
and no parent condition has it by 70 with probability ``by_70``. Onsets are drawn in the order of
``TRAJECTORIES`` (parents first: a DAG) by inverting the cumulative hazard, which is piecewise
Gompertz between the parents' onsets, for a whole block of people at once. What else follows:

- every condition (these and the others of ``registry.CHRONIC``) records its diagnosis code at
  onset (or at the record's start if it began before), so the EHR shows which conditions a person
  has at any time exactly: ``diagnosed_<code>`` in the ground truth, at the prediction time;
- labs follow the states (``LAB_DRIFT``): HbA1c jumps and then rises after E11, creatinine after N18;
- a task disease may weigh the conditions diagnosed by its prediction time (``OUTCOME_LOG_ODDS``:
  I21 weighs E11, I10, E78 and N18). The oracle (oracle.py) knows these terms: ``diagnosed_*`` are
  causes the EHR shows, and they depend only on m, age and chance, never on the causes the EHR
  does not show (genetics, s, l), so the EHR-only ceiling stays exact.

Randomness: one Exp(1) draw per person and condition from ``SeedSequence(seed, spawn_key=(block, 4))``,
a stream apart, so the rest of the block (genetics, outcomes' draws) is what it was.
"""

from __future__ import annotations

import numpy as np

SECOND_PER_YEAR = 365.25 * 86400
NEVER = np.iinfo(np.int64).max // 2
LAST_AGE = 150.0  # an onset later than this is never

# code, P(by 70 | m = 0, no parent), log-HR per unit of m, age slope g (log-HR a year), parents: HR
TRAJECTORIES = [
    ("ICD10//E66", 0.15, 0.9, 0.03, {}),
    ("ICD10//E78", 0.20, 1.0, 0.06, {}),
    ("ICD10//J44", 0.05, 0.4, 0.08, {}),
    ("ICD10//I10", 0.22, 1.0, 0.06, {"ICD10//E66": 2.0}),
    ("ICD10//E11", 0.08, 1.2, 0.05, {"ICD10//E66": 3.0}),
    ("ICD10//N18", 0.03, 0.6, 0.08, {"ICD10//E11": 3.0, "ICD10//I10": 2.0}),
    ("ICD10//I48", 0.04, 0.4, 0.09, {"ICD10//I10": 2.0}),
    ("ICD10//I50", 0.02, 0.5, 0.09, {"ICD10//I10": 2.0, "ICD10//E11": 2.0, "ICD10//I48": 3.0}),
]
# A task disease's extra log-odds per condition diagnosed before its prediction time, by outcome code.
OUTCOME_LOG_ODDS = {
    "ICD10//I21": {"ICD10//E11": 0.5, "ICD10//I10": 0.4, "ICD10//E78": 0.3, "ICD10//N18": 0.4}
}
# condition, lab, shift at onset, then per year since onset, for at most this many years
LAB_DRIFT = [
    ("ICD10//E11", "NPU//NPU27300", 8.0, 1.0, 10.0),  # HbA1c, mmol/mol
    ("ICD10//N18", "NPU//NPU18016", 20.0, 5.0, 15.0),  # creatinine, umol/L
]


def factor(code: str) -> str:
    """The ground-truth column (and oracle cause) of a condition diagnosed by the prediction time."""
    return "diagnosed_" + code.split("//")[1]


DIAGNOSED = tuple(factor(row[0]) for row in TRAJECTORIES)


def stream(seed: int, block: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, 4)))


def _clock(age, g):
    """The baseline cumulative hazard's clock: integral of exp(g s) ds from 0 to ``age``."""
    return np.expm1(g * age) / g


def draw_onset_ages(rng: np.random.Generator, metabolic: np.ndarray) -> np.ndarray:
    """Onset ages [n, len(TRAJECTORIES)] in years (inf: never), parents before children."""
    n, columns = len(metabolic), [row[0] for row in TRAJECTORIES]
    target = rng.exponential(1.0, (n, len(TRAJECTORIES)))
    ages = np.full((n, len(TRAJECTORIES)), np.inf)
    for j, (_, by_70, per_m, g, parents) in enumerate(TRAJECTORIES):
        lam = -np.log1p(-by_70) / _clock(70.0, g)
        # the parents' onsets cut life into segments of constant multiplier, in order of onset
        parent_age = (
            np.stack([ages[:, columns.index(p)] for p in parents], 1) if parents else np.zeros((n, 0))
        )
        parent_hr = np.broadcast_to(np.array(list(parents.values()), float), parent_age.shape)
        order = np.argsort(parent_age, 1)
        cut = np.minimum(np.take_along_axis(parent_age, order, 1), LAST_AGE)
        multiplier = np.cumprod(np.c_[np.ones(n), np.take_along_axis(parent_hr, order, 1)], 1)
        u = _clock(np.c_[np.zeros(n), cut], g)  # each segment's start on the clock
        total = np.cumsum(multiplier[:, :-1] * np.diff(u, axis=1), 1)  # by each cut
        need = target[:, j] / (lam * np.exp(per_m * metabolic))
        k = (total <= need[:, None]).sum(1)  # the segment where the cumulative hazard reaches it
        before = np.c_[np.zeros(n), total][np.arange(n), k]
        at = u[np.arange(n), k] + (need - before) / multiplier[np.arange(n), k]
        age = np.log1p(g * at) / g
        ages[:, j] = np.where(age < LAST_AGE, age, np.inf)
    return ages


def onsets(rng: np.random.Generator, birth: np.ndarray, metabolic: np.ndarray) -> dict[str, np.ndarray]:
    """Onset times (int64 seconds, or NEVER) of each condition in TRAJECTORIES, by code."""
    ages = draw_onset_ages(rng, metabolic)
    seconds = np.where(np.isfinite(ages), ages, 0.0) * SECOND_PER_YEAR
    times = np.where(np.isfinite(ages), birth[:, None] + seconds.astype(np.int64), NEVER)
    return {row[0]: times[:, j] for j, row in enumerate(TRAJECTORIES)}


def outcome_weights(code: str) -> dict[str, float]:
    """A task disease's weights on the ``diagnosed_*`` causes (empty for most)."""
    return {factor(c): w for c, w in OUTCOME_LOG_ODDS.get(code, {}).items()}


def hazard_ratios(root, adjust_for_m: bool = True) -> dict[tuple[str, str], dict[str, float]]:
    """Each DAG edge's hazard ratio as set (1 without comorbidity) and as recovered from the events
    of a written registry cohort: a Poisson regression of each child's first diagnosis on
    person-time split by year of age (log-hazard linear in age, as Gompertz), with the parents'
    diagnoses so far as exposures and, if ``adjust_for_m``, the metabolic state from the ground
    truth (a confounder of every edge). Time at risk runs from the record's start (1977 or birth)
    to the child's first code, the record's end or death; a first code at the record's start
    began before it, and that person is left out."""
    import json
    from pathlib import Path

    import polars as pl
    from sklearn.linear_model import PoissonRegressor

    root = Path(root)
    meta = json.loads((root / "metadata/dataset.json").read_text())["medweave"]
    registry_start = np.datetime64(meta["registry_history"]["start"], "s").astype(np.int64)
    dag = meta["registry_history"].get("comorbidity", False)  # False: no edge, every ratio 1
    cutoff = np.datetime64(next(t["follow_up_end"] for t in meta["tasks"].values() if "follow_up_end" in t))
    codes = [row[0] for row in TRAJECTORIES]
    ends = ["MEDS_BIRTH", "MEDS_DEATH", "STATUS//LOST_TO_FOLLOW_UP"]
    ev = pl.scan_parquet(root / "data" / "*.parquet").filter(pl.col("code").is_in(codes + ends))
    first = ev.group_by("subject_id", "code").agg(pl.col("time").min()).collect()
    wide = first.pivot(on="code", index="subject_id", values="time").sort("subject_id")
    truth = pl.read_parquet(root / "ground_truth/risk.parquet", columns=["subject_id", "metabolic"])
    wide = wide.join(truth, on="subject_id", how="left")

    def seconds(code, missing):
        if code not in wide.columns:
            return np.full(wide.height, missing, np.int64)
        col = wide[code].dt.epoch("s").to_numpy()
        return np.where(np.isnan(col.astype(float)), missing, col).astype(np.int64)

    cutoff_s = int(cutoff.astype("datetime64[s]").astype(np.int64))
    birth = seconds("MEDS_BIRTH", 0)
    start = np.maximum(birth, registry_start)
    end = np.minimum(seconds("MEDS_DEATH", cutoff_s), seconds("STATUS//LOST_TO_FOLLOW_UP", cutoff_s))
    seen = {code: seconds(code, NEVER) for code in codes}
    m = wide["metabolic"].to_numpy()
    out = {}
    for child, _, _, _, parents in TRAJECTORIES:
        if not parents:
            continue
        at_risk = seen[child] > start
        stop = np.minimum(seen[child], end)
        years = np.ceil(np.maximum(stop - start, 0) / SECOND_PER_YEAR).astype(np.int64) * at_risk
        who = np.repeat(np.arange(len(start)), years)
        k = np.arange(len(who)) - np.repeat(np.cumsum(years) - years, years)
        t0 = start[who] + (k * SECOND_PER_YEAR).astype(np.int64)
        t1 = np.minimum(t0 + int(SECOND_PER_YEAR), stop[who])
        mid = (t0 + t1) // 2
        time = (t1 - t0) / SECOND_PER_YEAR
        event = (t1 == seen[child][who]).astype(float)
        exposed = np.stack([seen[p][who] < mid for p in parents], 1).astype(float)
        age = np.floor((mid - birth[who]) / SECOND_PER_YEAR)
        columns = [age / 10] + ([np.round(m[who] * 4) / 4] if adjust_for_m else []) + list(exposed.T)
        x = np.stack(columns, 1)
        cells, inverse = np.unique(x, axis=0, return_inverse=True)  # sum person-time per cell
        inverse = inverse.ravel()
        pt = np.bincount(inverse, weights=time)
        cases = np.bincount(inverse, weights=event)
        keep = pt > 0
        model = PoissonRegressor(alpha=0.0, max_iter=1000, tol=1e-8)
        model.fit(cells[keep], cases[keep] / pt[keep], sample_weight=pt[keep])
        for i, (parent, hr) in enumerate(parents.items()):
            recovered = float(np.exp(model.coef_[len(columns) - len(parents) + i]))
            out[(parent, child)] = {
                "set": hr if dag else 1.0,
                "recovered": round(recovered, 3),
                "cases": int(cases.sum()),
            }
    return out

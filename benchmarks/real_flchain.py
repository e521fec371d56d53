"""Real data, neural arm against the tabular baselines: scikit-survival's ``flchain``.

flchain (Dispenzieri et al. 2012, Mayo Clinic; 7,874 residents of Olmsted County aged 50+) ships
inside the scikit-survival wheel, so nothing is downloaded at run time and nothing is committed.
This script turns it into a MEDS cohort and runs, on the same split::

    medweave-train experiment=quickstart data.modalities=[ehr_codes]   (the from-scratch EHR model)
    medweave-train baseline=linear                                     (logistic regression)
    medweave-train baseline=gbm                                        (XGBoost on counts)

The cohort, per person: MEDS_BIRTH (age at sampling, drawn within the year of age), sex as a
static event, the serum sample's labs (kappa and lambda free light chains, creatinine) at the
sampling date, MGUS as a diagnosis that day, the FLC decile group as a code; prediction time is
the day after sampling; labels ``death_<N>y`` (death within N years; subjects censored earlier
are left out, as a binary label must) and ``death_survival`` (days to death or last contact).
The ``chapter`` column (cause of death) is never read: it would leak the outcome.

    python benchmarks/real_flchain.py --out /tmp/flchain            # cohort + the three arms
    python benchmarks/real_flchain.py --out /tmp/flchain --only-cohort
    python benchmarks/real_flchain.py --out /tmp/flchain --arm "quickstart:experiment=quickstart ..."
    python benchmarks/real_flchain.py --out /tmp/flchain --ablation age --ablation age+linear_time

Results go to benchmarks/results/<stamp>-real_flchain.jsonl (one line per arm: AUROC with its
bootstrap CI, wall and CPU seconds, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DAY = timedelta(days=1)

ARMS = {
    "neural (quickstart, ehr_codes)": ["experiment=quickstart", "data.modalities=[ehr_codes]"],
    "logistic regression (baseline=linear)": ["baseline=linear"],
    "GBM (baseline=gbm)": ["baseline=gbm"],
}
# --ablation: the from-scratch EHR model's inputs and training, one change at a time. Every arm
# names each setting, so the table reads the same whatever the defaults are now.
_QUICK = ["experiment=quickstart", "data.modalities=[ehr_codes]"]
_E = "model.encoders.ehr_codes."


def _neural(linear_time: bool, age: bool, *more: str) -> list[str]:
    return [*_QUICK, f"{_E}linear_time={str(linear_time).lower()}", f"{_E}age={str(age).lower()}", *more]


ABLATION = {
    "old-default": _neural(False, False),
    "age": _neural(False, True),
    "age+linear_time": _neural(True, True),
    "age+linear_time+lr2e-3": _neural(True, True, "model.optimizer.lr=0.002"),
    "linear_time+lr2e-3": _neural(True, False, "model.optimizer.lr=0.002"),
}


def write_cohort(out: Path, years: int, seed: int = 0) -> dict:
    """The MEDS cohort of flchain under ``out`` (replaced); returns counts for the record."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sksurv.datasets import load_flchain

    from medweave.data import contract as c
    from medweave.importers.cohort_writer import CohortWriter, ImportOptions

    x, y = load_flchain()
    rng = np.random.default_rng(seed)
    n = len(x)
    options = ImportOptions(overwrite=True, name="flchain", id_salt="flchain-public-data")
    rows, labels = [], []
    day_of_year = rng.integers(0, 365, n)
    age_days = rng.integers(0, 365, n)  # age is given in whole years: a day within that year
    with CohortWriter(out, options, "scikit-survival flchain") as writer:
        for i, (_, person) in enumerate(x.iterrows()):
            sid = writer.subject_id(f"flchain-{i}")
            sampled = datetime(int(person["sample.yr"]), 1, 1) + int(day_of_year[i]) * DAY
            born = sampled - timedelta(days=float(person["age"]) * 365.25 + int(age_days[i]))
            rows.append((sid, born, c.BIRTH_CODE, None, None, None))
            rows.append((sid, None, f"SEX//{person['sex']}", None, None, None))
            for lab, unit in (("kappa", "mg/L"), ("lambda", "mg/L"), ("creatinine", "mg/dL")):
                value = person[lab]
                if value == value:  # NaN: not measured
                    rows.append((sid, sampled, f"LAB//{lab}", float(value), None, unit))
            rows.append((sid, sampled, f"FLC_GROUP//{int(person['flc.grp'])}", None, None, None))
            if person["mgus"] == "yes":
                rows.append((sid, sampled, "DIAG//MGUS", None, None, None))
            labels.append((sid, sampled + DAY, bool(y["death"][i]), float(y["futime"][i]) - 1.0))
        writer.write_rows(rows)
        writer.finish({"source": "scikit-survival flchain (public)"})
    sid, pred, death, days = (np.array(v) for v in zip(*labels, strict=True))
    days = np.maximum(days, 0.0)
    horizon = years * 365.25
    known = death & (days <= horizon) | (days > horizon)  # censored before the horizon: no label
    (out / c.LABELS_DIR).mkdir(exist_ok=True)

    def write(task: str, keep: np.ndarray, values: dict) -> None:
        table = pa.table(
            {
                "subject_id": pa.array(sid[keep], pa.int64()),
                "prediction_time": pa.array(list(pred[keep]), pa.timestamp("us")),
                **{k: pa.array(v[keep]) for k, v in values.items()},
            }
        )
        full = pa.table(
            {
                f.name: table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type)
                for f in c.LABEL_SCHEMA
            },
            schema=c.LABEL_SCHEMA,
        )
        pq.write_table(full, out / c.LABELS_DIR / f"{task}.parquet")

    write(f"death_{years}y", known, {"boolean_value": death & (days <= horizon)})
    write(
        "death_survival",
        np.ones(n, bool),
        {"boolean_value": death, "float_value": days.astype(np.float32)},
    )
    positives = int((death & (days <= horizon))[known].sum())
    return {"subjects": n, "labelled": int(known.sum()), "positives": positives, "events": len(rows)}


def reference_logistic(cohort: Path, years: int) -> dict:
    """Held-out AUROC of a logistic regression on flchain's own columns, read from the source
    frame, not through medweave: a check on the baseline arms, and how much age alone carries."""
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sksurv.datasets import load_flchain

    from medweave.data import contract as c
    from medweave.importers.cohort_writer import hashed_subject_id

    x, _ = load_flchain()
    labels = pq.read_table(cohort / c.LABELS_DIR / f"death_{years}y.parquet").to_pandas()
    splits = pq.read_table(cohort / c.SUBJECT_SPLITS).to_pandas().set_index("subject_id")["split"]
    sid = np.array([hashed_subject_id(f"flchain-{i}", "flchain-public-data") for i in range(len(x))])
    frame = x.assign(subject_id=sid).merge(labels[["subject_id", "boolean_value"]], on="subject_id")
    frame["split"] = frame["subject_id"].map(splits)
    cols = {"age": frame["age"], "male": (frame["sex"] == "M").astype(float)}
    cols["mgus"] = (frame["mgus"] == "yes").astype(float)
    for lab in ("kappa", "lambda", "creatinine"):
        cols[lab] = np.log(frame[lab].astype(float))
        cols[f"{lab}_missing"] = cols[lab].isna().astype(float)
    table = np.column_stack([v.to_numpy(float) for v in cols.values()])
    train = (frame["split"] == c.TRAIN_SPLIT).to_numpy()
    table = np.where(np.isnan(table), np.nanmean(table[train], 0), table)
    sd = table[train].std(0)
    table = (table - table[train].mean(0)) / np.where(sd > 0, sd, 1.0)
    held = (frame["split"] == c.HELD_OUT_SPLIT).to_numpy()
    y = frame["boolean_value"].to_numpy(bool)
    out = {}
    for name, use in (("age only", [0]), ("age and sex", [0, 1]), ("all columns", list(range(len(cols))))):
        model = LogisticRegression(max_iter=1000).fit(table[train][:, use], y[train])
        out[name] = round(float(roc_auc_score(y[held], model.predict_proba(table[held][:, use])[:, 1])), 4)
    return out


def run_arm(name: str, overrides: list[str], cohort: Path, work: Path, task: str) -> dict:
    """One medweave-train run; its held-out figures from evaluation.json."""
    run_dir = work / name.split(" ")[0].replace("(", "")
    exe = Path(sys.executable).with_name("medweave-train")
    cmd = [
        str(exe),
        f"data.root={cohort}",
        f"task.name={task}",
        "task.type=binary",
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={work / 'logs'}",
        f"paths.cache_dir={work / 'cache'}",
        "logger=csv",
        "evaluation.attribution=false",
        *overrides,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    auroc = summary["overall"]["auroc"]
    return {
        "arm": name,
        "command": "medweave-train " + " ".join(a for a in cmd[1:] if not a.startswith(("hydra.", "paths."))),
        "n_held_out": summary["n"],
        "events_held_out": summary["events"],
        "auroc": round(auroc["value"], 4),
        "auroc_ci": [round(auroc["ci_low"], 4), round(auroc["ci_high"], 4)],
        "auprc": round(summary["overall"]["auprc"]["value"], 4),
        "wall_s": round(wall, 1),
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        "load_avg_1min": round(load, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (cohort, runs); not committed")
    parser.add_argument("--years", type=int, default=5, help="death within this many years")
    parser.add_argument("--only-cohort", action="store_true")
    parser.add_argument(
        "--arm", action="append", default=[], help='"name:override override ..." (default: the three arms)'
    )
    parser.add_argument(
        "--ablation",
        action="append",
        default=[],
        choices=sorted(ABLATION),
        help="an arm of the neural ablation (repeatable; see ABLATION)",
    )
    args = parser.parse_args()
    cohort = args.out / "cohort"
    counts = write_cohort(cohort, args.years)
    print(json.dumps({"cohort": str(cohort), **counts}))
    if args.only_cohort:
        return
    reference = reference_logistic(cohort, args.years)
    print(json.dumps({"reference logistic regression, held-out AUROC": reference}))
    arms = dict(ARMS)
    if args.arm or args.ablation:
        arms = {a.split(":", 1)[0]: a.split(":", 1)[1].split() for a in args.arm}
        arms |= {name: ABLATION[name] for name in args.ablation}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    results = HERE / "results" / f"{stamp}-real_flchain.jsonl"
    for name, overrides in arms.items():
        record = {"dataset": "flchain", "task": f"death_{args.years}y", **counts, "reference": reference}
        record |= run_arm(name, overrides, cohort, args.out, f"death_{args.years}y")
        print(json.dumps(record), flush=True)
        with open(results, "a") as f:
            f.write(json.dumps(record) + "\n")
    print(f"recorded in {results}")


if __name__ == "__main__":
    main()

"""The evaluation report of a next-event pretrained model (medweave-eval on a medweave-pretrain
next_event checkpoint): the per-code AUROC table and its histogram (next_event.py), the sandbox
check against the oracle, and the simulated futures (simulate.py), in the task report's page
style (report.py); evaluation.json holds the same figures. No subject ID reaches it: the tables
are per code (and age band), and none shows a count of fewer than ``evaluation.min_group_size``
people (20) among its cases or non-cases."""

from __future__ import annotations

import html
import json
import logging
import time
from pathlib import Path

import numpy as np

from medweave.evaluation import next_event as ne
from medweave.evaluation import report
from medweave.evaluation import simulate as sim

log = logging.getLogger("medweave")


def evaluate_next_event(
    path: str, root: Path, cache_dir: Path, split: str, settings, age_bands, folder: Path
) -> dict:
    """Write report.html, evaluation.json and the figures into ``folder``; return the summary."""
    start, cpu = time.perf_counter(), time.process_time()
    s = settings.next_event
    seed = int(settings.seed)
    folder.mkdir(parents=True, exist_ok=True)
    model = ne.load_model(path)
    ids, times = ne.choose_subjects(root, split, s.labels, int(s.max_subjects), seed)
    check_leakage(path, model.extras, ids, times)
    horizon_days = float(s.horizon_days)
    follow = max(horizon_days, float(s.simulate.years) * ne.DAYS_PER_YEAR if s.simulate.enabled else 0.0)
    cohort = ne.read_cohort(
        root, cache_dir, ids, times, model.vocab, model.width, s.code_prefix, follow, s.get("query")
    )
    names = [n for n in model.vocab["codes"] if n.startswith(s.code_prefix)]
    code_ids = np.array([model.vocab["codes"].index(n) + 3 for n in names], np.int64)
    risks = ne.predict_risks(model, cohort, code_ids, horizon_days / ne.DAYS_PER_YEAR, int(s.batch_size))
    eligible, events = ne.incidence_matrices(cohort, names, horizon_days)
    min_cell = int(settings.min_group_size)
    table = ne.auroc_table(risks, eligible, events, names, int(s.min_cases), int(s.bootstrap), seed, min_cell)
    aurocs = [r["auroc"] for r in table]
    summary = {
        "kind": "next_event",
        "split": split,
        "subjects": len(cohort),
        "horizon_days": horizon_days,
        "code_prefix": s.code_prefix,
        "codes_scored": len(names),
        "min_cases": int(s.min_cases),
        "bootstrap": int(s.bootstrap),
        "n_codes": len(table),
        "mean_auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
        "median_auroc": float(np.median(aurocs)) if aurocs else float("nan"),
        "per_code": table,
        "label_check": ne.label_check(
            root, cohort, risks, names, dict(s.oracle_codes or {}), split, min_cell
        ),
    }
    figures = {
        "Per-code AUROC": report.auroc_histogram(
            aurocs, folder / "per_code_auroc.png", f"{len(aurocs)} codes, {horizon_days:g}-day horizon"
        )
    }
    if s.simulate.enabled:
        summary["simulation"], more = simulated_futures(
            model, cohort, names, code_ids, root, s, age_bands, seed, folder, split, min_cell
        )
        figures |= more
    summary["wall_s"], summary["cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
    write(folder, summary, figures)
    return summary


def check_leakage(path: str, extras: dict, ids: np.ndarray, times: np.ndarray) -> None:
    from medweave.data.ehr.pretrain import leaked_samples
    from medweave.errors import MedweaveError

    rule = extras.get("evaluation_cutoffs")
    if rule is None:
        log.warning("%s keeps no evaluation cutoffs: the leakage rule is not checked", path)
        return
    n = leaked_samples(rule, ids, times)
    if n:
        raise MedweaveError(
            f"{path}: {n} of the {len(ids)} evaluated subjects gave pretraining events at or after "
            "their prediction time here (their future was trained on); evaluate the split the "
            "pretraining run cut (tuning or held_out), or set evaluation.next_event.labels to the "
            "label file it was cut at"
        )


def simulated_futures(
    model, cohort, names, code_ids, root, s, age_bands, seed, folder, split, min_cell
) -> tuple[dict, dict]:
    """Trajectories of ``simulate.max_subjects`` subjects; incidence calibration and foreseen share."""
    g = s.simulate
    years, samples = int(g.years), int(g.samples)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(cohort), min(int(g.max_subjects), len(cohort)), replace=False))
    start = time.perf_counter()
    traj = sim.sample_trajectories(
        model, cohort, rows, samples, years, int(g.max_steps), int(s.batch_size), seed
    )
    wall = time.perf_counter() - start
    simulated = sim.first_simulated(traj, code_ids, len(rows), samples)
    eligible, observed = sim.first_observed(cohort, rows, names)
    bands = [0, *age_bands] if age_bands[0] > 0 else list(age_bands)  # children get a band too
    band = sim.age_band(cohort.age_days[rows], bands)
    band_names = [f"{lo}-{hi}" for lo, hi in zip(bands, bands[1:], strict=False)] + [f"{bands[-1]}+"]
    cells = sim.incidence_cells(
        eligible, observed, simulated, band, years, names, band_names, int(g.min_subjects)
    )
    points, pooled = sim.incidence_points(cells, min_cell), sim.pooled_incidence(cells, min_cell=min_cell)

    def hit(k: int) -> np.ndarray:
        lo, hi = (k - 1) * ne.DAYS_PER_YEAR, k * ne.DAYS_PER_YEAR
        return ((simulated > lo) & (simulated <= hi)).mean(1)

    foreseen = sim.foreseen_share(eligible, observed, hit, years)
    reference = reference_share(root, cohort, model, names, s, bands, band, eligible, observed, years, seed)
    for entry, ref in zip(foreseen, reference, strict=True):
        entry["reference_share"] = ref
    horizon = years * ne.DAYS_PER_YEAR
    subject_years = len(rows) * years
    out = {
        "subjects": len(rows),
        "samples": samples,
        "years": years,
        "max_steps": int(g.max_steps),
        "truncated_share": traj["truncated"],
        "events_per_subject_year": float(len(traj["code"]) / samples / max(subject_years, 1)),
        "incident_per_subject_year": {
            "observed": float((eligible & (observed <= horizon)).sum() / max(subject_years, 1)),
            "simulated": float(
                (eligible[:, None] & (simulated <= horizon)).sum() / samples / max(subject_years, 1)
            ),
        },
        "incidence_points": points,
        "incidence_spearman": incidence_rank_correlation(points),
        "incidence_pooled": pooled,
        "foreseen": foreseen,
        "reference": reference_note(s),
        "wall_s": wall,
    }
    title = f"Incidence within {years} years: {len(points)} code x age band points"
    return out, {
        "Simulated against observed incidence": report.incidence_figure(
            points, pooled, folder / "incidence.png", title
        )
    }


def incidence_rank_correlation(points: list[dict]) -> float:
    """Spearman's rank correlation of observed and simulated incidence over the points."""
    from scipy.stats import spearmanr

    if len(points) < 3:
        return float("nan")
    return float(spearmanr([p["observed"] for p in points], [p["simulated"] for p in points]).statistic)


def reference_note(s) -> str:
    return (
        f"the training population's marginal incidence: each code's share of first events in that "
        f"year after the prediction time among up to {int(s.simulate.reference_subjects)} train "
        "subjects of the same age band without it before"
    )


def reference_share(
    root, cohort, model, names, s, bands, band, eligible, observed, years, seed
) -> list[float]:
    """The foreseen share per year of a trajectory drawn from the training population's marginal
    incidence (simulate.marginal_incidence), as its expected value over such draws."""
    from medweave.data import contract as c

    ids, times = ne.choose_subjects(root, c.TRAIN_SPLIT, s.labels, int(s.simulate.reference_subjects), seed)
    ref = ne.observed_cohort(root, ids, times, s.code_prefix, years * ne.DAYS_PER_YEAR)
    ref_eligible, ref_observed = sim.first_observed(ref, np.arange(len(ref)), names)
    ref_band = sim.age_band(ref.age_days, bands)
    table = sim.marginal_incidence(ref_eligible, ref_observed, ref_band, len(bands), years)

    def hit(k: int) -> np.ndarray:
        p = table[np.clip(band, 0, len(bands) - 1), k - 1]
        return np.where((band >= 0)[:, None], p, 0.0)

    return [e["share"] for e in sim.foreseen_share(eligible, observed, hit, years)]


def _num(v, digits=3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def write(folder: Path, summary: dict, figures: dict[str, str]) -> Path:
    rows = "".join(
        f"<tr><td>{html.escape(r['code'])}</td><td>{r['eligible']}</td><td>{r['cases']}</td>"
        f"<td>{_num(r['auroc'])} <small>({_num(r['ci_low'])}&ndash;{_num(r['ci_high'])})</small></td></tr>"
        for r in summary["per_code"]
    )
    ci = f", 95 % CIs from {summary['bootstrap']} bootstrap resamples" if summary["bootstrap"] else ""
    parts = [
        f"<h1>Next-event model: {html.escape(summary['split'])} split</h1>",
        f"<p>{summary['subjects']} subjects. The risk of each of {summary['codes_scored']} "
        f"{html.escape(summary['code_prefix'])} codes within {summary['horizon_days']:g} days of the "
        "prediction time, 1 - exp(-rate p(code) H) from the waiting-time and code heads after the "
        "last event before it, no task-specific model. Each code's AUROC is over subjects without "
        f"it at or before the prediction time, for codes with at least {summary['min_cases']} "
        f"incident cases{ci}.</p>",
        "<h2>Many diseases at once</h2>",
        f"<p><b>Mean AUROC over {summary['n_codes']} codes: {_num(summary['mean_auroc'])}</b> "
        f"(median {_num(summary['median_auroc'])}).</p>",
        report.figure_html({k: v for k, v in figures.items() if k == "Per-code AUROC"}),
    ]
    if summary["label_check"]:
        checks = "".join(
            f"<tr><td>{html.escape(e['task'])}</td><td>{html.escape(e['code'])}</td><td>{e['subjects']}</td>"
            f"<td>{e['cases']}</td><td>{_num(e['auroc'])}</td><td>{_num(e.get('oracle_ehr'))}</td>"
            f"<td>{_num(e.get('oracle_true_risk'))}</td></tr>"
            for e in summary["label_check"]
        )
        parts += [
            "<h3>Against the task labels and the sandbox oracle</h3>",
            "<table><tr><th>task</th><th>code</th><th>subjects</th><th>cases</th><th>AUROC of the code's "
            "risk</th><th>oracle, EHR only</th><th>oracle, true risk</th></tr>" + checks + "</table>",
        ]
    parts += [
        "<h3>Per-code AUROC</h3>",
        f"<table><tr><th>code</th><th>eligible</th><th>cases</th><th>AUROC</th></tr>{rows}</table>",
    ]
    if "simulation" in summary:
        g = summary["simulation"]
        years = "".join(
            f"<tr><td>{e['year']}</td><td>{e['diagnoses']}</td><td>{_num(e['share'])}</td>"
            f"<td>{_num(e['reference_share'])}</td></tr>"
            for e in g["foreseen"]
        )
        inc = g["incident_per_subject_year"]
        parts += [
            "<h2>Simulated futures</h2>",
            f"<p>{g['samples']} trajectories for each of {g['subjects']} subjects, {g['years']} years "
            f"ahead (wait ~ Exp(rate), code ~ softmax; generated lab events carry no value bin); "
            f"{_num(g['truncated_share'])} of trajectories stopped at {g['max_steps']} steps before the "
            f"horizon. Events per subject-year: {_num(g['events_per_subject_year'], 2)} simulated. "
            f"Incident diagnoses per subject-year: {_num(inc['observed'])} observed, "
            f"{_num(inc['simulated'])} simulated. Incidence: {len(g['incidence_points'])} code x age "
            f"band points, Spearman's rank correlation {_num(g['incidence_spearman'])} (a point with no "
            "case on one side is drawn at the lower edge).</p>",
            report.figure_html({k: v for k, v in figures.items() if k != "Per-code AUROC"}),
            "<h3>Pooled incidence</h3><p>Every code x age band cell, those hidden above for few "
            "cases included, in bins of simulated incidence of about a tenth of the eligible "
            "subject-codes each (eligible-weighted means; a bin with few cases shows none).</p>"
            "<table><tr><th>cells</th><th>eligible</th><th>simulated</th><th>observed</th></tr>"
            + "".join(
                f"<tr><td>{b['cells']}</td><td>{b['eligible']}</td><td>{_num(b['simulated'], 4)}</td>"
                f"<td>{_num(b['observed'], 4)}</td></tr>"
                for b in g["incidence_pooled"]
            )
            + "</table>",
            "<h3>Observed diagnoses foreseen, per year ahead</h3>",
            "<p>Of the observed incident diagnoses (a code's first event after the prediction time, "
            "the subject not having it before) falling in year k, the share whose code's first "
            "simulated event falls in the same year, averaged over trajectories; the reference is "
            f"{html.escape(g['reference'])}.</p>",
            "<table><tr><th>year</th><th>observed diagnoses</th><th>foreseen share</th>"
            f"<th>reference</th></tr>{years}</table>",
        ]
    (folder / "evaluation.json").write_text(json.dumps(summary, indent=2, default=float))
    path = folder / "report.html"
    path.write_text(report.html_page("Next-event model evaluation", parts))
    log.info("Evaluation report: %s", path)
    return path


def flat_metrics(summary: dict, prefix: str) -> dict[str, float]:
    """The report's headline figures as MLflow metrics (no per-subject value)."""
    out = {
        f"{prefix}/next_event/mean_auroc": summary["mean_auroc"],
        f"{prefix}/next_event/n_codes": summary["n_codes"],
    }
    for e in summary["label_check"]:
        out[f"{prefix}/next_event/{e['task']}_auroc"] = e["auroc"]
    for e in summary.get("simulation", {}).get("foreseen", []):
        out[f"{prefix}/next_event/foreseen_year{e['year']}"] = e["share"]
        out[f"{prefix}/next_event/foreseen_reference_year{e['year']}"] = e["reference_share"]
    return {k: float(v) for k, v in out.items() if v == v}

"""A tabular baseline as one more arm of a run: ``medweave-train baseline=gbm`` (or ``=linear``).

It reads the same cohort, labels, splits and EHR vocabulary the neural arms do (the DataModule
prepares them), builds count features from the events before each prediction time
(features.py), fits on train, chooses on tuning, and reports on held_out through the same
evaluation (evaluation/run.py ``evaluate_predictions``): the same evaluation.json, figures and
MLflow metrics, so an ablation's comparison table lists it as a row like any other.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from pathlib import Path

import numpy as np

from medweave.data import contract as c

log = logging.getLogger("medweave")


def events_only(cfg) -> None:
    """A baseline reads the EHR events alone: data.modalities becomes [ehr_codes] (also in the
    config the run logs, and so in the comparison table's modalities column)."""
    from omegaconf import open_dict

    if list(cfg.data.modalities) != [c.EHR_CODES]:
        log.info("baseline=%s reads EHR events only: data.modalities=[%s]", cfg.baseline.name, c.EHR_CODES)
        with open_dict(cfg):
            cfg.data.modalities = [c.EHR_CODES]


def fit_baseline(cfg) -> float | None:
    """Fit, choose and report one baseline arm (the module docstring); returns the tuning metric."""
    from hydra.utils import instantiate

    from medweave.baselines.features import build_features
    from medweave.baselines.models import check_kind, tuning_score
    from medweave.evaluation.run import evaluate_predictions, log_summary
    from medweave.tracking.mlflow import log_run_config

    model = instantiate(cfg.baseline.model)
    kind = str(cfg.task.type)
    check_kind(kind, model.name)
    datamodule = instantiate(cfg.data)
    datamodule.encoder_inputs()  # labels, splits and the EHR vocabulary (fitted on train), prepared once
    cohort = datamodule.cohort
    subjects = np.load(cohort.folder / "subjects.npz")
    codes = list(cohort.vocab["codes"])
    valued = sorted(cohort.vocab["code_stats"])
    started = time.perf_counter()
    features = build_features(
        datamodule.root,
        cohort.subject_id,
        subjects["prediction_time"],
        codes,
        valued,
        list(cfg.baseline.windows_days),
        datamodule.prepare_config.lenient,
    )
    built = time.perf_counter() - started
    log.info(
        "Tabular features: %d subjects x %d columns (%d stored entries) in %.1f s",
        *features.matrix.shape,
        features.matrix.nnz,
        built,
    )
    x, y, t = features.matrix, cohort.target, cohort.time if cohort.has_times else None
    rows = {split: cohort.rows(split) for split in c.SPLITS}
    pick = lambda a, split: None if a is None else a[rows[split]]  # noqa: E731
    tr, tu, ho = c.TRAIN_SPLIT, c.TUNING_SPLIT, c.HELD_OUT_SPLIT
    started = time.perf_counter()
    chosen = model.fit(
        kind, x[rows[tr]], y[rows[tr]], x[rows[tu]], y[rows[tu]], pick(t, tr), pick(t, tu), features.values
    )
    fitted = time.perf_counter() - started

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values()]
    info = {
        "baseline/features": x.shape[1],
        "baseline/feature_seconds": round(built, 2),
        "baseline/fit_seconds": round(fitted, 2),
        **{f"baseline/{k}": v for k, v in chosen.items() if not isinstance(v, dict)},
    }
    log_run_config(loggers, cfg, output_dir, info)
    tuning = tuning_score(kind, y[rows[tu]], model.predict(x[rows[tu]]), pick(t, tu))
    monitor = "val/auroc" if kind == "binary" else "val/c_index"
    for logger in loggers:
        logger.log_metrics({monitor: tuning}, step=0)
    # The fitted model with its feature names: what a later medweave run needs to score again.
    with open(output_dir / "baseline.pkl", "wb") as f:
        pickle.dump(
            {"model": model, "features": features.names, "windows_days": list(cfg.baseline.windows_days)}, f
        )

    metrics = {monitor: tuning}
    if cfg.get("test"):
        pred = {
            "score": np.asarray(model.predict(x[rows[ho]]), np.float64),
            "target": y[rows[ho]],
            "subject_id": cohort.subject_id[rows[ho]],
            f"present_{c.EHR_CODES}": cohort.present[c.EHR_CODES][rows[ho]],
        }
        fit = None
        if kind == "survival":
            pred["time"] = t[rows[ho]]
            fit = (
                np.asarray(model.predict(x[rows[tr]]), np.float64),
                t[rows[tr]].astype(float),
                y[rows[tr]] > 0,
            )
        folder = output_dir / "evaluation"
        summary = evaluate_predictions(pred, kind, datamodule, ho, cfg.task.name, cfg.evaluation, folder, fit)
        (folder / "baseline.json").write_text(
            json.dumps({"model": model.name, **chosen, **info}, default=str)
        )
        log_summary(summary, ho, folder, loggers, step=0)
        metrics.update({f"test/{k}": v["value"] for k, v in summary["overall"].items()})
    for logger in loggers:
        logger.finalize("success")
    log.info("Metrics: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    log.info("Outputs in %s", output_dir)
    return metrics.get(cfg.get("optimized_metric"))

"""Evaluate a trained model on one split: predictions, metrics with CIs, subgroups, attribution,
figures and the HTML report, written to one folder (and logged to MLflow by the caller)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medweave.evaluation import metrics as M
from medweave.evaluation import report
from medweave.evaluation.attribution import modality_shapley
from medweave.evaluation.subgroups import availability_pattern, subject_groups
from medweave.evaluation.summary import Predictions, flat_metrics, summarize

log = logging.getLogger("medweave")


def collect_predictions(model, loader) -> dict[str, np.ndarray]:
    """predict_step's outputs over a loader, concatenated: score, target, subject_id, present_*,
    and for survival tasks time (and survival [n, K] from a discrete-time head). A plain loop, not
    trainer.predict: under DDP only rank 0 reports, and a trainer call would wait for the others."""
    import torch

    model.eval()
    outputs = []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            batch = model.transfer_batch_to_device(batch, model.device, 0)
            outputs.append({k: v.cpu() for k, v in model.predict_step(batch, i).items()})
    out = {key: torch.cat([o[key] for o in outputs]).numpy() for key in outputs[0] if key != "score"}
    out["score"] = torch.cat([o["score"] for o in outputs]).float().numpy()
    return out


def sandbox_oracle(root: Path, label_task: str, split: str) -> dict:
    """A sandbox cohort's ceilings for this task and split (metadata/dataset.json), shown next to
    the model's figure; empty for a real cohort, which knows no truth."""
    import json

    try:
        meta = json.loads((root / "metadata" / "dataset.json").read_text())
        oracle = meta["medweave"]["oracle"][label_task]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    metric = "auroc" if "auroc" in oracle else "c_index"
    out = {"metric": metric, "true risk": oracle[metric].get(split)}
    if f"{metric}_given_available" in oracle:
        out["given the modalities each subject has"] = oracle[f"{metric}_given_available"].get(split)
    for modality, values in oracle.get(f"{metric}_by_modality", {}).items():
        out[f"given {modality} alone"] = values.get(split)
    return out


def cox_baseline(model, datamodule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, times, events) on the training split: what Breslow's baseline hazard needs."""
    fit = collect_predictions(model, datamodule.split_dataloader("train"))
    return fit["score"], fit["time"].astype(float), fit["target"].astype(bool)


def interpolate_survival(curve: np.ndarray, edges: np.ndarray, times: np.ndarray) -> np.ndarray:
    """S(t) between bin edges of a discrete-time head, the hazard constant within each bin
    (log S linear in t), S(0) = 1; held at the last edge's value beyond it."""
    log_s = np.log(np.clip(np.concatenate([np.ones((len(curve), 1)), curve], axis=1), 1e-12, 1.0))
    t = np.clip(times, edges[0], edges[-1])
    return np.exp(np.stack([np.interp(t, edges, row) for row in log_s]))


def evaluate_split(model, datamodule, split: str, task: str, settings, folder: Path) -> dict:
    """Write report.html, evaluation.json and the figures into ``folder``; return the summary."""
    kind = getattr(model.head, "kind", "binary")
    pred = collect_predictions(model, datamodule.split_dataloader(split))
    fit = cox_baseline(model, datamodule) if kind == "survival" else None
    attribution = None
    if settings.attribution and len(model.encoders) > 1 and pred["score"].ndim == 1:  # scalar scores only
        loader = datamodule.split_dataloader(split)
        attribution = modality_shapley(model, loader, settings.attribution_max_subjects)
    names = None
    if kind in ("multiclass", "multilabel"):
        names = model.head.classes if kind == "multiclass" else model.head.labels
    edges = model.head.edges.cpu().numpy() if "survival" in pred else None
    return evaluate_predictions(
        pred, kind, datamodule, split, task, settings, folder, fit, attribution, names, edges
    )


def evaluate_predictions(
    pred: dict,
    kind: str,
    datamodule,
    split: str,
    task: str,
    settings,
    folder: Path,
    fit: tuple | None = None,
    attribution: dict | None = None,
    names: list | None = None,
    edges: np.ndarray | None = None,
) -> dict:
    """The report of any model's predictions on ``split`` (collect_predictions' keys): the neural
    arms' and the tabular baselines' (baselines/run.py) go through the same metrics and figures.
    ``fit``: (scores, times, events) on train, for Breslow's baseline of a Cox score;
    ``edges``: a discrete-time head's bin edges, where ``pred`` holds its survival curves."""
    folder.mkdir(parents=True, exist_ok=True)
    preds = Predictions(pred["score"], pred["target"].astype(float))
    if kind == "multiclass":
        preds.target = pred["target"].astype(int)
    train = times = None
    if kind == "survival":
        fit_score, fit_time, fit_event = fit
        preds.time = pred["time"].astype(float)
        train = (fit_time, fit_event)
        times = M.evaluation_times(preds.time, preds.target.astype(bool), train[0])
        if "survival" in pred:
            preds.survival = interpolate_survival(pred["survival"], edges, times)
        else:  # Cox: Breslow's baseline from the training split
            preds.survival = M.breslow_survival(fit_score, fit_time, fit_event, preds.score, times)
        preds.survival_times = times
    groups = subject_groups(  # prediction times from the (first) label file the task reads
        datamodule.root,
        datamodule.label_tasks[0],
        pred["subject_id"],
        dict(settings.sex_codes),
        list(settings.age_bands),
        labels_dir=datamodule.prepare_config.labels_dir,
        label_rows=datamodule.prepare_config.label_rows,
        lenient=datamodule.prepare_config.lenient,
    )
    groups["modalities"] = availability_pattern(
        {k[8:]: v for k, v in pred.items() if k.startswith("present_")}
    )
    summary = summarize(
        kind,
        preds,
        groups,
        settings.bootstrap,
        settings.seed,
        settings.min_group_size,
        train,
        times,
        attribution,
    )
    oracle = sandbox_oracle(datamodule.root, datamodule.label_tasks[0], split)
    if oracle:
        summary["oracle"] = oracle
    if kind == "binary":
        figures, records = report.binary_figures(preds, folder)
    elif kind == "survival":
        figures, records = report.survival_figures(preds, folder)
    elif kind == "regression":
        figures, records = report.regression_figure(preds, folder)
    else:
        figures, records = report.multi_roc_figure(preds, folder, names)
    if attribution is not None:
        more, more_records = report.attribution_figure(summary, folder)
        figures, records = figures | more, records | more_records
    for caption, file in figures.items():
        records[file]["caption"] = caption
    summary["figures"] = records  # what each figure was drawn from, for medweave-export
    path = report.write_report(folder, summary, figures, title=f"{task}: {split} split")
    log.info("Evaluation report: %s", path)
    return summary


def report_and_log(model, datamodule, split, task, settings, folder: Path, loggers, step: int = 0) -> dict:
    """evaluate_split, then every figure of its summary as metrics of each logger's run
    (summary.flat_metrics: test/* for held_out, val/* for tuning), at ``step``, the step the
    trainer logged its own test metrics at, so the report's figures are the run's latest values;
    MLflow gets the folder as artifacts under evaluation/."""
    summary = evaluate_split(model, datamodule, split, task, settings, folder)
    log_summary(summary, split, folder, loggers, step)
    return summary


def log_summary(summary: dict, split: str, folder: Path, loggers, step: int = 0) -> None:
    """Every figure of the summary as metrics of each logger's run; the folder as MLflow artifacts."""
    from lightning.pytorch.loggers import MLFlowLogger

    metrics = flat_metrics(summary, "test" if split == "held_out" else "val")
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifacts(logger.run_id, str(folder), "evaluation")

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
from medweave.evaluation.summary import Predictions, summarize

log = logging.getLogger("medweave")


def collect_predictions(trainer, model, loader) -> dict[str, np.ndarray]:
    """predict_step's outputs over a loader, concatenated: score, target, subject_id, present_*,
    and for survival tasks time (and survival [n, K] from a discrete-time head)."""
    import torch

    outputs = trainer.predict(model, dataloaders=loader)
    out = {key: torch.cat([o[key] for o in outputs]).numpy() for key in outputs[0] if key != "score"}
    out["score"] = torch.cat([o["score"] for o in outputs]).float().numpy()
    return out


def _step_survival(curve: np.ndarray, edges: np.ndarray, times: np.ndarray) -> np.ndarray:
    """S(t) from S at each bin's right edge: a step function, 1 before the first edge."""
    full = np.concatenate([np.ones((len(curve), 1)), curve], axis=1)
    return full[:, np.searchsorted(edges[1:], times, side="right")]


def evaluate_split(
    trainer, model, datamodule, split: str, task: str, root: Path, settings, folder: Path
) -> dict:
    """Write report.html, evaluation.json and the figures into ``folder``; return the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    kind = getattr(model.head, "kind", "binary")
    pred = collect_predictions(trainer, model, datamodule.split_dataloader(split))
    preds = Predictions(pred["score"], pred["target"].astype(float))
    train = times = None
    if kind == "survival":
        fit = collect_predictions(trainer, model, datamodule.split_dataloader("train"))
        preds.time = pred["time"].astype(float)
        train = (fit["time"].astype(float), fit["target"].astype(bool))
        times = M.evaluation_times(preds.time, preds.target.astype(bool), train[0])
        if "survival" in pred:
            preds.survival = _step_survival(pred["survival"], model.head.edges.cpu().numpy(), times)
        else:  # Cox: Breslow's baseline from the training split
            preds.survival = M.breslow_survival(fit["score"], *train, preds.score, times)
        preds.survival_times = times
    groups = subject_groups(
        root, task, pred["subject_id"], dict(settings.sex_codes), list(settings.age_bands)
    )
    groups["modalities"] = availability_pattern(
        {k[8:]: v for k, v in pred.items() if k.startswith("present_")}
    )
    attribution = None
    if settings.attribution and len(model.encoders) > 1:
        loader = datamodule.split_dataloader(split)
        attribution = modality_shapley(model, loader, settings.attribution_max_subjects)
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
    figures = (
        report.binary_figures(preds, folder) if kind == "binary" else report.survival_figures(preds, folder)
    )
    if attribution is not None:
        figures |= report.attribution_figure(summary, folder)
    path = report.write_report(folder, summary, figures, title=f"{task}: {split} split")
    log.info("Evaluation report: %s", path)
    return summary

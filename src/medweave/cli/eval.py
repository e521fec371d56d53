"""medweave-eval: re-evaluate a checkpoint on a split of a cohort and log the metrics to MLflow.

    medweave-eval ckpt_path=logs/quickstart/runs/<time>/checkpoints/last.ckpt data.root=data/sandbox
    medweave-eval ckpt_path=... data.root=... split=tuning
    medweave-eval ckpt_path=models:/cvd-risk/3 data.root=data/sandbox   # a registered model (or a run id)

The checkpoint carries the model config, modalities, task and fitted vocabularies, so the cohort
is mapped exactly as in training. Metrics are logged as test/* (held_out) or val/* (tuning).
With evaluation.enabled=true (the default) it also writes <run dir>/evaluation/report.html: metrics with
bootstrap CIs, ROC/PR/calibration or Kaplan-Meier figures, subgroups and modality attribution.

A medweave-pretrain next_event checkpoint has no task: medweave-eval then writes the next-event
report (the risk of every diagnosis code within a horizon, a per-code AUROC table, simulated
futures; settings in evaluation.next_event):

    medweave-eval ckpt_path=logs/pretrain/runs/<time>/checkpoints/last.ckpt data.root=data/sandbox
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("medweave")

EVAL_SPLITS = ("held_out", "tuning")


def load_checkpoint(path: str) -> dict:
    """The checkpoint dict, or an error saying why this file is not a medweave checkpoint."""
    import torch

    from medweave.errors import MedweaveError

    file = Path(path).expanduser()
    if not file.is_file():
        raise MedweaveError(
            f"ckpt_path '{path}' does not exist; expected a .ckpt file written by "
            "medweave-train (see <run dir>/checkpoints/)"
        )
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a bad file
        raise MedweaveError(f"ckpt_path '{path}' is not a readable PyTorch checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or "medweave" not in ckpt or "state_dict" not in ckpt:
        raise MedweaveError(
            f"ckpt_path '{path}' is not a medweave checkpoint (no 'medweave' "
            "section); expected one written by medweave-train"
        )
    return ckpt


def restore_model(ckpt: dict, path: str, encoder_inputs: dict, head_inputs: dict | None = None):
    from omegaconf import OmegaConf

    from medweave.errors import MedweaveError
    from medweave.models.build import build_model

    saved = ckpt["medweave"]["config"]
    model = build_model(
        OmegaConf.create(saved["model"]),
        list(saved["data"]["modalities"]),
        encoder_inputs,
        checkpoint_extras=ckpt["medweave"],
        head_inputs=head_inputs,
    )
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[1:3]
        raise MedweaveError(
            f"ckpt_path '{path}': weights do not fit the model its config "
            f"describes ({' '.join(s.strip() for s in first)})"
        ) from None
    return model


def checkpoint_path(cfg) -> str:
    """``ckpt_path`` as a local file: a checkpoint file as it is, or an MLflow model
    (models:/<name>/<version>, models:/<name>@<alias>, runs:/<run id>/model or a run id)
    downloaded into the run's folder."""
    from medweave.tracking.models import is_model_reference

    reference = str(cfg.ckpt_path)
    if Path(reference).expanduser().exists() or not is_model_reference(reference):
        return reference
    from medweave.tracking.mlflow import resolve_tracking_uri
    from medweave.tracking.models import fetch_checkpoint

    uri = resolve_tracking_uri(cfg.paths.mlflow_dir, cfg.get("tracking_uri"))
    return str(fetch_checkpoint(reference, uri, Path(cfg.paths.output_dir) / "model"))


def restore_for_inference(cfg):
    """(checkpoint, data module, model) for ``cfg.ckpt_path`` over the cohort at ``cfg.data.root``.

    The data module is the training one, with only where-and-how-fast keys (root, cache_dir,
    batch_size, num_workers) taken from ``cfg.data``; the vocabularies come from the checkpoint.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = checkpoint_path(cfg)
    ckpt = load_checkpoint(path)
    data_cfg = OmegaConf.merge(
        ckpt["medweave"]["config"]["data"], OmegaConf.to_container(cfg.data, resolve=True)
    )
    # The vocabulary goes in after Hydra: through it, note words like "${" would be interpolated.
    datamodule = instantiate(data_cfg, _partial_=True)(vocab=ckpt["medweave"]["vocab"])
    model = restore_model(ckpt, path, datamodule.encoder_inputs(), datamodule.head_inputs())
    return ckpt, datamodule, model


def evaluate(cfg) -> dict[str, float]:
    import lightning as L
    from hydra.utils import instantiate

    from medweave.cli.hydra_main import one_log_stream
    from medweave.errors import MedweaveError
    from medweave.tracking.mlflow import log_run_config
    from medweave.training.progress import progress_bar

    one_log_stream()
    if cfg.split not in EVAL_SPLITS:
        raise MedweaveError(f"split='{cfg.split}': expected one of {list(EVAL_SPLITS)}")
    path = checkpoint_path(cfg)
    if checkpoint_kind(path) == "pretrain":
        return evaluate_pretrained(cfg, path)
    ckpt, datamodule, model = restore_for_inference(cfg)

    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    bar = progress_bar(cfg.trainer.get("enable_progress_bar", True))
    trainer = instantiate(cfg.trainer, _partial_=True)(
        logger=loggers or False, callbacks=[bar] if bar else []
    )
    log_run_config(loggers, cfg, Path(cfg.paths.output_dir), {"eval.trained_epoch": ckpt.get("epoch")})
    loader = datamodule.split_dataloader(cfg.split)
    run = trainer.test if cfg.split == "held_out" else trainer.validate
    results = {k: float(v) for k, v in run(model, dataloaders=loader, verbose=False)[0].items()}
    if cfg.evaluation.enabled and trainer.is_global_zero:
        from medweave.evaluation.run import report_and_log

        task = ckpt["medweave"]["config"]["task"]["name"]
        folder = Path(cfg.paths.output_dir) / "evaluation"
        summary = report_and_log(model, datamodule, cfg.split, task, cfg.evaluation, folder, loggers)
        prefix = "test" if cfg.split == "held_out" else "val"
        results.update({f"{prefix}/{k}": v["value"] for k, v in summary["overall"].items()})
    shown = {k: round(v, 4) for k, v in sorted(results.items())}
    L.pytorch.utilities.rank_zero_info(f"Eval on {cfg.split}: {shown}")
    return results


def checkpoint_kind(path: str) -> str | None:
    """``medweave.kind`` of a checkpoint ("pretrain": medweave-pretrain's), None if unreadable
    (load_checkpoint then says why)."""
    import torch

    try:
        saved = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # torch raises many types for a bad file
        return None
    extras = saved.get("medweave") if isinstance(saved, dict) else None
    return extras.get("kind") if isinstance(extras, dict) else None


def evaluate_pretrained(cfg, path: str) -> dict[str, float]:
    """A medweave-pretrain checkpoint has no task: the next-event report instead (per-code risks
    and AUROCs, simulated futures: evaluation/next_event_report.py), logged like the task report."""
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import MLFlowLogger

    from medweave.data import contract as c
    from medweave.evaluation import next_event_report as ner
    from medweave.tracking.mlflow import log_run_config

    loggers = [instantiate(x) for x in (cfg.get("logger") or {}).values()]
    log_run_config(loggers, cfg, Path(cfg.paths.output_dir), {"eval.kind": "next_event"})
    folder = Path(cfg.paths.output_dir) / "evaluation"
    try:
        root = c.require_root(cfg.data.root)
        summary = ner.evaluate_next_event(
            path, root, Path(cfg.data.cache_dir), cfg.split, cfg.evaluation, cfg.evaluation.age_bands, folder
        )
    except BaseException:
        for logger in loggers:
            logger.finalize("failed")
        raise
    results = ner.flat_metrics(summary, "test" if cfg.split == "held_out" else "val")
    for logger in loggers:
        logger.log_metrics(results, step=0)
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifacts(logger.run_id, str(folder), "evaluation")
        # No trainer ends this run: its end waits for the queued metrics (an unfinalized run
        # stays RUNNING and loses them at exit).
        logger.finalize("success")
    log.info(
        "Next-event evaluation on %s: %s", cfg.split, {k: round(v, 4) for k, v in sorted(results.items())}
    )
    return results


def main() -> None:
    from medweave.cli.hydra_main import run

    run(evaluate, "eval", "medweave-eval")


if __name__ == "__main__":
    main()

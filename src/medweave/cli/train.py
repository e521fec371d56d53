"""medweave-train: fit a multimodal model on a cohort, test the best checkpoint, track in MLflow.

medweave-train experiment=quickstart data.root=data/sandbox
medweave-train experiment=quickstart data.root=data/sandbox data.modalities=[image]
medweave-train experiment=quickstart data.root=data/sandbox model/fusion=concat
medweave-train debug=smoke data.root=data/sandbox        # seconds, what the tests run
medweave-train ... trainer=ddp trainer.devices=2         # DDP on one node
medweave-train ... privacy=dp privacy.target_epsilon=4   # DP-SGD with an (epsilon, delta) guarantee
medweave-train ... baseline=gbm                          # count-based GBM (or baseline=linear) instead
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("medweave")


def check_config(cfg) -> None:
    """Every fault of the config at once, before anything heavy starts."""
    from omegaconf import OmegaConf

    from medweave.data.contract import check_modalities, missing_modality_files, require_root
    from medweave.errors import MedweaveError
    from medweave.tasks.types import check_type

    problems = []
    if OmegaConf.is_missing(cfg.data, "root"):
        problems.append(
            "data.root is not set: pass data.root=<cohort folder> (make one with: medweave-sandbox out=<dir>)"
        )
    else:
        try:
            root = require_root(cfg.data.root)
            served = {m for m, f in (cfg.data.get("embeddings") or {}).items() if f}  # medweave-embed caches
            asked = [m for m in cfg.data.modalities if m not in served]
            if missing := missing_modality_files(root, asked):
                has = [m for m in cfg.data.modalities if m not in missing]
                problems.append(
                    f"data.modalities={list(cfg.data.modalities)}: the cohort has no "
                    + ", ".join(f"{path} (for {m})" for m, path in missing.items())
                    + f"; name the modalities it has: data.modalities=[{','.join(has)}]"
                )
        except MedweaveError as err:
            problems.append(str(err))
    try:
        check_modalities(cfg.data.modalities)
    except MedweaveError as err:
        problems.append(str(err))
    if OmegaConf.is_missing(cfg.task, "name") or OmegaConf.is_missing(cfg.task, "aces"):
        problems.append("task=aces needs its file: pass task=<path of the ACES task config .yaml>")
    else:
        try:
            check_type(cfg.task.type)
        except MedweaveError as err:
            problems.append(str(err))
    if problems:
        raise MedweaveError("; ".join(problems))


def whole_checkpoint(method) -> dict:
    """weights_only=False for Lightning's own checkpoint loading: ours hold the config and the
    vocabulary. Releases before 2.6 take no such argument and load whole checkpoints anyway."""
    import inspect

    return {"weights_only": False} if "weights_only" in inspect.signature(method).parameters else {}


def open_run(loggers: list, cfg, output_dir: Path, counts: dict, ckpt_path: str | None) -> None:
    """Rank 0, before fit: reopen a resumed run's loggers, or log the new run's config and
    counts; record the run id (a requeued job resumes into the same MLflow run)."""
    from medweave.tracking.mlflow import log_run_config

    resumed = [lg for lg in loggers if getattr(lg, "resumed", False)]
    for logger in resumed:
        logger.reopen()
    if not resumed:  # a resumed run has its params already (MLflow refuses changed ones)
        log_run_config(loggers, cfg, output_dir, counts)
    for logger in loggers:
        if hasattr(logger, "record_run_id"):
            logger.record_run_id()
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)


def train(cfg) -> float | None:
    if cfg.get("baseline"):  # baseline=gbm|linear: a tabular arm on the same cohort, splits and report
        from medweave.baselines.run import events_only

        events_only(cfg)  # it reads the EHR events alone
    check_config(cfg)  # before the heavy imports: a typo costs a second, not ten
    if cfg.get("baseline"):
        from medweave.baselines.run import fit_baseline

        return fit_baseline(cfg)

    from contextlib import nullcontext

    from hydra.utils import instantiate

    from medweave.cli.hydra_main import one_log_stream
    from medweave.training.preemption import Preemption

    one_log_stream()
    # Callbacks first: the preemption handler listens from the start (a signal while the cohort is
    # prepared must not kill the job) to the end of testing and evaluation.
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    callbacks = [c for c in callbacks if c is not None]  # a factory may decline (progress with no bar)
    if cfg.get("privacy"):  # privacy=dp: DP-SGD (training/dp_sgd.py)
        callbacks.append(instantiate(cfg.privacy))
    preemption = next((c for c in callbacks if isinstance(c, Preemption)), None)
    with preemption.listening() if preemption else nullcontext():
        return _fit_and_test(cfg, callbacks, preemption)


def _fit_and_test(cfg, callbacks: list, preemption) -> float | None:
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from medweave.models.build import build_model
    from medweave.training.preemption import resume_checkpoint, trainer_plugins

    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")

    pretrained = OmegaConf.select(cfg, "model.encoders.ehr_codes.pretrained")
    pretrained = pretrained if pretrained and "ehr_codes" in cfg.data.modalities else None
    served = {}
    if pretrained:  # the task vocabulary keeps every code the checkpoint knows
        from medweave.models.pretrain.load import check_leakage, pretrained_codes

        served["keep_codes"] = pretrained_codes(pretrained)
    datamodule = instantiate(cfg.data, **served)
    inputs = datamodule.encoder_inputs()  # prepares the cohort cache once
    if pretrained:
        check_leakage(pretrained, datamodule.cohort.folder)
    extras = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "vocab": datamodule.cohort.vocab,
        "format": 1,
    }
    model = build_model(
        cfg.model,
        datamodule.modalities,
        inputs,
        checkpoint_extras=extras,
        head_inputs=datamodule.head_inputs(),
    )

    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_checkpoint(output_dir, cfg.get("ckpt_path"))
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    # Objects go in after instantiation: given to instantiate, Hydra would wrap these lists in a
    # ListConfig, which Lightning releases before 2.5 do not take for a list.
    trainer = instantiate(cfg.trainer, _partial_=True)(
        logger=loggers or False, callbacks=callbacks, plugins=trainer_plugins()
    )

    counts = {
        f"params/{name}": sum(p.numel() for p in part.parameters())
        for name, part in [*model.encoders.items(), ("fusion", model.fusion), ("head", model.head)]
    }
    counts["params/total"] = sum(p.numel() for p in model.parameters())
    if trainer.is_global_zero:
        log.info("Parameters: %s", counts)
        open_run(loggers, cfg, output_dir, counts, ckpt_path)

    # Ranks share the model's initial weights (seeded above) but not their random draws
    # (dropout, modality dropout); a resumed run restores each rank's state instead.
    L.seed_everything(cfg.seed + trainer.global_rank, workers=True, verbose=False)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **whole_checkpoint(trainer.fit))
    if preemption:
        preemption.stop_if_requested(trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test"):
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint else ""
        if best and trainer.is_global_zero:
            score = checkpoint.best_model_score
            log.info(
                "Testing %s (%s %.4g)",
                Path(best).name,
                checkpoint.monitor,
                float("nan") if score is None else float(score),
            )
        # verbose=False: no table of the test batches' metrics; the report's cover the whole split.
        trainer.test(
            model,
            datamodule=datamodule,
            ckpt_path=best or None,
            verbose=False,
            **whole_checkpoint(trainer.test),
        )
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if preemption:
            preemption.stop_if_requested(trainer)
        if cfg.evaluation.enabled and trainer.is_global_zero:  # the tested weights are loaded now
            from medweave.evaluation.run import report_and_log

            folder = Path(cfg.paths.output_dir) / "evaluation"
            step = trainer.global_step  # where trainer.test logged: the report's figures come after
            summary = report_and_log(
                model, datamodule, "held_out", cfg.task.name, cfg.evaluation, folder, loggers, step
            )
            # The report's figures cover the whole held-out split (limit_test_batches may not).
            metrics.update({f"test/{k}": v["value"] for k, v in summary["overall"].items()})
        if best and trainer.is_global_zero:
            _log_tested_model(loggers, best, checkpoint, cfg, datamodule)
    if trainer.is_global_zero:
        log.info("Metrics: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
        log.info("Outputs in %s", cfg.paths.output_dir)
    # A sweeper should see the best epoch's value (the checkpoint tested), not the last epoch's.
    checkpoint = trainer.checkpoint_callback
    if (
        checkpoint
        and checkpoint.monitor == cfg.get("optimized_metric")
        and checkpoint.best_model_score is not None
    ):
        return float(checkpoint.best_model_score)
    return metrics.get(cfg.get("optimized_metric"))


def _log_tested_model(loggers: list, best: str, checkpoint, cfg, datamodule) -> None:
    """The checkpoint that was tested becomes the MLflow run's model (tracking/models.py)."""
    import json

    import torch

    from medweave import __version__
    from medweave.data.prepare import MANIFEST
    from medweave.tracking.models import log_tested_model

    chosen = [lg for lg in loggers if getattr(lg, "log_tested", False)]
    if not chosen:
        return
    saved = torch.load(best, map_location="cpu", weights_only=False, mmap=True)
    manifest = json.loads((datamodule.cohort.folder / MANIFEST).read_text())
    score = checkpoint.best_model_score
    info = {
        "epoch": saved.get("epoch"),
        "global_step": saved.get("global_step"),
        "monitor": checkpoint.monitor,
        "monitor_value": None if score is None else float(score),
        "task": cfg.task.name,
        "cohort_fingerprint": manifest.get("cohort"),
        "medweave_version": __version__,
    }
    for logger in chosen:
        log_tested_model(logger, best, info, logger.register_as)


def main() -> None:
    from medweave.cli.hydra_main import run

    run(train, "train", "medweave-train")


if __name__ == "__main__":
    main()

"""medweave-pretrain: pretrain the EHR backbone on every subject's timeline, tracked in MLflow.

medweave-pretrain data.root=data/sandbox                          # next event + time to it
medweave-pretrain data.root=data/sandbox pretrain/objective=masked  # masked events
medweave-pretrain data.root=data/sandbox pretrain.eval_subjects=exclude
medweave-pretrain debug=pretrain_smoke data.root=data/sandbox     # seconds, what the tests run
medweave-pretrain ... trainer=ddp trainer.devices=2                # DDP (trainer=fsdp, ddp_multi_node)
medweave-pretrain ... trainer=gpu                                  # one GPU, bf16-mixed

Then fine-tune a task from it with one override:
medweave-train data.root=data/sandbox model.encoders.ehr_codes.pretrained=<run>/checkpoints/last.ckpt

A separate command, not an experiment of medweave-train: pretraining has no task, head, fusion
or held-out test, and its data are every subject's timeline (data/ehr/pretrain.py), not a task
cache; it shares the trainer, logger, callbacks, paths and hydra groups, the preemption handler
and the exact resume with training.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("medweave")


def check_config(cfg) -> None:
    """Every fault of the command line at once, before the cohort is read."""
    from medweave.cli.hydra_main import root_problems
    from medweave.data.ehr.pretrain import EVAL_SUBJECTS
    from medweave.errors import MedweaveError

    problems = root_problems(cfg)
    if cfg.pretrain.eval_subjects not in EVAL_SUBJECTS:
        problems.append(
            f"pretrain.eval_subjects={cfg.pretrain.eval_subjects}: expected one of {list(EVAL_SUBJECTS)}"
        )
    if problems:
        raise MedweaveError("; ".join(problems))


def pretrain(cfg) -> float | None:
    check_config(cfg)  # before the heavy imports
    from contextlib import nullcontext

    from hydra.utils import instantiate

    from medweave.cli.hydra_main import one_log_stream
    from medweave.training.preemption import Preemption

    one_log_stream()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    callbacks = [c for c in callbacks if c is not None]
    preemption = next((c for c in callbacks if isinstance(c, Preemption)), None)
    with preemption.listening() if preemption else nullcontext():
        return _fit(cfg, callbacks, preemption)


def build_module(cfg, vocab: dict, n_bins: int, evaluation_cutoffs: dict | None = None):
    """Backbone + objective + module from the config and the fitted vocabulary; the evaluation
    subjects' cutoffs travel in the checkpoint, so fine-tuning can check the leakage rule."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from medweave.models.pretrain.module import FORMAT, KIND, PretrainModule

    make_objective = instantiate(cfg.pretrain.objective)
    causal = make_objective.func.causal
    args = {
        k: v
        for k, v in OmegaConf.to_container(cfg.model.backbone, resolve=True).items()
        if not k.startswith("_")
    }
    args.update(vocab_size=len(vocab["codes"]) + 3, n_bins=n_bins, causal=causal)
    backbone = instantiate(cfg.model.backbone)(vocab_size=args["vocab_size"], n_bins=n_bins, causal=causal)
    sizes = {"dim": backbone.dim, "vocab_size": backbone.vocab_size}
    if make_objective.func.name == "masked":
        sizes["n_bins"] = n_bins
    objective = make_objective(**sizes)
    extras = {
        "kind": KIND,
        "format": FORMAT,
        "objective": objective.name,
        "backbone": {"class": type(backbone).__name__, "args": args},
        "vocab": vocab,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "evaluation_cutoffs": evaluation_cutoffs,
    }
    module = PretrainModule(
        backbone,
        objective,
        instantiate(cfg.model.optimizer),
        cfg.model.warmup_steps,
        checkpoint_extras=extras,
    )
    if cfg.model.get("compile"):
        backbone.compile()  # in place: state_dict keys keep their names
    return module


def _fit(cfg, callbacks: list, preemption) -> float | None:
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from medweave.cli.train import open_run, whole_checkpoint
    from medweave.data.ehr import pretrain as store
    from medweave.training.preemption import resume_checkpoint, trainer_plugins

    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_checkpoint(output_dir, cfg.get("ckpt_path"))
    vocab = None
    if ckpt_path:  # a resumed run keeps its vocabulary (the embeddings' rows), whatever the store says now
        vocab = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)["medweave"]["vocab"]
    datamodule = instantiate(cfg.data, vocab=vocab)
    datamodule.prepare_data()  # every rank: a finished shard is only read (Lightning's own call is rank 0's)
    datamodule.setup()
    rule = store.eval_cutoffs(datamodule.root, datamodule.eval_subjects, datamodule.labels_dir)
    model = build_module(cfg, datamodule.vocab, datamodule.vocab["n_bins"], store.evaluation_cutoffs(rule))

    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer = instantiate(cfg.trainer, _partial_=True)(
        logger=loggers or False, callbacks=callbacks, plugins=trainer_plugins()
    )
    counts = {
        "params/backbone": sum(p.numel() for p in model.backbone.parameters()),
        "params/objective": sum(p.numel() for p in model.objective.parameters()),
        **datamodule.summary(),
    }
    if trainer.is_global_zero:
        log.info("Pretraining (%s): %s", model.objective.name, counts)
        open_run(loggers, cfg, output_dir, counts, ckpt_path)
    L.seed_everything(cfg.seed + trainer.global_rank, workers=True, verbose=False)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **whole_checkpoint(trainer.fit))
    if preemption:
        preemption.stop_if_requested(trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        log.info("Metrics: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        log.info(
            "Pretrained backbone: %s (fine-tune with model.encoders.ehr_codes.pretrained=<it>)", best or "-"
        )
    return metrics.get("val/loss")


def main() -> None:
    from medweave.cli.hydra_main import run

    run(pretrain, "pretrain", "medweave-pretrain")


if __name__ == "__main__":
    main()

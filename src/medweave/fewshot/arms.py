"""The four few-shot arms, each ``fit(draw) -> held-out scores`` on the one prepared task cache.

- ``scratch``: medweave-train's model (EHR codes encoder, fusion, head) from random weights.
- ``finetuned``: the same model with its EHR encoder started from a medweave-pretrain checkpoint
  (model.encoders.ehr_codes.pretrained), fine-tuned with the recipe below. With
  ``fewshot.prior`` its logit starts from the checkpoint's zero-shot risk of the task's outcome
  code and the head learns what to add (models/pretrain/load.py ZeroShotPrior).
- ``zeroshot``: that zero-shot risk alone, nothing fitted (the same at every k).
- ``probe``: logistic regression on the frozen pretrained embeddings (embeddings/probe.py), the
  vectors cached once by medweave-embed's code (embeddings/embed.py); with ``fewshot.prior``, the
  zero-shot logit is its offset, as it is the fine-tuned model's starting point.
- ``gbm``: the count-based XGBoost baseline (baselines/), its features built once.

The neural recipe for 2 to 256 examples (configs/fewshot.yaml ``fewshot.train``): a constant
learning rate (AdamW), a few tens of epochs at most, early stopping on the loss of the draw's
k-sampled tuning subjects (with 2k of them AUROC takes a handful of values; the loss ranks epochs
finely), and the weights of the best tuning epoch. Fine-tuning adds two habits of the transfer
literature (ULMFiT's discriminative rates, LP-FT's head first): the backbone's rate is a tenth of
the rest, and it stays frozen for the first ``head_epochs`` epochs while the new parts (recency
term, fusion, head) fit to it. Nothing is chosen on held-out.
"""

from __future__ import annotations

import copy
import logging
import time
from functools import partial

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from medweave.data import contract as c
from medweave.data.datamodule import PreparedCohort, SplitDataset, _already_collated
from medweave.fewshot.draws import Draw

log = logging.getLogger("medweave")

ARMS = ("scratch", "finetuned", "probe", "gbm", "zeroshot")
PRETRAINED_ARMS = ("finetuned", "probe", "zeroshot")


def rows_loader(cohort: PreparedCohort, rows: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0):
    """Batches of the given cache rows (the datamodule's batch contract)."""
    dataset = SplitDataset(cohort, c.TRAIN_SPLIT)
    dataset.rows = np.asarray(rows)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=_already_collated,
        generator=torch.Generator().manual_seed(seed),
    )


def grouped_adamw(
    params, backbone: torch.nn.Module | None, lr: float, backbone_lr: float, weight_decay: float
):
    """AdamW with the pretrained backbone's parameters at their own (lower) rate."""
    params = list(params)
    inner = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    groups = [{"params": [p for p in params if id(p) not in inner], "lr": lr}]
    if inner:
        groups.append({"params": [p for p in params if id(p) in inner], "lr": backbone_lr})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


class HeadFirst(L.Callback):
    """The backbone stays frozen for the first ``epochs`` epochs (its gradients are None, so AdamW
    leaves it alone, weight decay included), then trains."""

    def __init__(self, backbone: torch.nn.Module, epochs: int):
        self.backbone, self.epochs = backbone, epochs

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.backbone.requires_grad_(trainer.current_epoch >= self.epochs)


class KeepBest(L.Callback):
    """The weights of the epoch with the lowest tuning loss, kept in memory (no checkpoint files:
    a sweep runs hundreds of fits) and restored at the end of fitting; ``start`` (loss, weights)
    is a candidate from before the first epoch."""

    def __init__(self, monitor: str = "val/loss", start: tuple[float, dict] | None = None):
        self.monitor, self.best, self.state, self.best_epoch = monitor, float("inf"), None, None
        if start is not None:
            (self.best, self.state), self.best_epoch = start, 0

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best, self.best_epoch = float(value), trainer.current_epoch + 1
            self.state = copy.deepcopy(pl_module.state_dict())

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)


def start_at_prior(model, train, tuning) -> tuple[float, dict]:
    """A model whose logit is a zero-shot prior plus a zero head: set the head's bias so that the
    mean predicted risk on the draw's train subjects is their share of positives (k of 2k, where
    the prior was made for the population's rate; bisection on one number), and return
    (tuning loss, weights): the start that fine-tuning's epochs must beat on the tuning loss."""
    model.eval()
    with torch.no_grad():
        z, y = [], []
        for batch in train:
            model(batch)
            z.append(model.encoders[c.EHR_CODES].prior_logit.double())
            y.append(batch["targets"].double())
        z, target = torch.cat(z), torch.cat(y).mean()
        low, high = -50.0, 50.0  # the mean risk rises with b: bisection cannot overshoot
        for _ in range(60):
            b = (low + high) / 2
            low, high = (b, high) if torch.sigmoid(z + b).mean() < target else (low, b)
        model.head.net[-1].bias.fill_((low + high) / 2)
        losses = [float(model.head.loss(model(batch), batch)) for batch in tuning]
    return float(np.mean(losses)), copy.deepcopy(model.state_dict())


class NeuralArm:
    """scratch, finetuned or zeroshot: build medweave-train's model, fit on the draw (zeroshot:
    not at all), score held-out.

    Args:
        name: ``scratch``, ``finetuned`` or ``zeroshot``.
        model_cfg: ``cfg.model`` (model.encoders.ehr_codes.pretrained set for ``finetuned``).
        trainer_cfg: ``cfg.trainer`` (accelerator, precision, clipping, debug limits).
        inputs, head_inputs: what the datamodule reports for the encoders and the head.
        cohort: the prepared task cache.
        held_out: the held-out batches, read once and shared by every fit.
        recipe: ``fewshot.train`` (batch_size, max_epochs, patience, lr, backbone_lr,
            head_epochs, weight_decay).
    """

    def __init__(self, name, model_cfg, trainer_cfg, inputs, head_inputs, cohort, held_out, recipe, seed):
        self.name, self.model_cfg, self.trainer_cfg = name, model_cfg, trainer_cfg
        self.inputs, self.head_inputs, self.cohort = inputs, head_inputs, cohort
        self.held_out, self.recipe, self.seed = held_out, recipe, seed
        self.zero_shot = None  # zeroshot's scores: the same for every draw

    def fit(self, draw: Draw) -> np.ndarray:
        from hydra.utils import instantiate
        from lightning.pytorch.callbacks import EarlyStopping

        from medweave.evaluation.run import collect_predictions
        from medweave.models.build import build_model

        r = self.recipe
        seed = self.seed + 1000 * draw.draw
        L.seed_everything(seed, workers=True, verbose=False)
        model = build_model(self.model_cfg, [c.EHR_CODES], self.inputs, head_inputs=self.head_inputs)
        if self.name == "zeroshot":
            started = time.perf_counter()
            if self.zero_shot is None:
                self.zero_shot = collect_predictions(model.eval(), self.held_out)["score"]
            self.epochs, self.best_epoch, self.predict_s = 0, 0, time.perf_counter() - started
            return self.zero_shot
        pretrained = model.encoders[c.EHR_CODES].pretrained
        backbone = pretrained.backbone if pretrained is not None else None
        model.optimizer_factory = partial(
            grouped_adamw, backbone=backbone, lr=r.lr, backbone_lr=r.backbone_lr, weight_decay=r.weight_decay
        )
        model.scheduler_factory = None  # constant rate: early stopping decides how long
        batch = min(int(r.batch_size), len(draw.train))
        train = rows_loader(self.cohort, draw.train, batch, shuffle=True, seed=seed)
        tuning = rows_loader(self.cohort, draw.tuning, max(len(draw.tuning), 1), shuffle=False)
        start = None
        if pretrained is not None and pretrained.prior is not None:
            start = start_at_prior(model, train, tuning)
        keep = KeepBest(start=start)
        callbacks = [EarlyStopping("val/loss", patience=r.patience, mode="min"), keep]
        if backbone is not None and r.head_epochs > 0:
            callbacks.append(HeadFirst(backbone, r.head_epochs))
        trainer = instantiate(self.trainer_cfg, _partial_=True)(
            max_epochs=r.max_epochs,
            devices=1,
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=50,
        )
        trainer.fit(model, train_dataloaders=train, val_dataloaders=tuning)
        self.epochs, self.best_epoch = trainer.current_epoch, keep.best_epoch  # 0: the start was kept
        started = time.perf_counter()
        score = collect_predictions(model, self.held_out)["score"]
        self.predict_s = time.perf_counter() - started  # the one held-out pass (what the sweep repeats most)
        return score


class PriorLogits:
    """The zero-shot prior logits of cache rows (a PretrainedEHR built with ``prior``), computed
    when first asked for and kept: the draws share most of their rows."""

    def __init__(self, encoder, batch_size: int):
        self.encoder, self.batch_size, self.known = encoder, batch_size, {}

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        todo = np.array(sorted({int(r) for r in rows} - self.known.keys()), dtype=np.int64)
        with torch.no_grad():
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                self.encoder(chunk)
                logits = self.encoder.module.prior_logit.double().cpu().numpy()
                self.known.update(zip(chunk.tolist(), logits.tolist(), strict=True))
        return np.array([self.known[int(r)] for r in rows])


class ProbeArm:
    """Logistic regression on the frozen pretrained embeddings, its strength by tuning AUROC;
    with ``prior`` (PriorLogits), the zero-shot logit is its offset (embeddings/probe.py)."""

    name = "probe"

    def __init__(self, vectors: np.ndarray, target: np.ndarray, held_out: np.ndarray, prior=None):
        self.vectors, self.target, self.held_out, self.prior = vectors, target, held_out, prior

    def fit(self, draw: Draw) -> np.ndarray:
        from medweave.embeddings.probe import fit_probe

        x, y = self.vectors, self.target
        if self.prior is None:
            predict, _ = fit_probe(x[draw.train], y[draw.train], x[draw.tuning], y[draw.tuning])
            return predict(x[self.held_out])
        offsets = (self.prior(draw.train), self.prior(draw.tuning))
        predict, _ = fit_probe(x[draw.train], y[draw.train], x[draw.tuning], y[draw.tuning], offsets=offsets)
        return predict(x[self.held_out], self.prior(self.held_out))


class GbmArm:
    """The count-based GBM (baselines/models.py GradientBoosting), rounds by tuning early stopping."""

    name = "gbm"

    def __init__(self, make_model, features, target: np.ndarray, held_out: np.ndarray):
        self.make_model, self.x, self.target, self.held_out = make_model, features, target, held_out

    def fit(self, draw: Draw) -> np.ndarray:
        model = self.make_model()
        x, y = self.x, self.target
        model.fit("binary", x[draw.train], y[draw.train], x[draw.tuning], y[draw.tuning])
        return np.asarray(model.predict(x[self.held_out]), np.float64)

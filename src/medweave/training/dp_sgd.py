"""DP-SGD (privacy=dp): train with a (epsilon, delta) guarantee for every training subject.

Each step, every subject's gradient is clipped to ``max_grad_norm``, the clipped gradients are
summed, Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm`` is added once,
and the sum is divided by the expected batch size (Abadi et al. 2016; Opacus). Batches are Poisson
samples (data.sampling=poisson): the accountant's amplification by sampling assumes it. One subject
is one row of the training split, so the guarantee is per person.

Under DDP (the design): every rank clips its own subjects' gradients (Opacus hooks, per rank);
Lightning's DDP gradient all-reduce is switched off (a no-op communication hook: it would average
unclipped gradients that DP-SGD throws away anyway); then Opacus's DistributedDPOptimizer adds the
noise on rank 0 only and all-reduces the clipped sums, so the noise enters once per logical batch
and every rank applies the same update. The sampler draws one global Poisson batch per step and each
rank keeps its shard, so the accountant uses the global sample rate q = batch_size x ranks /
subjects and the global step count.

The noise multiplier comes from the accountant (Opacus's ``get_noise_multiplier``): the smallest
that keeps epsilon within ``target_epsilon`` after the planned steps (max_epochs x batches per
epoch). The accountant's history, the noise and the noise generator's state are in every
checkpoint: a preempted run resumes with exactly the epsilon and the noise of an unbroken one.
Before a step that would take epsilon past the target (a resume with more epochs), training stops.

Not covered: subjects of the tuning split (model selection and early stopping read them), and
anything outside the training loop (the prepared vocabularies count codes over training subjects,
with ``data.vocab_min_subjects`` as the only protection).
"""

from __future__ import annotations

import logging
import secrets
import warnings
from contextlib import contextmanager

import lightning as L
import numpy as np
import torch

from medweave.errors import MedweaveError

log = logging.getLogger("medweave")

EPSILON = "privacy/epsilon"


def default_delta(n_subjects: int) -> float:
    """delta is the chance that the guarantee fails outright: it must be far below 1/n (releasing
    one random subject's record has delta = 1/n). 1/(10 n), and never above 1e-5."""
    return min(1e-5, 1.0 / (10 * max(n_subjects, 1)))


def noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier whose epsilon after ``steps`` stays within the target."""
    from opacus.accountants.utils import get_noise_multiplier

    if not target_epsilon > 0:
        raise MedweaveError(f"privacy.target_epsilon={target_epsilon}: expected a positive number")
    if not 0 < delta < 1:
        raise MedweaveError(f"privacy.delta={delta}: expected a probability in (0, 1), far below 1/subjects")
    floor = epsilon_floor(delta, sample_rate, steps) if accountant == "rdp" else None
    if floor is None or target_epsilon > floor:
        try:
            with _quiet_accountant():
                return get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=0.01,
                )
        except ValueError:
            pass
    least = f"spend at least epsilon={floor:.3g} whatever the noise" if floor else "cannot stay within it"
    raise MedweaveError(
        f"privacy.target_epsilon={target_epsilon} is out of reach: {steps} steps at sample rate "
        f"{sample_rate:.4g} (batch size x ranks / subjects) with delta={delta:.3g} {least}; raise "
        "privacy.target_epsilon, or take fewer steps (trainer.max_epochs) or a smaller data.batch_size"
    )


def epsilon_floor(delta: float, sample_rate: float, steps: int) -> float:
    """The RDP accountant's epsilon as the noise grows without bound (Opacus's search stops at a
    noise multiplier of 1e6): the largest orders decide it, which are whole numbers (fast to compute)."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant
    from opacus.accountants.utils import MAX_SIGMA

    orders = [a for a in RDPAccountant.DEFAULT_ALPHAS if float(a).is_integer()]
    rdp = compute_rdp(q=sample_rate, noise_multiplier=MAX_SIGMA, steps=steps, orders=orders)
    with _quiet_accountant():
        return float(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


def epsilon_after(
    sigma: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    from opacus.accountants import create_accountant

    counter = create_accountant(mechanism=accountant)
    counter.history = [(sigma, sample_rate, steps)]
    with _quiet_accountant():
        return counter.get_epsilon(delta=delta)


def steps_within(
    target: float, sigma: float, delta: float, sample_rate: float, start: int, accountant: str
) -> int:
    """The most steps whose epsilon stays within ``target`` (usually ``start``, the planned steps)."""

    def fits(k: int) -> bool:
        return k == 0 or epsilon_after(sigma, delta, sample_rate, k, accountant) <= target

    low = max(start, 0)
    while not fits(low):
        low //= 2
    high = max(2 * low, low + 1)
    while fits(high):
        low, high = high, 2 * high
    while high - low > 1:  # fits(low), not fits(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


@contextmanager
def _quiet_accountant():
    """Opacus warns when the best order is its largest, which a large noise multiplier always makes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


class DifferentialPrivacy(L.Callback):
    """Args:
    target_epsilon: the privacy budget the whole run may spend.
    delta: the (epsilon, delta) guarantee's delta; null: ``default_delta`` of the training subjects.
    max_grad_norm: each subject's gradient is clipped to this L2 norm (replaces
        trainer.gradient_clip_val, which clips the batch's sum).
    accountant: Opacus accountant: rdp (Renyi DP, Mironov 2017), prv or gdp.
    noise_seed: seeds the noise; null (the default) draws the seed from the operating system: noise
        that can be regenerated from a logged seed protects nothing. Tests pin it.
    """

    def __init__(
        self,
        target_epsilon: float = 8.0,
        delta: float | None = None,
        max_grad_norm: float = 1.0,
        accountant: str = "rdp",
        noise_seed: int | None = None,
    ):
        if not max_grad_norm > 0:
            raise MedweaveError(f"privacy.max_grad_norm={max_grad_norm}: expected a positive number")
        self.target_epsilon, self.delta, self.max_grad_norm = target_epsilon, delta, max_grad_norm
        self.accountant_name = accountant
        self.noise_seed = secrets.randbits(63) if noise_seed is None else noise_seed
        self.noise: torch.Generator | None = None  # on the model's device, made at the start of training
        self.sigma: float | None = None  # the noise multiplier, fixed once per run
        self._restored: dict | None = None
        self.sampling_seed: int | None = None  # the Poisson draws' seed, secret like the noise's
        self._hooks = None
        self._stopped = False

    # --- set-up: before DDP wraps the model and before the optimizer exists ----------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self._hooks is not None:
            return
        from medweave.training.dp_modules import prepare_model

        self._check_trainer(trainer, pl_module)
        self._hooks = prepare_model(pl_module)

    def _check_trainer(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        problems = []
        if not isinstance(trainer.strategy, SingleDeviceStrategy | DDPStrategy):
            problems.append(f"strategy {type(trainer.strategy).__name__}: use one device or trainer=ddp")
        if trainer.accumulate_grad_batches != 1:
            problems.append("trainer.accumulate_grad_batches must be 1 (each step is one Poisson batch)")
        if trainer.gradient_clip_val:
            problems.append(
                f"trainer.gradient_clip_val={trainer.gradient_clip_val} clips the batch's gradient; DP-SGD "
                "clips each subject's (privacy.max_grad_norm): set trainer.gradient_clip_val=null"
            )
        min_epochs = getattr(trainer.fit_loop, "min_epochs", None)
        min_steps = getattr(trainer.fit_loop.epoch_loop, "min_steps", None)
        if min_epochs or min_steps:
            problems.append(
                f"trainer.min_epochs={min_epochs} / trainer.min_steps={min_steps} would keep training past "
                "the budget's stop: leave them unset"
            )
        if str(trainer.precision) in ("16-mixed", "16", "16-true"):
            problems.append(
                f"trainer.precision={trainer.precision}: the loss scaler inflates every subject's gradient "
                "before clipping; use 32-true or bf16-mixed"
            )
        datamodule = trainer.datamodule
        if getattr(datamodule, "sampling", None) != "poisson":
            problems.append("data.sampling must be poisson (the accountant assumes Poisson batches)")
        if type(getattr(pl_module, "head", None)).__name__ == "CoxHead":
            problems.append(
                "the Cox partial likelihood couples the subjects of a batch (no per-subject gradient to "
                "clip): use a discrete-time survival task (task=cvd_survival_discrete)"
            )
        if any(getattr(m, "_compiled_call_impl", None) for m in pl_module.modules()):
            problems.append("model.compile.enabled must be false (per-subject gradient hooks)")
        if problems:
            raise MedweaveError("privacy=dp: " + "; ".join(problems))

    # --- fit start: a checkpoint is restored, the loaders are not built yet ---------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Seed the Poisson draws from the secret noise seed, not from the logged data.seed: the
        accountant's amplification by sampling holds only while who is in each batch is secret. The
        seed is rank 0's (every rank draws the same global mask) and goes into the checkpoint, so a
        resumed run draws the same batches."""
        saved = (self._restored or {}).get("sampling_seed")
        if saved is None and self._restored:  # a checkpoint from before the seed was kept
            saved = trainer.datamodule.seed
        if saved is None:
            derived = int(np.random.SeedSequence([self.noise_seed, 1]).generate_state(1, np.uint64)[0])
            saved = trainer.strategy.broadcast(derived >> 1, src=0)
        self.sampling_seed = int(saved)
        trainer.datamodule.sampling_seed = self.sampling_seed

    # --- training start: the optimizer exists, the loaders are built, a checkpoint is restored ----
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from opacus.accountants import create_accountant
        from opacus.optimizers import DistributedDPOptimizer, DPOptimizer

        from medweave.data.sampler import PoissonSubjectSampler

        sampler = trainer.train_dataloader.sampler
        if not isinstance(sampler, PoissonSubjectSampler):
            raise MedweaveError(
                "privacy=dp: the training loader is not Poisson-sampled (data.sampling=poisson)"
            )
        self.sample_rate, n = sampler.sample_rate, sampler.n
        self.delta = self.delta if self.delta is not None else default_delta(n)
        self.planned_steps = int(trainer.estimated_stepping_batches)
        self.accountant = create_accountant(mechanism=self.accountant_name)
        self.noise = torch.Generator(device=pl_module.device).manual_seed(self.noise_seed)
        if self._restored:
            saved = self._restored
            if abs(saved["sample_rate"] - self.sample_rate) > 1e-12:
                raise MedweaveError(
                    f"privacy=dp: the checkpoint was trained at sample rate {saved['sample_rate']:.4g}, this "
                    f"run samples at {self.sample_rate:.4g} (batch size x ranks / subjects): resume with "
                    "the same data.batch_size and number of ranks, or the budget is not kept"
                )
            self.sigma, self.delta = saved["noise_multiplier"], saved["delta"]
            self.accountant.load_state_dict(saved["accountant"])
            self.noise.set_state(saved["noise_generator"].to(torch.uint8))
            self._restored = None
        if self.sigma is None:
            self.sigma = noise_multiplier(
                self.target_epsilon, self.delta, self.sample_rate, self.planned_steps, self.accountant_name
            )
        [optimizer] = trainer.strategy.optimizers
        distributed = trainer.world_size > 1
        kind = DistributedDPOptimizer if distributed else DPOptimizer
        private = kind(
            optimizer,
            noise_multiplier=self.sigma,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=trainer.datamodule.batch_size,  # per rank; the all-reduce averages ranks
            loss_reduction="mean",
            generator=self.noise,
        )
        private.attach_step_hook(self._account)
        trainer.strategy.optimizers = [private]
        if distributed:
            from torch.distributed.algorithms.ddp_comm_hooks.debugging_hooks import noop_hook

            trainer.strategy.model.register_comm_hook(None, noop_hook)
        self.budget_steps = steps_within(
            self.target_epsilon,
            self.sigma,
            self.delta,
            self.sample_rate,
            self.planned_steps,
            self.accountant_name,
        )
        if trainer.is_global_zero:
            log.info(
                "DP-SGD: target epsilon %.3g, delta %.3g, noise multiplier %.4g, max grad norm %.3g, "
                "sample rate %.4g (%d subjects), %d steps planned",
                self.target_epsilon,
                self.delta,
                self.sigma,
                self.max_grad_norm,
                self.sample_rate,
                n,
                self.planned_steps,
            )
        self._stop_if_next_step_exceeds(trainer)

    def _account(self, optimizer) -> None:
        self.accountant.step(noise_multiplier=self.sigma, sample_rate=self.sample_rate)

    def steps_done(self) -> int:
        return sum(steps for *_, steps in self.accountant.history)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        with _quiet_accountant():
            return self.accountant.get_epsilon(delta=self.delta)

    def _stop_if_next_step_exceeds(self, trainer: L.Trainer) -> None:
        if self._stopped or self.steps_done() < self.budget_steps:
            return
        self._stopped = True
        trainer.should_stop = True
        if trainer.is_global_zero and trainer.global_step < self.planned_steps:  # not the plan's own end
            log.warning(
                "DP-SGD stops training at step %d of %d: epsilon %.4g of the budget %.4g is spent and "
                "one more step would exceed it",
                trainer.global_step,
                self.planned_steps,
                self.epsilon(),
                self.target_epsilon,
            )

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._stop_if_next_step_exceeds(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The same on every rank; sync_dist only keeps Lightning from warning under DDP.
        pl_module.log(EPSILON, self.epsilon(), on_step=False, on_epoch=True, sync_dist=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.sigma is not None:
            log.info(
                "DP-SGD: epsilon %.4g spent (target %.4g, delta %.3g) after %d steps",
                self.epsilon(),
                self.target_epsilon,
                self.delta,
                self.steps_done(),
            )

    # --- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.sigma is None:
            return {}
        return {
            "accountant": self.accountant.state_dict(),
            "noise_multiplier": self.sigma,
            "delta": self.delta,
            "sample_rate": self.sample_rate,
            "sampling_seed": self.sampling_seed,
            "noise_generator": self.noise.get_state() if self.noise is not None else None,
            "epsilon": self.epsilon(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict or None

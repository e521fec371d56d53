"""Membership inference scores and their figures, on arrays (no model, no cohort here).

A higher attack score means "more likely a training member". Every model output is first turned
into phi, the logit-scaled confidence in the true label, log(p / (1 - p)) with p the probability
given to the subject's own label (for a binary head: the logit with its sign flipped for label 0).
LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles") showed that phi
is close to Gaussian across models, which its likelihood ratio assumes.

- loss attack (Yeom et al. 2018): the per-subject loss itself; score = -loss.
- LiRA online: Gaussians of phi fitted per subject over the shadow models that trained on it
  (IN) and over those that did not (OUT); score = log N(phi; mu_in, s_in) - log N(phi; mu_out,
  s_out). With few shadow models per-subject variances are noise, so one global IN and one
  global OUT variance are used (the paper's "fixed variance" variant). A subject no shadow
  trained on (or every shadow did) gets the mean IN-OUT shift of the others.
- LiRA offline: OUT models only; score = Phi((phi - mu_out) / s_out), one-sided.
"""

from __future__ import annotations

import numpy as np

from medweave.errors import MedweaveError


def signed_logit_confidence(logit: np.ndarray, target: np.ndarray) -> np.ndarray:
    """phi for a binary head: the logit of the probability given to the true label."""
    return np.where(np.asarray(target) > 0.5, 1.0, -1.0) * np.asarray(logit, float)


def binary_loss(logit: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-subject binary cross-entropy from logits, stable for large |logit|."""
    return np.logaddexp(0.0, -signed_logit_confidence(logit, target))


def loss_attack(loss: np.ndarray) -> np.ndarray:
    return -np.asarray(loss, float)


def _shadow_stats(phi_shadow: np.ndarray, in_shadow: np.ndarray):
    """Per-subject IN and OUT means (NaN where a subject has none) and global variances."""
    phi_shadow = np.asarray(phi_shadow, float)
    in_shadow = np.asarray(in_shadow, bool)
    if phi_shadow.shape != in_shadow.shape or phi_shadow.ndim != 2:
        raise MedweaveError(
            f"shadow signals {phi_shadow.shape} and membership {in_shadow.shape}: expected equal [K, n]"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_in = np.where(in_shadow, phi_shadow, 0).sum(0) / in_shadow.sum(0)
        mu_out = np.where(~in_shadow, phi_shadow, 0).sum(0) / (~in_shadow).sum(0)
    mu_in = np.where(in_shadow.any(0), mu_in, np.nan)
    mu_out = np.where((~in_shadow).any(0), mu_out, np.nan)

    def pooled_sd(mask, mu):
        dev = (phi_shadow - mu[None, :])[mask & ~np.isnan(mu)[None, :]]
        return float(max(np.sqrt(np.mean(dev**2)) if dev.size else 1.0, 1e-6))

    return mu_in, mu_out, pooled_sd(in_shadow, mu_in), pooled_sd(~in_shadow, mu_out)


def lira_online(phi: np.ndarray, phi_shadow: np.ndarray, in_shadow: np.ndarray) -> np.ndarray:
    """LiRA's likelihood ratio for each subject. ``phi`` [n]: the target model's phi;
    ``phi_shadow`` [K, n]: each shadow model's phi; ``in_shadow`` [K, n]: shadow k trained on i."""
    mu_in, mu_out, sd_in, sd_out = _shadow_stats(phi_shadow, in_shadow)
    both = ~np.isnan(mu_in) & ~np.isnan(mu_out)
    if not both.any():
        raise MedweaveError(
            "LiRA online needs subjects seen IN and OUT by the shadow models: train at least 2"
        )
    shift = float(np.mean(mu_in[both] - mu_out[both]))
    mu_in = np.where(np.isnan(mu_in), mu_out + shift, mu_in)
    mu_out = np.where(np.isnan(mu_out), mu_in - shift, mu_out)
    phi = np.asarray(phi, float)
    log_in = -0.5 * ((phi - mu_in) / sd_in) ** 2 - np.log(sd_in)
    log_out = -0.5 * ((phi - mu_out) / sd_out) ** 2 - np.log(sd_out)
    return log_in - log_out


def lira_offline(phi: np.ndarray, phi_shadow: np.ndarray, in_shadow: np.ndarray) -> np.ndarray:
    """One-sided offline LiRA: how far above the OUT models' phi the target's lies."""
    from scipy.special import log_ndtr  # log Phi; scipy.special loads far faster than scipy.stats

    _, mu_out, _, sd_out = _shadow_stats(phi_shadow, in_shadow)
    if np.isnan(mu_out).all():
        raise MedweaveError("LiRA offline needs shadow models that did not train on the subjects")
    mu_out = np.where(np.isnan(mu_out), np.nanmean(mu_out), mu_out)
    return log_ndtr((np.asarray(phi, float) - mu_out) / sd_out)


def tpr_at_fpr(member: np.ndarray, score: np.ndarray, fpr: float) -> float:
    """The highest true-positive rate of a threshold that flags at most ``fpr`` of non-members:
    with k = floor(fpr * non-members) false positives allowed, the threshold sits just above the
    (k+1)-th highest non-member score (ties with it are not flagged)."""
    member = np.asarray(member, bool)
    score = np.asarray(score, float)
    pos, neg = score[member], np.sort(score[~member])[::-1]
    if not len(pos) or not len(neg):
        return float("nan")
    k = int(np.floor(fpr * len(neg) + 1e-9))
    if k >= len(neg):
        return 1.0
    return float(np.mean(pos > neg[k]))


def roc_points(member: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of every threshold, for the log-log ROC figure."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(member, int), np.asarray(score, float))
    return fpr, tpr


def attack_figures(
    member: np.ndarray, score: np.ndarray, fprs: list[float], n_boot: int, seed: int
) -> dict[str, dict[str, float]]:
    """AUROC and TPR at each FPR in ``fprs``, each with a percentile-bootstrap 95 % CI over subjects
    (members and non-members resampled together, as evaluation/bootstrap.py does for metrics)."""
    from medweave.evaluation.bootstrap import with_ci
    from medweave.evaluation.resampled import auroc

    member = np.asarray(member, bool)
    score = np.asarray(score, float)
    if member.all() or not member.any():
        raise MedweaveError("an attack needs both members and non-members")

    def figures(rows):
        m, s = member[rows], score[rows]
        out = {"auroc": float(auroc(m, s, np.ones((1, len(rows))))[0])}
        for f in fprs:
            out[fpr_label(f)] = tpr_at_fpr(m, s, f)
        return out

    return with_ci(figures, len(member), n_boot=n_boot, seed=seed)


def fpr_label(fpr: float) -> str:
    """0.01 -> 'tpr_at_fpr_1pct', 0.001 -> 'tpr_at_fpr_0.1pct' (metric names)."""
    return f"tpr_at_fpr_{100 * fpr:g}pct"

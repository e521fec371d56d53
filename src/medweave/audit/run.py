"""The audit, top to bottom: plant canaries, train the target model, train shadow models, score
every model on the audited subjects, attack, write the report, log it.

Who is who. Members: subjects of the cohort's train split (the target trains on them and on the
planted canaries). Non-members: held_out subjects. The two sides are balanced: as many members
are drawn at random as there are non-members (at most ``audit.max_per_side``). Shadow model k
trains, with the target's config and seed + 1 + k, on a random half of train + held_out (the
pool), the tuning split kept for its checkpoint choice; every audited subject is thus IN some
shadows and OUT of others, which LiRA needs. Canaries are not in any shadow's data.

Every model trains through medweave-train's own ``train(cfg)`` on a derived cohort (cohorts.py)
in ``<run dir>/work/``, removed at the end (``audit.keep_work=true`` keeps it). The target is an
MLflow run nested under the audit's (so what training logs, e.g. a DP run's epsilon, is kept);
shadow models log nowhere.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from medweave.audit import attacks as A
from medweave.audit.canaries import exposure, plan_canaries
from medweave.audit.cohorts import derive_cohort, read_splits, splits_table
from medweave.data import contract as c
from medweave.errors import MedweaveError
from medweave.evaluation.bootstrap import with_ci
from medweave.evaluation.resampled import auroc

log = logging.getLogger("medweave")


def check_audit_config(cfg) -> None:
    """Every fault of the audit settings at once."""
    problems = []
    if cfg.task.type != "binary":
        problems.append(
            f"task {cfg.task.name} is {cfg.task.type}: medweave-audit audits binary tasks "
            "(task=cvd_onset_1y, t1d_onset_1y or task.type=binary)"
        )
    if cfg.data.get("aces") or cfg.data.get("labels_dir"):
        problems.append(
            "medweave-audit plants canaries into labels/<task>.parquet: "
            "ACES tasks and data.labels_dir are not supported"
        )
    a = cfg.audit
    if a.shadow_models < 2:
        problems.append(f"audit.shadow_models={a.shadow_models}: LiRA needs at least 2")
    if a.checkpoint not in ("best", "last"):
        problems.append(f"audit.checkpoint={a.checkpoint}: expected best or last")
    if any(not 0 < f < 1 for f in a.fpr):
        problems.append(f"audit.fpr={list(a.fpr)}: expected false-positive rates between 0 and 1")
    if problems:
        raise MedweaveError("; ".join(problems))


def run_audit(cfg) -> dict:
    from medweave.data.contract import require_root

    check_audit_config(cfg)
    a = cfg.audit
    out = Path(cfg.paths.output_dir)
    work = out / "work"
    root = require_root(cfg.data.root)
    splits = read_splits(root)
    ids, names = splits.column("subject_id").to_numpy(), np.asarray(splits.column("split").to_pylist())
    train_ids, held_ids = ids[names == c.TRAIN_SPLIT], ids[names == c.HELD_OUT_SPLIT]
    if not len(train_ids) or not len(held_ids):
        raise MedweaveError(f"{root / c.SUBJECT_SPLITS}: the audit needs train and held_out subjects")
    rng = np.random.default_rng([a.seed, 1])
    side = min(len(train_ids), len(held_ids), a.max_per_side or len(held_ids))
    members = np.sort(rng.choice(train_ids, side, replace=False))
    nonmembers = np.sort(rng.choice(held_ids, side, replace=False))
    audited = np.concatenate([members, nonmembers])
    is_member = np.arange(len(audited)) < side
    log.info("Audit: %d members (train) against %d non-members (held_out)", side, side)

    loggers = _audit_loggers(cfg, out)
    try:
        report = _measure(cfg, root, work, splits, train_ids, held_ids, audited, is_member, loggers, rng)
        _write_and_log(report, out / "audit", loggers)
    except BaseException:
        for logger in loggers:
            logger.finalize("failed")
        raise
    finally:
        if not a.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    for logger in loggers:
        logger.finalize("success")
    return report


def _measure(cfg, root, work, splits, train_ids, held_ids, audited, is_member, loggers, rng) -> dict:
    """Train and score every model, then attack; the report's content (report.py writes it)."""
    a, k = cfg.audit, cfg.audit.canaries
    plan = plan_canaries(
        root, cfg.task.name, train_ids, k.n, k.codes, k.candidates, k.copies, k.label,
        k.min_code_subjects, k.history_days, a.seed,
    )  # fmt: skip
    planted = splits_table(plan.planted_ids, [c.TRAIN_SPLIT] * len(plan.planted_ids))
    target_root = derive_cohort(
        root, work / "cohorts" / "target", pa.concat_tables([splits, planted]), cfg.task.name,
        plan.planted_events, plan.planted_labels,
    )  # fmt: skip
    log.info("Target model: %d training subjects and %d canary copies", len(train_ids), len(plan.planted_ids))
    parent = next((lg.run_id for lg in loggers if hasattr(lg, "run_id")), None)
    target_ckpt = _train(cfg, target_root, work / "target", cfg.seed, parent)
    score = _score(cfg, target_ckpt, target_root, [c.TRAIN_SPLIT, c.HELD_OUT_SPLIT], work)
    logit, target = _pick(score, audited)
    phi, loss = A.signed_logit_confidence(logit, target), A.binary_loss(logit, target)
    bits = _canary_exposure(cfg, root, work, target_ckpt, plan)
    phi_shadow, in_shadow = _shadow_signals(
        cfg, root, work, splits, np.concatenate([train_ids, held_ids]), audited, rng
    )

    scores = {
        "loss": A.loss_attack(loss),
        "lira_online": A.lira_online(phi, phi_shadow, in_shadow),
        "lira_offline": A.lira_offline(phi, phi_shadow, in_shadow),
    }
    attacks = {
        name: A.attack_figures(is_member, s, list(a.fpr), a.bootstrap, a.seed) for name, s in scores.items()
    }
    held_logit, held_target = _pick(score, held_ids)
    test = with_ci(
        lambda rows: {"auroc": float(auroc(held_target[rows], held_logit[rows], np.ones((1, len(rows))))[0])},
        len(held_ids), a.bootstrap, a.seed,
    )["auroc"]  # fmt: skip
    logged = _child_run_metrics(loggers, parent)
    epsilon = [v for key, v in logged.items() if "epsilon" in key]
    return {
        "task": cfg.task.name,
        "setting": {
            "members": int(is_member.sum()),
            "non_members": int((~is_member).sum()),
            "shadow_models": int(a.shadow_models),
            "shadow_pool": int(len(train_ids) + len(held_ids)),
            "lira": "online with global variances (and offline, one-sided)",
            "fpr_resolution": 1.0 / int((~is_member).sum()),
            "max_epochs": int(cfg.trainer.max_epochs),
            "checkpoint": str(a.checkpoint),
            "privacy": _privacy_setting(cfg),
        },
        "target": {
            "test_auroc": test,
            "test_subjects": int(len(held_ids)),
            "epsilon": epsilon[0] if epsilon else None,  # as training logged it (DP)
            "epochs_logged": int(logged["epoch"]) + 1 if "epoch" in logged else None,
            "mean_loss_members": float(loss[is_member].mean()),
            "mean_loss_non_members": float(loss[~is_member].mean()),
        },
        "attacks": attacks,
        "canaries": {
            "candidates": int(k.candidates),
            "copies": int(k.copies),
            "codes": int(k.codes),
            "ceiling_bits": float(np.log2(k.candidates)),
            "exposure_planted": [round(float(b), 4) for b in bits[plan.is_planted]],
            "exposure_control": [round(float(b), 4) for b in bits[~plan.is_planted]],
            "mean_exposure_planted": float(bits[plan.is_planted].mean()),
            "mean_exposure_control": float(bits[~plan.is_planted].mean()),
        },
        "roc": {name: _roc_for_plot(is_member, s) for name, s in scores.items()},
    }


def _canary_exposure(cfg, root, work, ckpt, plan) -> np.ndarray:
    """Exposure of every canary (planted, then controls) under the model in ``ckpt``. The
    candidates are scored in a cohort of their own, as held_out subjects, beside the planted
    copies as train (the model's vocabularies come from its checkpoint: nothing is fitted)."""
    log.info(
        "Canaries: ranking %d canaries among %d candidates each",
        len(plan.is_planted),
        plan.candidate_ids.shape[1],
    )
    cand = plan.candidate_ids.ravel()
    splits = splits_table(
        np.concatenate([plan.planted_ids, cand]),
        [c.TRAIN_SPLIT] * len(plan.planted_ids) + [c.HELD_OUT_SPLIT] * len(cand),
    )
    events = pa.concat_tables([plan.planted_events, plan.candidate_events])
    labels = pa.concat_tables([plan.planted_labels, plan.candidate_labels])
    folder = work / "cohorts" / "candidates"
    candidates = derive_cohort(root, folder, splits, cfg.task.name, events, labels, only_added_labels=True)
    logit, target = _pick(_score(cfg, ckpt, candidates, [c.HELD_OUT_SPLIT], work), cand)
    return exposure(A.binary_loss(logit, target).reshape(plan.candidate_ids.shape))


def _shadow_signals(cfg, root, work, splits, pool, audited, rng) -> tuple[np.ndarray, np.ndarray]:
    """(phi [K, n], IN [K, n]) of the audited subjects under K shadow models, each trained on a
    random half of ``pool`` (the rest of the pool held out, the tuning split unchanged)."""
    k = cfg.audit.shadow_models
    phi, inside = np.zeros((k, len(audited))), np.zeros((k, len(audited)), bool)
    ids = splits.column("subject_id").to_numpy()
    tuning = np.asarray(splits.column("split").to_pylist()) == c.TUNING_SPLIT
    for s in range(k):
        half = rng.permutation(pool)[: len(pool) // 2]
        names = np.where(
            tuning, c.TUNING_SPLIT, np.where(np.isin(ids, half), c.TRAIN_SPLIT, c.HELD_OUT_SPLIT)
        )
        shadow_root = derive_cohort(root, work / "cohorts" / f"shadow_{s}", splits_table(ids, names))
        log.info("Shadow model %d/%d: training on %d subjects", s + 1, k, len(half))
        ckpt = _train(cfg, shadow_root, work / f"shadow_{s}", cfg.seed + 1 + s, None)
        score = _score(cfg, ckpt, shadow_root, [c.TRAIN_SPLIT, c.HELD_OUT_SPLIT], work)
        phi[s] = A.signed_logit_confidence(*_pick(score, audited))
        inside[s] = np.isin(audited, half)
    return phi, inside


def _privacy_setting(cfg) -> str:
    privacy = cfg.get("privacy")
    if not privacy or privacy.get("enabled") is False:
        return "none"
    eps = privacy.get("target_epsilon")
    return f"dp (target_epsilon={eps})" if eps is not None else str(privacy.get("_target_", "set"))


def _roc_for_plot(member, score) -> dict:
    fpr, tpr = A.roc_points(member, score)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def _pick(score: dict[int, tuple[float, float]], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        rows = [score[int(i)] for i in ids]
    except KeyError:
        raise MedweaveError(
            "a subject of the audit got no prediction (left out by preparation: no label, or no "
            "event before its prediction time); check the cohort with medweave-validate"
        ) from None
    values = np.asarray(rows, float)
    return values[:, 0], values[:, 1]


def _train(cfg, root: Path, out: Path, seed: int, parent_run_id: str | None) -> Path:
    """One medweave-train run on ``root``; returns the checkpoint it would test."""
    from omegaconf import open_dict

    from medweave.cli.train import train

    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.data.root = str(root)
        sub.paths.output_dir = str(out)
        sub.paths.cache_dir = str(out.parent / "cache")
        sub.seed = seed
        sub.test = False
        sub.evaluation.enabled = False
        sub.ckpt_path = None
        if parent_run_id and "mlflow" in (sub.get("logger") or {}):
            sub.logger = {"mlflow": sub.logger.mlflow}
            sub.logger.mlflow.parent_run_id = parent_run_id
            sub.logger.mlflow.run_name = f"{cfg.task_name}-target"
            sub.logger.mlflow.log_model = False
        else:
            sub.logger = {}
        sub.pop("audit", None)
    train(sub)
    return _audited_checkpoint(out / "checkpoints", cfg.audit.checkpoint)


def _audited_checkpoint(folder: Path, which: str) -> Path:
    """``best``: the checkpoint best by the task's monitor (what medweave-train tests and logs as
    the run's model), else last.ckpt; ``last``: the weights after the last epoch."""
    import torch

    if which not in ("best", "last"):
        raise MedweaveError(f"audit.checkpoint={which}: expected best or last")
    if which == "last" and (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    best = sorted(folder.glob("epoch_*.ckpt"))
    if len(best) == 1:
        return best[0]
    last = folder / "last.ckpt"
    if best and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False).get("callbacks", {})
        for key, value in state.items():
            if key.startswith("ModelCheckpoint") and value.get("best_model_path", "").startswith(str(folder)):
                if "epoch_" in value["best_model_path"]:
                    return Path(value["best_model_path"])
    if last.is_file():
        return last
    raise MedweaveError(
        f"{folder}: training wrote no checkpoint; keep callbacks.model_checkpoint on for an audit"
    )


def _score(cfg, ckpt: Path, root: Path, splits: list[str], work: Path) -> dict[int, tuple[float, float]]:
    """{subject_id: (logit, target)} of the model in ``ckpt`` over ``splits`` of ``root``."""
    import torch
    from omegaconf import OmegaConf

    from medweave.cli.eval import restore_for_inference

    spec = OmegaConf.create(
        {
            "ckpt_path": str(ckpt),
            "paths": {"output_dir": str(work)},
            "data": {
                "root": str(root),
                "cache_dir": str(work / "cache"),
                "batch_size": int(cfg.data.batch_size),
                "num_workers": 0,
            },
        }
    )
    _, datamodule, model = restore_for_inference(spec)
    model.eval()
    out = {}
    with torch.no_grad():
        for split in splits:
            for batch in datamodule.split_dataloader(split):
                batch = model.transfer_batch_to_device(batch, model.device, 0)
                logits = model(batch).float().reshape(-1).cpu().numpy()
                targets = batch["targets"].float().reshape(-1).cpu().numpy()
                for sid, z, y in zip(batch["subject_id"].tolist(), logits, targets, strict=True):
                    out[int(sid)] = (float(z), float(y))
    return out


def _audit_loggers(cfg, out: Path) -> list:
    from hydra.utils import instantiate

    from medweave.tracking.mlflow import log_run_config

    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values()]
    log_run_config(loggers, cfg, out, {})
    return loggers


def _child_run_metrics(loggers: list, parent: str | None) -> dict[str, float]:
    """The nested target run's latest metrics (what training logged: losses, a DP epsilon)."""
    for logger in loggers:
        if getattr(logger, "run_id", None) == parent and hasattr(logger, "experiment"):
            client = logger.experiment
            runs = client.search_runs(
                [logger.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
            )
            if runs:
                return dict(runs[0].data.metrics)
    return {}


def flat_metrics(report: dict) -> dict[str, float]:
    """The report's figures as ``audit/...`` metrics (aggregates only; no subject appears)."""
    out = {}
    for name, figures in report["attacks"].items():
        for key, entry in figures.items():
            out[f"audit/{name}/{key}"] = entry["value"]
            out[f"audit/{name}/{key}_ci_low"] = entry["ci_low"]
            out[f"audit/{name}/{key}_ci_high"] = entry["ci_high"]
    t = report["target"]
    out["audit/target/test_auroc"] = t["test_auroc"]["value"]
    out["audit/target/test_auroc_ci_low"] = t["test_auroc"]["ci_low"]
    out["audit/target/test_auroc_ci_high"] = t["test_auroc"]["ci_high"]
    out["audit/target/mean_loss_members"] = t["mean_loss_members"]
    out["audit/target/mean_loss_non_members"] = t["mean_loss_non_members"]
    if t["epsilon"] is not None:
        out["audit/target/epsilon"] = t["epsilon"]
    k = report["canaries"]
    out["audit/canary/mean_exposure_planted"] = k["mean_exposure_planted"]
    out["audit/canary/mean_exposure_control"] = k["mean_exposure_control"]
    out["audit/canary/max_exposure_planted"] = max(k["exposure_planted"])
    out["audit/canary/ceiling_bits"] = k["ceiling_bits"]
    out["audit/members"] = report["setting"]["members"]
    out["audit/shadow_models"] = report["setting"]["shadow_models"]
    return {key: float(v) for key, v in out.items() if v == v}


def _write_and_log(report: dict, folder: Path, loggers: list) -> None:
    from medweave.audit.report import write_report

    write_report(report, folder)
    metrics = flat_metrics(report)
    for logger in loggers:
        logger.log_metrics(metrics, step=0)
        if hasattr(logger, "experiment") and hasattr(logger, "run_id"):
            logger.experiment.log_artifacts(logger.run_id, str(folder), "audit")
    log.info("Audit report: %s", folder / "report.html")

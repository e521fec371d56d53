"""medweave-fewshot: few-shot curves as EHRSHOT draws them, in one process.

For each k (k positive and k negative train subjects, and as many tuning subjects; and "all"),
several seeded draws, the same for every arm: scratch, pretrained and fine-tuned, a linear probe
on the frozen pretrained embeddings, the count GBM. Every run is scored on the whole held-out
split (AUROC with a bootstrap 95 % CI); fewshot.csv, fewshot.json, fewshot_auroc.png and
report.html land in the run folder and in one MLflow run.

medweave-fewshot data.root=data/sandbox fewshot.pretrained=<pretrain run>/checkpoints/last.ckpt
medweave-fewshot data.root=data/sandbox task=t1d_onset_1y fewshot.pretrained=<ckpt>
medweave-fewshot data.root=data/sandbox fewshot.arms=[scratch,gbm]        # no checkpoint needed
medweave-fewshot ... fewshot.ks=[1,4,16,all] fewshot.draws=3
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

log = logging.getLogger("medweave")


def check_config(cfg) -> None:
    """Every fault at once, before the cohort is prepared."""
    from medweave.cli.train import check_config as check_train
    from medweave.errors import MedweaveError
    from medweave.fewshot.arms import ARMS, PRETRAINED_ARMS

    problems = []
    try:
        check_train(cfg)
    except MedweaveError as err:
        problems.append(str(err))
    f = cfg.fewshot
    arms = list(f.arms)
    if unknown := [a for a in arms if a not in ARMS] or (not arms and ["(none)"]):
        problems.append(f"fewshot.arms: unknown {unknown}; choose from {list(ARMS)}")
    if cfg.task.get("type") != "binary":
        problems.append(f"task.type={cfg.task.get('type')}: few-shot curves are for binary tasks")
    if list(cfg.data.modalities) != ["ehr_codes"]:
        problems.append(f"data.modalities={list(cfg.data.modalities)}: few-shot arms read [ehr_codes] only")
    if int(f.draws) < 1:
        problems.append(f"fewshot.draws={f.draws}: expected at least 1")
    needs = [a for a in arms if a in PRETRAINED_ARMS]
    if needs and not f.pretrained:
        problems.append(
            f"fewshot.arms={arms}: {needs} need fewshot.pretrained=<a medweave-pretrain checkpoint>; "
            "or leave them out: fewshot.arms=[scratch,gbm]"
        )
    elif needs and not Path(f.pretrained).expanduser().is_file():
        problems.append(
            f"fewshot.pretrained={f.pretrained} does not exist; expected a checkpoint written by "
            "medweave-pretrain (<run>/checkpoints/last.ckpt)"
        )
    if "zeroshot" in arms and not f.get("prior"):
        problems.append(
            "fewshot.arms has zeroshot, which needs fewshot.prior={code, horizon_days} (the task "
            f"config's `outcome`; task {cfg.task.get('name')} has none)"
        )
    if problems:
        raise MedweaveError("; ".join(problems))


def build_arms(cfg, datamodule, inputs, held_out_rows) -> dict:
    """The arms asked for, each ready to ``fit(draw)``; what they share is built once here."""
    import numpy as np
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from medweave.fewshot import arms as A

    cohort, f = datamodule.cohort, cfg.fewshot
    asked = list(f.arms)
    out = {}
    if {"scratch", "finetuned", "zeroshot"} & set(asked):
        held_out = list(A.rows_loader(cohort, held_out_rows, int(f.predict_batch_size), shuffle=False))
        for name in ("scratch", "finetuned", "zeroshot"):
            if name in asked:
                model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))  # a copy
                encoder = model_cfg.encoders.ehr_codes
                encoder.pretrained = None if name == "scratch" else str(f.pretrained)
                if name != "scratch":
                    encoder.pool = f.pool
                    prior = OmegaConf.to_container(f.prior, resolve=True) if f.prior else None
                    encoder.prior = prior
                    encoder.query = f.query
                out[name] = A.NeuralArm(
                    name,
                    model_cfg,
                    cfg.trainer,
                    inputs,
                    datamodule.head_inputs(),
                    cohort,
                    held_out,
                    f.train,
                    int(cfg.seed),
                )
    if "probe" in asked:
        prior = None
        if f.prior:
            import torch

            from medweave.embeddings.ehr import PretrainedEHR

            encoder = PretrainedEHR(str(f.pretrained), 0.05, f.pool, OmegaConf.to_container(f.prior), f.query)
            encoder.inputs(datamodule.cohort.folder)
            encoder.load(torch.device("cpu"))
            prior = A.PriorLogits(encoder, int(f.predict_batch_size))
        out["probe"] = A.ProbeArm(frozen_vectors(cfg, datamodule), cohort.target, held_out_rows, prior)
    if "gbm" in asked:
        from medweave.baselines.features import build_features

        started = time.perf_counter()
        features = build_features(
            datamodule.root,
            cohort.subject_id,
            np.load(cohort.folder / "subjects.npz")["prediction_time"],
            list(cohort.vocab["codes"]),
            sorted(cohort.vocab["code_stats"]),
            list(cfg.baseline.windows_days),
            datamodule.prepare_config.lenient,
        )
        log.info("GBM features: %d x %d in %.1f s", *features.matrix.shape, time.perf_counter() - started)
        out["gbm"] = A.GbmArm(
            lambda: instantiate(cfg.baseline.model), features.matrix, cohort.target, held_out_rows
        )
    return {name: out[name] for name in asked}


def frozen_vectors(cfg, datamodule):
    """The frozen pretrained embeddings of every cache row, through medweave-embed's cache (the
    same key as ``medweave-embed modality=ehr_codes``: built once, reused by later sweeps)."""
    import numpy as np

    from medweave.data.embedding_cache import open_cache
    from medweave.embeddings.ehr import PretrainedEHR
    from medweave.embeddings.embed import embed_cohort

    path = Path(cfg.fewshot.pretrained).expanduser().resolve()
    settings = {"_target_": "medweave.embeddings.ehr.PretrainedEHR", "max_unknown": 0.05}  # embed.yaml's
    settings["pool"], settings["query"] = cfg.fewshot.pool, cfg.fewshot.query
    folder, _ = embed_cohort(
        PretrainedEHR(str(path), settings["max_unknown"], settings["pool"], query=settings["query"]),
        prepared=datamodule.cohort.folder,
        root=datamodule.root,
        model_path=path,
        settings=settings,
        out_dir=Path(cfg.paths.log_dir) / "embeddings",
        batch_size=int(cfg.fewshot.predict_batch_size),
        device="auto",
    )
    cache = open_cache(folder, "ehr_codes", datamodule.cohort.folder, datamodule.root)
    return np.asarray(cache.vectors, np.float64)


def fewshot(cfg) -> dict:
    """Run the sweep; returns the summary (curves per arm) that fewshot.json holds."""
    check_config(cfg)

    from hydra.utils import instantiate

    from medweave.cli.hydra_main import one_log_stream
    from medweave.cli.train import open_run
    from medweave.data import contract as c
    from medweave.evaluation.run import sandbox_oracle
    from medweave.fewshot import report
    from medweave.fewshot.arms import PRETRAINED_ARMS
    from medweave.fewshot.draws import make_draws

    one_log_stream()
    f = cfg.fewshot
    datamodule = instantiate(cfg.data)
    inputs = datamodule.encoder_inputs()  # prepares the task cache once
    cohort = datamodule.cohort
    if set(f.arms) & set(PRETRAINED_ARMS):
        from medweave.models.pretrain.load import check_leakage

        check_leakage(str(f.pretrained), cohort.folder)
    rows = {s: cohort.rows(s) for s in c.SPLITS}
    draws = make_draws(
        cohort.target, rows[c.TRAIN_SPLIT], rows[c.TUNING_SPLIT], list(f.ks), int(f.draws), int(cfg.seed)
    )
    held_out = rows[c.HELD_OUT_SPLIT]
    if f.get("held_out_subjects") and len(held_out) > int(f.held_out_subjects):
        import numpy as np

        # One seeded subsample, the same for every arm and draw: each run scores it once.
        pick = np.random.default_rng(int(cfg.seed)).choice(len(held_out), int(f.held_out_subjects), False)
        held_out = held_out[np.sort(pick)]
    y_held_out = cohort.target[held_out]
    arms = build_arms(cfg, datamodule, inputs, held_out)

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values()]
    open_run(loggers, cfg, output_dir, {"fewshot/runs": len(draws) * len(arms)}, None)
    results, table = [], output_dir / "fewshot.csv"
    started = time.perf_counter()
    budget = None if f.get("max_minutes") is None else 60.0 * float(f.max_minutes)
    for i, draw in enumerate(draws):
        if budget is not None and time.perf_counter() - started > budget:
            log.warning(
                "fewshot.max_minutes=%s reached: %d of %d draws done; the report covers those",
                f.max_minutes, i, len(draws),
            )  # fmt: skip
            break
        for name, arm in arms.items():
            wall, cpu = time.perf_counter(), time.process_time()
            score = arm.fit(draw)
            auroc = report.held_out_auroc(y_held_out, score, int(f.bootstrap), int(cfg.seed))["auroc"]
            row = {
                "task": cfg.task.name,
                "arm": name,
                "k": draw.k,
                "draw": draw.draw,
                "n_train": len(draw.train),
                "n_tuning": len(draw.tuning),
                "auroc": round(auroc["value"], 4),
                "auroc_ci_low": round(auroc["ci_low"], 4),
                "auroc_ci_high": round(auroc["ci_high"], 4),
                "epochs": getattr(arm, "epochs", ""),
                "best_epoch": getattr(arm, "best_epoch", ""),
                "predict_s": round(arm.predict_s, 2) if hasattr(arm, "predict_s") else "",
                "wall_s": round(time.perf_counter() - wall, 2),
                "cpu_s": round(time.process_time() - cpu, 2),
            }
            results.append(row)
            log.info(
                "[%d/%d] %s k=%s draw %d: held-out AUROC %.3f (%.3f-%.3f), %.1f s",
                i + 1, len(draws), name, draw.k, draw.draw, auroc["value"], auroc["ci_low"], auroc["ci_high"],
                row["wall_s"],
            )  # fmt: skip
            _write_csv(table, results)  # rewritten per run: a sweep cut short keeps its rows
    _write_csv(table, results)

    oracle = sandbox_oracle(datamodule.root, datamodule.label_tasks[0], c.HELD_OUT_SPLIT)
    ceiling = oracle.get("given ehr_codes alone", oracle.get("true risk")) if oracle else None
    summary = {
        "task": cfg.task.name,
        "arms": list(arms),
        "draws": int(f.draws),
        "runs_done": len(results),
        "runs_planned": len(draws) * len(arms),
        "held_out": {"n": int(len(held_out)), "positives": int((y_held_out > 0).sum())},
        "oracle": ceiling,
        "wall_s": round(time.perf_counter() - started, 1),
        "curves": report.curves(results),
        "runs": results,
    }
    figure = report.plot(summary["curves"], ceiling, output_dir / "fewshot_auroc.png", f"{cfg.task.name}")
    page = report.write_html(output_dir, summary, figure)
    _log(loggers, summary, [table, output_dir / "fewshot.json", output_dir / figure, page])
    log.info("Few-shot curves in %s", page)
    return summary


COLUMNS = (
    "task", "arm", "k", "draw", "n_train", "n_tuning", "auroc", "auroc_ci_low", "auroc_ci_high",
    "epochs", "best_epoch", "predict_s", "wall_s", "cpu_s",
)  # fmt: skip


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _log(loggers: list, summary: dict, files: list[Path]) -> None:
    """Each arm's mean AUROC per k as metrics (step = k; "all" as step 0), and the files."""
    from lightning.pytorch.loggers import MLFlowLogger

    for logger in loggers:
        for arm, points in summary["curves"].items():
            for p in points:
                step = 0 if p["k"] == "all" else int(p["k"])
                logger.log_metrics({f"fewshot/{arm}/auroc": p["mean"]}, step=step)
        if isinstance(logger, MLFlowLogger):
            for file in files:
                logger.experiment.log_artifact(logger.run_id, str(file), "fewshot")
        logger.finalize("success")


def main() -> None:
    from medweave.cli.hydra_main import run

    run(fewshot, "fewshot", "medweave-fewshot")


if __name__ == "__main__":
    main()

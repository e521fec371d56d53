"""medweave-predict: per-subject predictions from a checkpoint, written to the run's own folder.

    medweave-predict ckpt_path=<ckpt> data.root=data/sandbox
    medweave-predict ckpt_path=<ckpt> data.root=data/sandbox splits=[tuning,held_out]
    medweave-predict ckpt_path=models:/cvd-risk/3 data.root=data/sandbox   # from the Model Registry
    medweave-predict ckpt_path=<run id> data.root=data/sandbox             # the run's tested model

Writes ``<run dir>/predictions.parquet``: subject_id, split, score (probability, a risk score for
survival tasks, the value for regression; score_<class> for multiclass and multilabel), target,
present_<modality>, and for survival tasks time (days to event or censoring) and survival_<t>d =
S(t): at each bin edge of a discrete-time head, or at ``survival_times`` for a Cox model
(Breslow's baseline from the training split). With ``attribution=true`` also shapley_<modality>,
each modality's exact Shapley value for the subject (shapley_none: the score without any).
Subject IDs stay in this file: nothing here is sent to MLflow or printed.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("medweave")


def predict(cfg) -> str:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medweave.cli.eval import restore_for_inference
    from medweave.cli.hydra_main import one_log_stream
    from medweave.data.contract import SPLITS
    from medweave.errors import MedweaveError
    from medweave.evaluation.attribution import modality_shapley
    from medweave.evaluation.metrics import breslow_survival
    from medweave.evaluation.run import collect_predictions, cox_baseline

    one_log_stream()
    unknown = [s for s in cfg.splits if s not in SPLITS]
    if unknown:
        raise MedweaveError(f"splits={list(cfg.splits)}: {unknown} not among {list(SPLITS)}")
    _, datamodule, model = restore_for_inference(cfg)
    kind = getattr(model.head, "kind", "binary")
    is_cox = kind == "survival" and not hasattr(model.head, "survival")
    baseline = cox_baseline(model, datamodule) if is_cox else None

    columns: dict[str, list] = {}
    for split in cfg.splits:
        part = collect_predictions(model, datamodule.split_dataloader(split))
        part["split"] = np.array([split] * len(part["score"]))
        scalar = part["score"].ndim == 1  # one score per subject: Shapley values are defined
        if not scalar:  # multiclass or multilabel: one column per class or label
            names = getattr(model.head, "classes", None) or model.head.labels
            scores = part.pop("score")
            part["score"] = scores.max(1)  # the top probability, so every task has a score column
            part |= {f"score_{name}": scores[:, k] for k, name in enumerate(names)}
            if part["target"].ndim == 2:
                targets = part.pop("target")
                part["target"] = targets.sum(1)  # how many labels are positive
                part |= {f"target_{name}": targets[:, k] for k, name in enumerate(names)}
        if "survival" in part:  # S(t) at each bin edge of a discrete-time head
            curve = part.pop("survival")
            for k, edge in enumerate(model.head.edges[1:].tolist()):
                part[f"survival_{edge:g}d"] = curve[:, k]
        elif baseline is not None:
            times = np.asarray(cfg.survival_times, float)
            curve = breslow_survival(*baseline, part["score"], times)
            part |= {f"survival_{t:g}d": curve[:, k] for k, t in enumerate(times)}
        if cfg.attribution and scalar and len(model.encoders) > 1:
            shapley = modality_shapley(model, datamodule.split_dataloader(split))
            part["shapley_none"] = shapley["empty"]  # the score with every modality masked
            part |= {f"shapley_{m}": shapley["phi"][:, j] for j, m in enumerate(shapley["modalities"])}
        for key, values in part.items():
            columns.setdefault(key, []).append(np.asarray(values))
    out = Path(cfg.paths.output_dir) / "predictions.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    first = ["subject_id", "split", "score", "target"]
    order = first + [k for k in columns if k not in first]
    table = pa.table({key: np.concatenate(columns[key]) for key in order})
    tmp = out.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.rename(out)  # never a half-written file
    log.info("Wrote %d predictions (%s) to %s", table.num_rows, ", ".join(cfg.splits), out)
    return str(out)


def main() -> None:
    from medweave.cli.hydra_main import run

    run(predict, "predict", "medweave-predict")


if __name__ == "__main__":
    main()

"""medweave-predict: per-subject predictions from a checkpoint, written to the run's own folder.

    medweave-predict ckpt_path=<ckpt> data.root=data/sandbox
    medweave-predict ckpt_path=<ckpt> data.root=data/sandbox splits=[tuning,held_out]

Writes ``<run dir>/predictions.parquet``: subject_id, split, score (probability, or a risk score
for survival tasks), target (the label, or whether the event was seen), and for survival tasks
time (days to event or censoring) and, from a discrete-time head, survival_<t>d = S(t) at each
bin edge. Subject IDs stay in this file: nothing here is sent to MLflow or printed.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("medweave")


def predict(cfg) -> str:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from hydra.utils import instantiate

    from medweave.cli.eval import restore_for_inference
    from medweave.cli.hydra_main import one_log_stream
    from medweave.data.contract import SPLITS
    from medweave.errors import MedweaveError

    one_log_stream()
    unknown = [s for s in cfg.splits if s not in SPLITS]
    if unknown:
        raise MedweaveError(f"splits={list(cfg.splits)}: {unknown} not among {list(SPLITS)}")
    _, datamodule, model = restore_for_inference(cfg)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])

    columns: dict[str, list] = {}
    for split in cfg.splits:
        outputs = trainer.predict(model, dataloaders=datamodule.split_dataloader(split))
        part = {key: torch.cat([o[key] for o in outputs]).float().numpy() for key in outputs[0]}
        part["subject_id"] = torch.cat([o["subject_id"] for o in outputs]).numpy()
        part["split"] = [split] * len(part["score"])
        if part["score"].ndim == 2:  # multiclass or multilabel: one column per class or label
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

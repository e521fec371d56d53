"""medweave-predict: per-subject predictions from a checkpoint, written to the run's own folder.

    medweave-predict ckpt_path=<ckpt> data.root=data/sandbox
    medweave-predict ckpt_path=<ckpt> data.root=data/sandbox splits=[tuning,held_out]

Writes ``<run dir>/predictions.parquet`` (subject_id, split, score, target). Subject IDs stay
in this file: nothing here is sent to MLflow or printed.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("medweave")


def predict(cfg) -> str:
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

    columns: dict[str, list] = {"subject_id": [], "split": [], "score": [], "target": []}
    for split in cfg.splits:
        loader = datamodule.split_dataloader(split)
        outputs = trainer.predict(model, dataloaders=loader)
        scores = torch.cat([o["score"] for o in outputs]).float().numpy()
        subject_ids = torch.cat([o["subject_id"] for o in outputs]).numpy()
        targets = torch.cat([o["target"] for o in outputs]).numpy()
        columns["subject_id"] += subject_ids.tolist()
        columns["split"] += [split] * len(scores)
        columns["score"] += scores.tolist()
        columns["target"] += targets.tolist()
    out = Path(cfg.paths.output_dir) / "predictions.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({**columns, "subject_id": pa.array(columns["subject_id"], pa.int64())})
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

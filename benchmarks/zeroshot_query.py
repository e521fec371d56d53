"""The zero-shot risk of a task's outcome code on the tuning split, read at the last event before
the prediction time and with the task's index event read after it (fewshot.query), so the choice
of fewshot.query is made on tuning subjects, never on the held-out ones the curves report.

    .venv/bin/python benchmarks/zeroshot_query.py <checkpoint> data.root=<cohort> task=t1d_onset_1y ...

The overrides are medweave-fewshot's (configs/fewshot.yaml).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from medweave.cli.hydra_main import config_dir
from medweave.data import contract as c
from medweave.embeddings.ehr import PretrainedEHR
from medweave.fewshot.arms import PriorLogits


def main(ckpt: str, overrides: list[str]) -> None:
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("fewshot", overrides)
    datamodule = instantiate(cfg.data)
    datamodule.encoder_inputs()  # prepares the task cache
    cohort = datamodule.cohort
    rows = cohort.rows(c.TUNING_SPLIT)
    y = cohort.target[rows]
    prior = OmegaConf.to_container(cfg.fewshot.prior, resolve=True)
    print(f"{cfg.task.name}: {len(rows)} tuning subjects, {int(y.sum())} positive; prior {prior}")
    for query in (None, cfg.fewshot.query):
        encoder = PretrainedEHR(ckpt, 0.05, "last", prior, query)
        encoder.inputs(cohort.folder)
        encoder.load(torch.device("cpu"))
        logit = PriorLogits(encoder, 512)(rows)
        print(
            f"  query={query}: zero-shot AUROC {roc_auc_score(y, logit):.4f}, mean risk "
            f"{np.mean(1 / (1 + np.exp(-logit))):.4f} (label rate {y.mean():.4f})"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

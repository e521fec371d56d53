"""The frozen encoder medweave-embed runs over the EHR codes: a medweave-pretrain backbone.

It reads the prepared task cache (each subject's events before prediction_time, data/ehr/cache.py),
translates them as fine-tuning does (models/pretrain/load.py) and mean-pools the backbone's
states; the time-before-prediction term is left out (it starts at zero and only fine-tuning
learns it), so the vectors are the pretrained representation itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from medweave.embeddings.frozen import _subjects_present
from medweave.errors import MedweaveError


class PretrainedEHR:
    """Args:
    path: a checkpoint written by medweave-pretrain.
    max_unknown: as for fine-tuning (model.encoders.ehr_codes): codes the checkpoint lacks map to
        its unknown code; more than this share of them is refused (no extend_vocab here: new
        embeddings would be untrained).
    pool: ``mean`` over the events' states, or the ``last`` event's (models/pretrain/load.py).
    prior: {code, horizon_days}: after each call, ``module.prior_logit`` holds the rows' zero-shot
        logits (the few-shot probe's offset).
    query: the index event's code, read as one more event at the prediction time (load.py).
    """

    modality = "ehr_codes"
    pooling = "mean over the events' final hidden states (pretrained backbone, frozen)"

    def __init__(
        self,
        path: str,
        max_unknown: float = 0.05,
        pool: str = "mean",
        prior: dict | None = None,
        query: str | None = None,
    ):
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise MedweaveError(
                f"model_path '{path}' does not exist or is not a file; expected a checkpoint written by "
                "medweave-pretrain (<run>/checkpoints/*.ckpt)"
            )
        self.max_unknown, self.pool, self.prior, self.query = max_unknown, pool, prior, query
        if pool == "last":
            self.pooling = "the last event's final hidden state (pretrained backbone, frozen)"
        self.cache, self.module = None, None

    def inputs(self, prepared: Path) -> tuple[np.ndarray, np.ndarray]:
        """The prepared rows (the events are read per batch from the cache shards)."""
        from medweave.data.ehr import EhrCache

        vocab = json.loads((Path(prepared) / "vocab.json").read_text())
        self.vocab = vocab
        self.cache = EhrCache(Path(prepared), vocab)
        present = _subjects_present(Path(prepared), self.modality)
        return np.arange(len(present), dtype=np.int64), present

    def input_identity(self, prepared: Path) -> dict:
        """The rows are indices into the prepared cache's events: its preparation settings
        (max_events, min_subjects, ...) and vocabulary say what they hold, so they enter the key."""
        from medweave.data.prepare import MANIFEST

        folder = Path(prepared)
        return {
            "config": json.loads((folder / MANIFEST).read_text())["config"],
            "vocab": hashlib.blake2b((folder / "vocab.json").read_bytes(), digest_size=16).hexdigest(),
        }

    def load(self, device: torch.device) -> None:
        from medweave.models.pretrain.load import PretrainedEvents

        module = PretrainedEvents(
            str(self.path),
            self.vocab["codes"],
            self.vocab["code_stats"],
            out_dim=0,
            freeze=True,
            max_unknown=self.max_unknown,
            pool=self.pool,
            prior=self.prior,
            query=self.query,
        )
        module.project = torch.nn.Identity()
        self.module = module.eval().requires_grad_(False).to(device)

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        device = self.module.id_map.device
        events = self.cache.batch(np.asarray(rows))
        inputs = {
            "codes": torch.from_numpy(events["codes"].astype(np.int64)).to(device),
            "values": torch.from_numpy(events["values"]).to(device),
            "days": torch.from_numpy(events["days"]).to(device),
        }
        return self.module(inputs).float().cpu()

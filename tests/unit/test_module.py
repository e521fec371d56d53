from functools import partial

import torch

from medweave.models.encoders.genomics import GenomicsEncoder
from medweave.models.fusion.attention import AttentionFusion
from medweave.models.heads.binary import BinaryHead
from medweave.models.module import MultimodalModule

B, D = 6, 8


def module(modality_dropout=0.0):
    torch.manual_seed(0)
    encoders = {
        "genomics": GenomicsEncoder(5, dim=D, hidden=4),
        "ehr_codes": GenomicsEncoder(3, dim=D, hidden=4),
    }
    return MultimodalModule(
        encoders,
        AttentionFusion(list(encoders), D, n_heads=2),
        BinaryHead(D),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        modality_dropout=modality_dropout,
    )


def batch():
    return {
        "genomics": torch.randn(B, 5),
        "ehr_codes": torch.randn(B, 3),
        "genomics_mask": torch.tensor([True, False, True, False, True, True]),
        "ehr_codes_mask": torch.ones(B, dtype=torch.bool),
        "targets": torch.zeros(B),
    }


def test_missing_modality_content_does_not_matter():
    m = module().eval()
    a, b = batch(), batch()
    b["ehr_codes"] = a["ehr_codes"]
    b["genomics"][~a["genomics_mask"]] = 1e3  # rows of subjects without a genome
    b["genomics"][a["genomics_mask"]] = a["genomics"][a["genomics_mask"]]
    torch.testing.assert_close(m(a), m(b))


def test_modality_dropout_hides_but_never_everything():
    m = module(modality_dropout=0.9).train()
    torch.manual_seed(1)
    masks = m._masks(batch())
    present = torch.stack([batch()["genomics_mask"], batch()["ehr_codes_mask"]], 1)
    kept = torch.stack([masks["genomics"], masks["ehr_codes"]], 1)
    assert (kept <= present).all()  # never invents a modality
    assert kept.any(1).all()  # every subject keeps at least one
    assert kept.sum() < present.sum()  # and some were hidden
    m.eval()
    assert all(torch.equal(m._masks(batch())[k], batch()[f"{k}_mask"]) for k in masks)


def test_checkpoint_carries_extras():
    m = module()
    m.checkpoint_extras = {"config": {"a": 1}}
    ckpt = {}
    m.on_save_checkpoint(ckpt)
    assert ckpt["medweave"] == {"config": {"a": 1}}

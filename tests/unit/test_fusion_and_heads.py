import pytest
import torch

from medweave.models.fusion.attention import AttentionFusion
from medweave.models.fusion.concat import ConcatFusion
from medweave.models.fusion.cross_attention import CrossAttentionFusion
from medweave.models.fusion.gated import GatedFusion
from medweave.models.fusion.late import LateFusion
from medweave.models.fusion.low_rank import LowRankTensorFusion
from medweave.models.heads.binary import BinaryHead

MODS = ["ehr_codes", "text", "image", "genomics"]
B, D = 4, 8


def fusions(mods=MODS):
    return [
        ConcatFusion(mods, D, hidden=12),
        AttentionFusion(mods, D, n_heads=2),
        LateFusion(mods, D, hidden=12),
        GatedFusion(mods, D, hidden=12),
        CrossAttentionFusion(mods, D, n_heads=2),
        LowRankTensorFusion(mods, D, hidden=12, rank=3),
    ]


def inputs():
    torch.manual_seed(0)
    emb = {m: torch.randn(B, D) for m in MODS}
    masks = {m: torch.ones(B, dtype=torch.bool) for m in MODS}
    masks["image"][0] = masks["genomics"][0] = masks["text"][0] = False  # only EHR left
    masks["genomics"][1:3] = False
    masks["ehr_codes"][2] = False  # the cross-attention query is missing for subject 2
    for m in MODS:  # as the module hands them over: missing rows are zero
        emb[m] = emb[m] * masks[m].unsqueeze(-1)
    return emb, masks


@pytest.mark.parametrize("fusion", fusions(), ids=lambda f: type(f).__name__)
def test_fusion_shape_and_missing_modalities(fusion):
    fusion.eval()
    emb, masks = inputs()
    out = fusion(emb, masks)
    assert out.shape == (B, fusion.out_dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("fusion", fusions(), ids=lambda f: type(f).__name__)
def test_fusion_ignores_what_a_missing_modality_holds(fusion):
    fusion.eval()
    emb, masks = inputs()
    noisy = {m: e.clone() for m, e in emb.items()}
    noisy["image"][0] = 100.0  # subject 0 has no image: whatever sits there must not matter
    noisy["genomics"][1] = -50.0  # nor subject 1's missing genome
    noisy["ehr_codes"][2] = 7.0  # nor subject 2's missing EHR
    torch.testing.assert_close(fusion(emb, masks), fusion(noisy, masks))


@pytest.mark.parametrize("fusion", fusions(), ids=lambda f: type(f).__name__)
def test_fusion_uses_present_modalities(fusion):
    fusion.eval()
    emb, masks = inputs()
    changed = {m: e.clone() for m, e in emb.items()}
    changed["ehr_codes"][0] += torch.linspace(-1, 1, D)  # subject 0 has only EHR: output must move
    changed["image"][1] += torch.linspace(1, -1, D)  # subject 1 has an image beside EHR
    changed["text"][2] += torch.linspace(-1, 1, D)  # subject 2 has no EHR (no cross-attention query)
    before, after = fusion(emb, masks), fusion(changed, masks)
    for subject in (0, 1, 2):
        assert not torch.allclose(before[subject], after[subject]), subject


@pytest.mark.parametrize("fusion", fusions(), ids=lambda f: type(f).__name__)
def test_fusion_gradients_finite_with_nothing_present(fusion):
    emb, masks = inputs()
    emb = {m: e.clone().requires_grad_(True) for m, e in emb.items()}
    for m in MODS:
        masks[m] = masks[m].clone()
        masks[m][3] = False  # subject 3 has no modality at all
    out = fusion(emb, masks)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters() if p.grad is not None)
    assert all(torch.isfinite(e.grad).all() for e in emb.values())


@pytest.mark.parametrize("fusion", fusions(["image"]), ids=lambda f: type(f).__name__)
def test_fusion_single_modality(fusion):
    fusion.eval()
    out = fusion({"image": torch.randn(B, D)}, {"image": torch.tensor([True, False, True, True])})
    assert out.shape == (B, fusion.out_dim) and torch.isfinite(out).all()


def test_binary_head_loss_and_score():
    head = BinaryHead(in_dim=D, dropout=0.0)
    h, y = torch.randn(B, D), torch.tensor([0.0, 1.0, 1.0, 0.0])
    logits = head(h)
    assert logits.shape == (B,)
    torch.testing.assert_close(
        head.loss(logits, {"targets": y}), torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), y)
    )
    assert ((head.score(logits) > 0) & (head.score(logits) < 1)).all()

import pytest
import torch

from medweave.models.fusion.attention import AttentionFusion
from medweave.models.fusion.concat import ConcatFusion
from medweave.models.heads.binary import BinaryHead

MODS = ["ehr_codes", "text", "image", "genomics"]
B, D = 4, 8


def fusions():
    return [ConcatFusion(MODS, D, hidden=12), AttentionFusion(MODS, D, n_heads=2)]


def inputs():
    torch.manual_seed(0)
    emb = {m: torch.randn(B, D) for m in MODS}
    masks = {m: torch.ones(B, dtype=torch.bool) for m in MODS}
    masks["image"][0] = masks["genomics"][0] = masks["text"][0] = False  # only EHR left
    masks["genomics"][1:3] = False
    for m in MODS:  # as the module hands them over: missing rows are zero
        emb[m] = emb[m] * masks[m].unsqueeze(-1)
    return emb, masks


@pytest.mark.parametrize("fusion", fusions(), ids=lambda f: type(f).__name__)
def test_fusion_shape_and_missing_modalities(fusion):
    fusion.eval()
    emb, masks = inputs()
    out = fusion(emb, masks)
    assert out.shape == (B, fusion.out_dim) and torch.isfinite(out).all()


def test_attention_ignores_what_a_missing_modality_holds():
    fusion = AttentionFusion(MODS, D, n_heads=2).eval()
    emb, masks = inputs()
    noisy = {m: e.clone() for m, e in emb.items()}
    noisy["image"][0] = 100.0  # subject 0 has no image: whatever sits there must not matter
    torch.testing.assert_close(fusion(emb, masks), fusion(noisy, masks))


def test_fusion_subset_of_modalities():
    fusion = AttentionFusion(["image"], D, n_heads=2).eval()
    out = fusion({"image": torch.randn(B, D)}, {"image": torch.tensor([True, False, True, True])})
    assert out.shape == (B, D) and torch.isfinite(out).all()


def test_binary_head_loss_and_score():
    head = BinaryHead(in_dim=D, dropout=0.0)
    h, y = torch.randn(B, D), torch.tensor([0.0, 1.0, 1.0, 0.0])
    logits = head(h)
    assert logits.shape == (B,)
    torch.testing.assert_close(
        head.loss(logits, y), torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), y)
    )
    assert ((head.score(logits) > 0) & (head.score(logits) < 1)).all()

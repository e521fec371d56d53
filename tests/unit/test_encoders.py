import pytest
import torch

from medweave.models.encoders.ehr_codes import EHRCodesEncoder
from medweave.models.encoders.genomics import GenomicsEncoder
from medweave.models.encoders.image import ImageEncoder
from medweave.models.encoders.text import TextEncoder

B = 3


def ehr_batch(length=7):
    codes = torch.randint(2, 20, (B, length))
    codes[1, 4:] = 0  # padded tail
    codes[2] = 0  # a subject with no events at all
    values = torch.full((B, length), float("nan"))
    values[0, :2] = torch.tensor([0.5, -1.0])
    return {"codes": codes, "values": values, "days": torch.rand(B, length) * 1000}


def test_ehr_codes_shape_and_empty_subject_is_finite():
    enc = EHRCodesEncoder(vocab_size=20, dim=16, n_layers=1, n_heads=2).eval()
    out = enc(ehr_batch())
    assert out.shape == (B, 16) and torch.isfinite(out).all()


def test_ehr_codes_linear_time_tells_ages_apart():
    """A birth event at 50 and at 100 years: 0.07 apart on log days, 0.5 apart with linear_time."""
    days = torch.tensor([[50 * 365.25, 100 * 365.25, float("nan")]])
    plain = EHRCodesEncoder(vocab_size=20, dim=16, n_layers=1, n_heads=2).time_features(days)
    enc = EHRCodesEncoder(vocab_size=20, dim=16, n_layers=1, n_heads=2, linear_time=True)
    linear = enc.time_features(days)
    assert (plain[0, 1, 0] - plain[0, 0, 0]).item() < 0.075
    torch.testing.assert_close(linear[0, :, 3], torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(linear[..., :3], plain)
    assert enc(ehr_batch()).shape == (B, 16)


def test_ehr_codes_age_reaches_every_event():
    """With age, every event carries the age at prediction time read off the birth event (id 2
    here), and a subject without one gets 0 with the flag off."""
    codes = torch.tensor([[5, 2, 6, 0], [5, 6, 7, 8]])
    days = torch.tensor([[900.0, 60 * 365.25, float("nan"), 0.0], [30.0, 20.0, 10.0, 1.0]])
    kw = dict(
        vocab_size=20,
        dim=16,
        n_layers=1,
        n_heads=2,
        codes=["MEDS_BIRTH", "A", "B"],
        age=True,
        linear_time=True,
    )
    enc = EHRCodesEncoder(**kw).eval()
    feats = enc.time_features(days, codes)
    assert feats.shape == (2, 4, 6)
    torch.testing.assert_close(feats[0, :, 4], torch.full((4,), 60 * 365.25 / 36525))
    torch.testing.assert_close(feats[0, :, 5], torch.ones(4))
    torch.testing.assert_close(feats[1, :, 4:], torch.zeros(4, 2))
    batch = {"codes": codes, "values": torch.full((2, 4), float("nan")), "days": days}
    assert enc(batch).shape == (2, 16) and torch.isfinite(enc(batch)).all()
    plain = EHRCodesEncoder(**{**kw, "age": False}).time_features(days, codes)
    torch.testing.assert_close(feats[..., :4], plain)


def test_ehr_codes_ignores_padding_content():
    enc = EHRCodesEncoder(vocab_size=20, dim=16, n_layers=1, n_heads=2).eval()
    batch = ehr_batch()
    other = {k: v.clone() for k, v in batch.items()}
    other["days"][1, 4:] = 12345.0  # garbage in padded slots
    torch.testing.assert_close(enc(batch)[1], enc(other)[1])


def test_text_encoder_from_config_shape_and_padding():
    enc = TextEncoder(
        vocab_size=50,
        pad_token_id=0,
        dim=8,
        config={
            "model_type": "bert",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
    ).eval()
    ids = torch.randint(4, 50, (B, 10))
    mask = torch.ones_like(ids)
    ids[0, 6:], mask[0, 6:] = 0, 0
    out = enc({"input_ids": ids, "attention_mask": mask})
    assert out.shape == (B, 8)
    trimmed = enc({"input_ids": ids[:1, :6], "attention_mask": mask[:1, :6]})
    torch.testing.assert_close(out[:1], trimmed, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (B, 1, 32, 32)), (3, (B, 1, 16, 16, 16))])
def test_image_encoder_2d_and_3d(spatial_dims, shape):
    from monai.networks.nets import ResNet

    backbone = ResNet(
        "basic",
        [1, 1, 1, 1],
        [4, 8, 8, 16],
        spatial_dims=spatial_dims,
        n_input_channels=1,
        feed_forward=False,
    )
    enc = ImageEncoder(backbone, feature_dim=16, dim=8).eval()
    assert enc(torch.rand(shape)).shape == (B, 8)


def test_genomics_encoder_shape():
    assert GenomicsEncoder(n_features=30, dim=8, hidden=16)(torch.randn(B, 30)).shape == (B, 8)

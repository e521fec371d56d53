"""DP-SGD pieces: Poisson sampling, the noise from the accountant, the modules Opacus can train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medweave.data.sampler import PoissonSubjectSampler
from medweave.errors import MedweaveError


def test_poisson_ranks_split_one_global_draw_replayed_on_resume():
    ranks = [PoissonSubjectSampler(200, 0.1, 2, r, seed=5) for r in range(2)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == 10  # 1 / q steps, same on all ranks
    for step in range(10):
        union = sorted(batches[0][step] + batches[1][step])
        assert union == ranks[0].draw(0, step).tolist()  # the shards make up one global draw
        assert all(r % 2 == 0 for r in batches[0][step]) and all(r % 2 == 1 for r in batches[1][step])
    sizes = [len(ranks[0].draw(e, s)) for e in range(20) for s in range(10)]
    assert 17 < np.mean(sizes) < 23 and len(set(sizes)) > 5  # Poisson: about q * n, varying
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != batches[0]
    resumed = PoissonSubjectSampler(200, 0.1, 2, 0, seed=5)
    resumed.resume(epoch=0, steps_done=4)
    resumed.set_epoch(0)
    assert list(resumed) == batches[0][4:]
    assert list(resumed) == batches[0]


def test_noise_multiplier_spends_the_target_and_no_more():
    from medweave.training.dp_sgd import epsilon_after, noise_multiplier

    sigma = noise_multiplier(2.0, 1e-5, 0.05, 400)
    assert 1.99 - 0.01 <= epsilon_after(sigma, 1e-5, 0.05, 400) <= 2.0
    assert epsilon_after(sigma, 1e-5, 0.05, 401) > epsilon_after(sigma, 1e-5, 0.05, 400)
    assert noise_multiplier(2.0, 1e-5, 0.05, 800) > sigma  # more steps, more noise


def test_unreachable_epsilon_names_the_numbers():
    from medweave.training.dp_sgd import noise_multiplier

    with pytest.raises(
        MedweaveError, match=r"target_epsilon=0.05 is out of reach: 1000 steps at sample rate 0.5"
    ):
        noise_multiplier(0.05, 1e-5, 0.5, 1000)
    with pytest.raises(MedweaveError, match="privacy.delta=1.5"):
        noise_multiplier(1.0, 1.5, 0.5, 10)


def test_default_delta_is_far_below_one_over_n():
    from medweave.training.dp_sgd import default_delta

    assert default_delta(100) == 1e-5
    assert default_delta(6_000_000) == pytest.approx(1 / 60_000_000)


def test_modules_opacus_cannot_train_are_named_with_the_fix():
    from medweave.models.fusion.low_rank import LowRankTensorFusion
    from medweave.training.dp_modules import prepare_model

    model = nn.ModuleDict(
        {
            "image": nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)),
            "fusion": LowRankTensorFusion(["a", "b"], 4),
        }
    )
    with pytest.raises(MedweaveError) as err:
        prepare_model(model)
    message = str(err.value)
    assert "image.1 (BatchNorm2d): use GroupNorm" in message
    assert (
        "fusion (LowRankTensorFusion)" in message
        and "model/fusion=attention, concat, gated or late" in message
    )


def test_image_encoder_norm_groups_replaces_every_batch_norm():
    from monai.networks.nets import ResNet

    from medweave.models.encoders.image import ImageEncoder
    from medweave.training.dp_modules import unsupported_modules

    backbone = ResNet(
        "basic", [1, 1, 1, 1], [4, 8, 8, 16], spatial_dims=2, n_input_channels=1, feed_forward=False
    )
    encoder = ImageEncoder(backbone, 16, dim=8, norm_groups=4)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    assert unsupported_modules(encoder) == []
    assert encoder(torch.rand(2, 1, 32, 32)).shape == (2, 8)


def test_dp_attention_computes_and_saves_what_multihead_attention_does():
    from medweave.training.dp_modules import DPAttention

    torch.manual_seed(0)
    plain = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    private = DPAttention.replacing(plain).eval()
    x = torch.randn(3, 5, 8)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 3:] = True
    float_padding = torch.zeros(3, 5).masked_fill(padding, float("-inf"))  # nn.TransformerEncoder's form
    want = plain(x, x, x, key_padding_mask=padding, need_weights=False)[0]
    got = private(x, x, x, key_padding_mask=float_padding, need_weights=False)[0]
    torch.testing.assert_close(got, want)
    assert private.state_dict().keys() == plain.state_dict().keys()  # checkpoints load into a plain model
    again = DPAttention(8, 2)
    again.load_state_dict(plain.state_dict())
    torch.testing.assert_close(
        again.eval()(x, x, x, need_weights=False)[0], plain(x, x, x, need_weights=False)[0]
    )


def test_per_subject_gradients_of_the_attention_fusion_match_autograd():
    """Opacus's hooks (with medweave's ModalityTokens formula and DP attention) against one
    backward pass per subject."""
    from medweave.models.fusion.attention import AttentionFusion
    from medweave.training.dp_modules import prepare_model

    torch.manual_seed(0)
    fusion = AttentionFusion(["a", "b"], dim=8, n_heads=2, dropout=0.0)
    embeddings = {"a": torch.randn(4, 8), "b": torch.randn(4, 8)}
    masks = {"a": torch.tensor([True, True, False, True]), "b": torch.tensor([True, False, True, True])}
    hooks = prepare_model(fusion)

    hooks.disable_hooks()
    expected = []
    for i in range(4):
        fusion.zero_grad()
        one = fusion(
            {m: e[i : i + 1] for m, e in embeddings.items()}, {m: k[i : i + 1] for m, k in masks.items()}
        )
        one.pow(2).sum().backward()
        expected.append({n: p.grad.clone() for n, p in fusion.named_parameters()})

    hooks.enable_hooks()
    fusion.zero_grad()
    fusion(embeddings, masks).pow(2).sum(1).mean().backward()  # a mean over subjects, as the heads' losses
    for name, p in fusion.named_parameters():
        for i in range(4):
            torch.testing.assert_close(p.grad_sample[i], expected[i][name], msg=name, atol=1e-3, rtol=1e-3)
    hooks.remove_hooks()


def test_trainer_settings_dp_sgd_cannot_honour_are_all_reported_at_once():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import SingleDeviceStrategy

    from medweave.models.heads.survival import CoxHead
    from medweave.training.dp_sgd import DifferentialPrivacy

    trainer = SimpleNamespace(
        strategy=SingleDeviceStrategy("cpu"),
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        datamodule=SimpleNamespace(sampling="shuffle"),
        fit_loop=SimpleNamespace(min_epochs=2, epoch_loop=SimpleNamespace(min_steps=None)),
        precision="16-mixed",
    )
    module = nn.Module()
    module.head = CoxHead(4)
    with pytest.raises(MedweaveError) as err:
        DifferentialPrivacy(noise_seed=0)._check_trainer(trainer, module)
    for expected in (
        "accumulate_grad_batches",
        "gradient_clip_val=null",
        "data.sampling",
        "Cox partial likelihood",
        "trainer.min_epochs=2",
        "precision=16-mixed",
    ):
        assert expected in str(err.value)


def test_poisson_draws_are_seeded_secretly_and_the_seed_resumes():
    """Who is in each batch must not follow from the logged data.seed (the accountant's
    amplification by sampling assumes it secret); a resumed run must draw the same batches."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import SingleDeviceStrategy

    from medweave.training.dp_sgd import DifferentialPrivacy

    def fit_start(dp):
        datamodule = SimpleNamespace(seed=0, sampling_seed=None)
        dp.on_fit_start(SimpleNamespace(strategy=SingleDeviceStrategy("cpu"), datamodule=datamodule), None)
        return datamodule.sampling_seed

    first, other = fit_start(DifferentialPrivacy(noise_seed=0)), fit_start(DifferentialPrivacy(noise_seed=1))
    assert first not in (None, 0) and first != other
    assert fit_start(DifferentialPrivacy(noise_seed=0)) == first
    assert fit_start(DifferentialPrivacy()) != fit_start(DifferentialPrivacy())  # from the OS
    resumed = DifferentialPrivacy()  # a fresh OS seed, but the checkpoint's sampling seed wins
    resumed.load_state_dict({"sampling_seed": first, "sample_rate": 0.1})
    assert fit_start(resumed) == first


def test_an_empty_poisson_draw_serves_a_placeholder_that_adds_a_zero_gradient():
    from types import SimpleNamespace

    from medweave.data.datamodule import SplitDataset
    from medweave.training.dp_modules import prepare_model
    from tests.unit.test_module import batch, module

    cohort = SimpleNamespace(rows=lambda split: np.arange(10, 15), batch=lambda rows: {"rows": rows})
    dataset = SplitDataset(cohort, "train")
    assert dataset[[]] == {"rows": np.array([10]), "placeholder": True}  # one stand-in subject
    assert "placeholder" not in dataset[[1, 2]]

    model = module().train()
    hooks = prepare_model(model)
    placeholder = {k: v[:1] for k, v in batch().items()} | {"placeholder": True}
    loss = model._step(placeholder, "train")
    loss.backward()
    assert loss.item() == 0.0
    assert all(not p.grad_sample.any() for p in model.parameters() if p.requires_grad)
    assert model.losses["train_loss"].update_count == 0  # not counted in the epoch's figures
    hooks.remove_hooks()


def test_attention_fusion_checkpoints_from_before_modality_tokens_still_load():
    from medweave.models.fusion.attention import AttentionFusion

    new = AttentionFusion(["a", "b"], dim=8, n_heads=2).state_dict()
    old = {k.replace("tokens.", ""): v for k, v in new.items()}  # summary, modality_embedding on the fusion
    again = AttentionFusion(["a", "b"], dim=8, n_heads=2)
    again.load_state_dict(old)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in new.items())


def test_a_masked_event_backbone_runs_with_dp_attention_swapped_in():
    """The pretrained backbone's own attention path reads MultiheadAttention's packed weights;
    once DP-SGD swaps in DPAttention it must fall back to the layer's stock path."""
    from medweave.models.pretrain.backbone import EventTransformer
    from medweave.training.dp_modules import _replace_attention

    torch.manual_seed(0)
    backbone = EventTransformer(vocab_size=20, n_bins=3, dim=8, n_layers=1, n_heads=2, causal=False)
    batch = {
        "codes": torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]]),
        "bins": torch.zeros(2, 4, dtype=torch.long),
        "age": torch.rand(2, 4) * 20000,
        "delta": torch.rand(2, 4) * 30,
    }
    plain = backbone.eval()(batch)
    assert _replace_attention(backbone) == 1
    private = backbone.eval()(batch)  # the new attention module starts in training mode
    keep = batch["codes"] != 0
    torch.testing.assert_close(private[keep], plain[keep], atol=1e-5, rtol=1e-4)

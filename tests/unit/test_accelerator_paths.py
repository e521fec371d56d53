"""Accelerator switches (configs/trainer/gpu.yaml lists them) give the same maths on CPU, and take the
path they claim: bf16 autocast, torch.compile, SDPA attention, channels_last, fused AdamW, and
non-blocking batch transfers."""

from __future__ import annotations

import copy
import csv
import math

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from monai.networks.nets import ResNet
from torch import nn

from medweave.errors import MedweaveError
from medweave.models.build import build_model
from medweave.models.encoders.ehr_codes import EHRCodesEncoder
from medweave.models.encoders.image import ImageEncoder
from medweave.models.encoders.text import TextEncoder
from tests.conftest import compose

SIZES = {
    "ehr_codes": {"vocab_size": 30},
    "text": {"vocab_size": 40, "pad_token_id": 0},
    "image": {},
    "genomics": {"n_features": 25},
}
B = 4
SDPA = "aten::scaled_dot_product_attention"


def ehr_inputs(length=9):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(2, 30, (B, length), generator=g)
    codes[1, 5:] = 0  # a padded tail
    codes[2] = 0  # no events at all
    values = torch.randn(B, length, generator=g)
    values[:, ::3] = float("nan")
    days = torch.rand(B, length, generator=g) * 300
    days[:, 0] = float("nan")  # a static event
    return {"codes": codes, "values": values, "days": days}


def text_inputs(length=10):
    ids = torch.randint(1, 40, (B, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def smoke_batch():
    """One batch of the contract (medweave.data.datamodule) at debug=smoke sizes."""
    g = torch.Generator().manual_seed(2)
    return {
        "ehr_codes": ehr_inputs(),
        "text": text_inputs(),
        "image": torch.randn(B, 1, 32, 32, generator=g),
        "genomics": torch.randn(B, 25, generator=g),
        **{f"{m}_mask": torch.tensor([True, True, False, True]) for m in SIZES},
        "targets": torch.tensor([0.0, 1.0, 0.0, 1.0]),
        "subject_id": torch.arange(B),
    }


def smoke_model(*overrides: str):
    cfg = compose("train", ["debug=smoke", "data.root=/x", *overrides])
    torch.manual_seed(0)
    return build_model(cfg.model, list(SIZES), SIZES), cfg


def aten_ops(run) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return {event.key for event in prof.key_averages()}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --- bf16 mixed precision (and fused AdamW under it) -------------------------------------------


class AutocastProbe(L.Callback):
    """Records the dtype the head computes in during training (bf16 under bf16-mixed autocast)."""

    dtypes: list[torch.dtype] = []

    def on_train_start(self, trainer, pl_module):
        pl_module.head.register_forward_hook(lambda _m, _i, out: AutocastProbe.dtypes.append(out.dtype))


@pytest.mark.slow
def test_smoke_training_in_bf16_mixed_with_fused_adamw_gives_finite_loss(smoke_cfg, tmp_path):
    from medweave.cli.train import train

    AutocastProbe.dtypes.clear()
    cfg = smoke_cfg(
        "trainer.precision=bf16-mixed",
        # Lightning refuses to clip a fused optimizer's gradients under mixed precision; the module
        # clips them itself when there is no gradient scaler (trainer.gradient_clip_val is 1.0).
        "model.optimizer.fused=true",
        "trainer.max_epochs=1",
        "test=false",
        "logger=csv",
        f"+callbacks.autocast_probe._target_={__name__}.AutocastProbe",
    )
    train(cfg)
    with open(next((tmp_path / "run" / "csv").glob("*/metrics.csv"))) as f:
        losses = [float(row["train/loss_step"]) for row in csv.DictReader(f) if row["train/loss_step"]]
    assert len(losses) == cfg.trainer.limit_train_batches
    assert all(math.isfinite(v) and v > 0 for v in losses), losses
    assert AutocastProbe.dtypes and set(AutocastProbe.dtypes) == {torch.bfloat16}


def test_one_device_cuda_trainer_config_is_bf16_mixed():
    # test_configs' trainer=gpu case is skipped without CUDA (its id says "gpu"); this one is not.
    cfg = compose("train", ["trainer=gpu", "data.root=/x"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"


# --- torch.compile -----------------------------------------------------------------------------

GRAPHS: list = []


@torch._dynamo.register_backend(name="medweave_test_count")
def _count_graphs(gm, example_inputs):
    """The eager backend that also counts the graphs Dynamo captured."""
    GRAPHS.append(gm)
    return gm.forward


def test_compile_switch_keeps_outputs_and_checkpoint_keys_and_trains():
    plain, _ = smoke_model()
    compiled, cfg = smoke_model("model.compile.enabled=true", "model.compile.backend=medweave_test_count")
    assert cfg.model.compile.mode == "default"
    keys = list(plain.state_dict())
    assert list(compiled.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    compiled.load_state_dict(plain.state_dict())  # a checkpoint of either loads into the other

    GRAPHS.clear()
    batch = smoke_batch()
    with torch.no_grad():
        expected, got = plain.eval()(batch), compiled.eval()(batch)
    assert len(GRAPHS) >= len(SIZES) + 2  # each encoder, the fusion and the head were compiled
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

    compiled.train()
    before = [p.detach().clone() for p in compiled.parameters()]
    optimizer = instantiate(cfg.model.optimizer)(params=compiled.parameters())
    loss = compiled.head.loss(compiled(batch), batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    moved = [not torch.equal(b, p) for b, p in zip(before, compiled.parameters(), strict=True)]
    assert sum(moved) > len(moved) // 2
    assert all(torch.isfinite(p).all() for p in compiled.parameters())
    torch._dynamo.reset()


# --- scaled_dot_product_attention ----------------------------------------------------------------


def test_ehr_encoder_attends_through_sdpa_in_training_and_in_inference():
    enc = EHRCodesEncoder(vocab_size=30, dim=16, n_layers=2, n_heads=2)
    inputs = ehr_inputs()
    assert SDPA in aten_ops(lambda: enc.train()(inputs))
    with torch.no_grad():  # where the stock layer would take PyTorch's bmm fast path instead
        assert SDPA in aten_ops(lambda: enc.eval()(inputs))


def test_ehr_sdpa_layer_matches_the_stock_transformer_layer():
    torch.manual_seed(0)
    enc = EHRCodesEncoder(vocab_size=30, dim=16, n_layers=2, n_heads=2, dropout=0.0)
    stock = copy.deepcopy(enc)
    layer = nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True, norm_first=True, activation="gelu")
    stock.transformer = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    stock.transformer.load_state_dict(enc.transformer.state_dict())  # same keys: old checkpoints load
    inputs = ehr_inputs()
    with torch.no_grad():
        torch.testing.assert_close(enc.eval()(inputs), stock.eval()(inputs), rtol=1e-5, atol=1e-5)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):  # the reference kernel
            reference = enc(inputs)
        torch.testing.assert_close(enc(inputs), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc.train()(inputs), stock.train()(inputs), rtol=1e-5, atol=1e-5)


def test_text_encoder_sdpa_matches_eager_and_calls_sdpa():
    config = {
        "model_type": "bert",
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
    torch.manual_seed(0)
    sdpa = TextEncoder(40, 0, dim=8, config=config).eval()
    eager = TextEncoder(40, 0, dim=8, config=config, attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.transformer.config._attn_implementation == "sdpa"
    inputs = text_inputs()
    with torch.no_grad():
        torch.testing.assert_close(sdpa(inputs), eager(inputs), rtol=1e-5, atol=1e-5)
        assert SDPA in aten_ops(lambda: sdpa(inputs))
        assert SDPA not in aten_ops(lambda: eager(inputs))


def test_text_attention_is_a_config_switch():
    model, _ = smoke_model("model.encoders.text.attn_implementation=eager")
    assert model.encoders["text"].transformer.config._attn_implementation == "eager"


# --- channels_last -------------------------------------------------------------------------------


def resnet(spatial_dims=2, channels=1):
    return ResNet(
        "basic",
        [1, 1, 1, 1],
        [4, 8, 8, 16],
        spatial_dims=spatial_dims,
        n_input_channels=channels,
        conv1_t_size=5,
        conv1_t_stride=2,
        feed_forward=False,
    )


def conv_inputs_channels_last(encoder: ImageEncoder, images: torch.Tensor) -> list[bool]:
    seen = []
    hooks = [
        m.register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
        for m in encoder.modules()
        if isinstance(m, nn.Conv2d)
    ]
    encoder(images)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_image_encoder_same_outputs_nhwc_convolutions(channels):
    torch.manual_seed(0)
    plain = ImageEncoder(resnet(channels=channels), feature_dim=16, dim=8).eval()
    nhwc = ImageEncoder(copy.deepcopy(plain.backbone), feature_dim=16, dim=8, channels_last=True).eval()
    nhwc.project.load_state_dict(plain.project.state_dict())
    images = torch.randn(B, channels, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(images), plain(images), rtol=1e-5, atol=1e-5)
        assert all(conv_inputs_channels_last(nhwc, images))  # the first conv's input included
        assert not all(conv_inputs_channels_last(plain, images))
    assert nhwc.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_refuses_a_3d_backbone_and_is_a_config_switch():
    with pytest.raises(MedweaveError, match="spatial_dims: 2"):
        ImageEncoder(resnet(spatial_dims=3), feature_dim=16, channels_last=True)
    model, _ = smoke_model("model.encoders.image.channels_last=true")
    assert model.encoders["image"].channels_last


# --- fused AdamW ---------------------------------------------------------------------------------


def test_fused_adamw_steps_like_foreach():
    _, cfg = smoke_model("model.optimizer.fused=true")
    make = instantiate(cfg.model.optimizer)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 3))
    twin, start = copy.deepcopy(net), copy.deepcopy(net)
    fused = make(params=net.parameters())
    opt = cfg.model.optimizer
    foreach = torch.optim.AdamW(twin.parameters(), lr=opt.lr, weight_decay=opt.weight_decay, foreach=True)
    assert fused.defaults["fused"] is True
    x, y = torch.randn(16, 12), torch.randn(16, 3)
    for _ in range(5):
        for model, optimizer in ((net, fused), (twin, foreach)):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(net[0].weight, start[0].weight)  # they did move


# --- pinned memory and non-blocking copies -------------------------------------------------------


def test_lightning_moves_every_tensor_of_a_nested_batch_non_blocking(monkeypatch):
    """What configs/trainer/gpu.yaml says of data.pin_memory: Lightning's batch transfer (our module
    keeps its default hook) copies each tensor, however deep in the dict, with non_blocking=True to
    any device but cpu and mps. The meta device stands in for CUDA here."""
    model, _ = smoke_model()
    calls = []
    original = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        calls.append(kwargs.get("non_blocking", False))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    moved = model.transfer_batch_to_device(smoke_batch(), torch.device("meta"), 0)
    assert moved["ehr_codes"]["codes"].is_meta and moved["text"]["attention_mask"].is_meta
    assert len(calls) == 3 + 2 + 1 + 1 + len(SIZES) + 2 and all(calls)

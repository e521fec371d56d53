"""Pretraining: the objectives' losses by hand, masking, the leakage rule of the token store, and
the checks a pretrained checkpoint must pass before a task model starts from it."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from medweave.data import contract as c
from medweave.data.ehr import pretrain as store
from medweave.errors import MedweaveError
from medweave.models.pretrain.objectives import MaskedEvents, NextEvent, exponential_nll

NAN = float("nan")
T0 = datetime(2000, 1, 1)


# ------------------------------------------------------------------------------ objectives
def test_exponential_nll_by_hand():
    # rate 2 per year, a wait of half a year: -(log 2 - 2 * 0.5) = 1 - log 2
    got = exponential_nll(torch.tensor([math.log(2.0)]), torch.tensor([0.5]))
    assert got.item() == pytest.approx(1 - math.log(2), abs=1e-6)


def test_next_event_targets_and_loss_by_hand():
    # static SEX (5), then codes 3, 4, 6 at 0, 10 and 11 days; then padding
    batch = {
        "codes": torch.tensor([[5, 3, 4, 6, 0]]),
        "bins": torch.zeros(1, 5, dtype=torch.long),
        "age": torch.full((1, 5), NAN),
        "delta": torch.tensor([[NAN, 0.0, 10.0, 1.0, NAN]]),
    }
    objective = NextEvent(dim=2, vocab_size=7, time_weight=1.0, min_wait_days=0.5)
    _, targets = objective.prepare(batch)
    assert targets["valid"].tolist() == [[True, True, True, False, False]]
    assert targets["code"][0, :3].tolist() == [3, 4, 6]
    assert targets["wait"][0, :3].tolist() == pytest.approx([0.5 / 365.25, 10 / 365.25, 1 / 365.25])
    with torch.no_grad():
        objective.code_head.weight.zero_()
        objective.code_head.bias.zero_()
        objective.wait_head.weight.zero_()
        objective.wait_head.bias.fill_(math.log(3.0))
    loss, parts = objective.loss(torch.zeros(1, 5, 2), targets)
    code = math.log(7)  # uniform over 7 ids
    waits = np.array([0.5, 10, 1]) / 365.25
    time = float(np.mean(3 * waits - math.log(3)))
    assert parts["code_loss"].item() == pytest.approx(code, abs=1e-5)
    assert parts["time_loss"].item() == pytest.approx(time, abs=1e-5)
    assert loss.item() == pytest.approx(code + time, abs=1e-5)
    assert int(parts["tokens"]) == 3


@pytest.mark.parametrize("causal", [True, False])
def test_backbone_attention_is_multihead_attentions_with_the_merged_masks(causal):
    """EventLayer attends with MultiheadAttention's parameters but its own SDPA call, and the
    causal path gives SDPA no padding mask: every real token's output and gradient are what the
    stock layer gives with a causal and a padding mask merged."""
    from medweave.models.encoders.ehr_codes import SDPAEncoderLayer
    from medweave.models.pretrain.backbone import EventTransformer

    torch.manual_seed(0)
    net = EventTransformer(20, 3, dim=16, n_layers=2, n_heads=2, dropout=0.0, causal=causal)
    stock = torch.nn.TransformerEncoder(
        SDPAEncoderLayer(16, 2, 64, 0.0, batch_first=True, norm_first=True, activation="gelu"),
        2,
        enable_nested_tensor=False,
    )
    stock.load_state_dict(net.transformer.state_dict())  # the same keys
    codes = torch.zeros(4, 7, dtype=torch.long)
    for row, n in enumerate([7, 3, 1, 0]):  # right-padded, one row empty
        codes[row, :n] = torch.randint(3, 20, (n,))
    pad, x = codes == 0, torch.randn(4, 7, 16, requires_grad=True)
    seen = pad.clone()
    seen[:, 0] &= ~seen.all(1)
    float_pad = torch.zeros(pad.shape).masked_fill(seen, float("-inf"))
    mask = torch.full((7, 7), float("-inf")).triu(1) if causal else None
    expected = net.norm(stock(x, mask=mask, src_key_padding_mask=float_pad, is_causal=causal))
    got = net.encode(x, pad)
    real = ~pad
    assert torch.allclose(got[real], expected[real], atol=1e-5)
    (g1,), (g2,) = (torch.autograd.grad(y[real].square().sum(), [x]) for y in (got, expected))
    assert torch.allclose(g1, g2, atol=1e-5)


def test_masking_hides_only_timed_events_at_least_one_per_window():
    torch.manual_seed(0)
    n, w = 400, 40
    codes = torch.randint(3, 50, (n, w))
    codes[:, 30:] = 0  # padding
    delta = torch.rand(n, w)
    delta[:, :2] = NAN  # two static events per window
    batch = {
        "codes": codes,
        "bins": torch.ones(n, w, dtype=torch.long),
        "age": torch.zeros(n, w),
        "delta": delta,
    }
    objective = MaskedEvents(dim=4, vocab_size=50, n_bins=10, mask_prob=0.15)
    inputs, targets = objective.prepare(batch)
    chosen = targets["valid"]
    assert not chosen[:, :2].any() and not chosen[:, 30:].any()
    assert chosen.any(1).all()
    share = chosen[:, 2:30].float().mean().item()
    assert 0.13 < share < 0.18
    assert (inputs["bins"][chosen] == 11).all()  # the masked value bin
    masked_token = (inputs["codes"] == store.MASK) & chosen
    assert 0.75 < masked_token.sum().item() / chosen.sum().item() < 0.85
    assert torch.equal(inputs["codes"][~chosen], codes[~chosen])
    assert torch.equal(targets["code"], codes)


# ------------------------------------------------------------------------ leakage rule
def write_cohort(root, n_train=6):
    """Train subjects 1..n_train; held-out 100 (labelled, prediction at day 50) and 101 (no
    label); tuning 200 (labelled at day 20). Each has SEX, a birth, then events every 10 days."""
    rows = []
    for sid in [*range(1, n_train + 1), 100, 101, 200]:
        rows.append((sid, None, "SEX//F", None))
        rows.append((sid, T0, c.BIRTH_CODE, None))
        for k in range(10):
            rows.append(
                (sid, T0 + timedelta(days=10 * (k + 1)), f"ICD//{k % 4}", float(k) if k % 2 else None)
            )
    events = pd.DataFrame(rows, columns=["subject_id", "time", "code", "numeric_value"])
    events["time"] = pd.to_datetime(events["time"]).astype("datetime64[us]")
    events["numeric_value"] = events["numeric_value"].astype("float32")
    (root / "data").mkdir(parents=True)
    (root / "metadata").mkdir()
    (root / "labels").mkdir()
    events.to_parquet(root / "data" / "0.parquet", index=False)
    splits = [(i, "train") for i in range(1, n_train + 1)] + [
        (100, "held_out"),
        (101, "held_out"),
        (200, "tuning"),
    ]
    pd.DataFrame(splits, columns=["subject_id", "split"]).to_parquet(root / c.SUBJECT_SPLITS, index=False)
    labels = pd.DataFrame(
        {
            "subject_id": [100, 200, 200],
            "prediction_time": pd.to_datetime(
                [T0 + timedelta(days=50), T0 + timedelta(days=20), T0 + timedelta(days=90)]
            ),
            "boolean_value": [True, False, True],
        }
    )
    labels.to_parquet(root / "labels" / "x.parquet", index=False)
    return root


def every_token(folders, vocab, width=64):
    tokens = store.TokenStore(folders, vocab, width)
    batch = tokens.batch(tokens.samples)
    return tokens.samples[:, 3], batch


@pytest.mark.parametrize("mode", ["cut", "exclude"])
def test_no_event_of_an_evaluation_subject_after_its_prediction_time(tmp_path, mode):
    root = write_cohort(tmp_path / "cohort")
    folders = store.build_store(root, tmp_path / "cache", mode)
    vocab = store.fit_vocab(folders, min_subjects=2, n_bins=4)
    ids, batch = every_token(folders, vocab)
    real = batch["codes"] != store.PAD
    seen = {int(i): int(real[ids == i].sum()) for i in np.unique(ids)}
    assert all(seen[i] == 12 for i in range(1, 7))  # train: static + birth + 10 events, all of them
    assert 101 not in seen  # held out without a prediction time: nothing
    if mode == "exclude":
        assert not {100, 200} & set(seen)
        return
    cut = {
        100: np.datetime64(T0 + timedelta(days=50), "us"),
        200: np.datetime64(T0 + timedelta(days=20), "us"),
    }
    for sid, when in cut.items():  # the earliest prediction time of any label file
        times = batch["time"][ids == sid][real[ids == sid]]
        timed = times[times != store.NO_TIME]
        assert len(timed) and (timed < when.astype(np.int64)).all()
    assert seen[100] == 6 and seen[200] == 3  # static, birth, and the events before: 4 and 1


def test_store_time_features_and_value_bins(tmp_path):
    root = write_cohort(tmp_path / "cohort")
    folders = store.build_store(root, tmp_path / "cache", "cut")
    vocab = store.fit_vocab(folders, min_subjects=2, n_bins=4)
    assert set(vocab["codes"]) == {c.BIRTH_CODE, "SEX//F", "ICD//0", "ICD//1", "ICD//2", "ICD//3"}
    assert sorted(vocab["bins"]) == ["ICD//1", "ICD//3"]  # the codes with values
    tokens = store.TokenStore(folders, vocab, width=64)
    row = np.flatnonzero(tokens.samples[:, 3] == 1)
    batch = tokens.batch(tokens.samples[row])
    assert np.isnan(batch["age"][0, 0]) and np.isnan(batch["delta"][0, 0])  # static first
    assert batch["age"][0, 1:4].tolist() == [0, 10, 20] and batch["delta"][0, 1:4].tolist() == [0, 10, 10]
    assert batch["bins"][0, 2] == 0 and batch["bins"][0, 3] >= 1  # no value / a binned value


def test_windows_cover_every_event_once(tmp_path):
    root = write_cohort(tmp_path / "cohort")
    folders = store.build_store(root, tmp_path / "cache", "cut")
    vocab = store.fit_vocab(folders, min_subjects=2, n_bins=4)
    ids, batch = every_token(folders, vocab, width=4)  # 1 static + 3 timed per window
    real = (batch["codes"] != 0) & (batch["time"] != store.NO_TIME)
    assert int(real[ids == 1].sum()) == 11  # birth + 10 events, each once
    assert (batch["codes"][:, 0] == vocab["codes"].index("SEX//F") + 3).all()  # static in every window


def test_concurrent_builders_build_each_store_shard_once(tmp_path, monkeypatch):
    """Under DDP every rank calls build_store at once: each shard is built by one of them (a
    lock per shard), and both get the same finished folders."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    root = write_cohort(tmp_path / "cohort")
    events = pd.read_parquet(root / "data" / "0.parquet")
    (root / "data" / "0.parquet").unlink()
    for k, (_, part) in enumerate(events.groupby("subject_id")):  # one store shard per subject
        part.to_parquet(root / "data" / f"{k}.parquet", index=False)
    built, build = [], store.build_unit

    def counted(*args):
        built.append(args[-1].name)
        time.sleep(0.05)  # the two builders overlap
        return build(*args)

    monkeypatch.setattr(store, "build_unit", counted)
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: store.build_store(root, tmp_path / "cache", "cut"), range(2)))
    assert runs[0] == runs[1] and len(runs[0]) == 9
    assert sorted(built) == sorted(f.name for f in runs[0])  # each once, none twice


def test_bad_eval_subjects_is_one_line(tmp_path):
    with pytest.raises(MedweaveError, match=r"eval_subjects=keep: expected one of \['cut', 'exclude'\]"):
        store.eval_cutoffs(tmp_path, "keep")


# --------------------------------------------------------------- pretrained checkpoints
OBJECTIVE_CLASS = {"next_event": "NextEvent", "masked": "MaskedEvents"}


def save_checkpoint(path, codes, objective="next_event", kind="pretrain", drop=None):
    from omegaconf import OmegaConf

    from medweave.cli.pretrain import build_module

    cfg = OmegaConf.create(
        {
            "pretrain": {
                "objective": {
                    "_target_": f"medweave.models.pretrain.objectives.{OBJECTIVE_CLASS[objective]}",
                    "_partial_": True,
                }
            },
            "model": {
                "backbone": {
                    "_target_": "medweave.models.pretrain.backbone.EventTransformer",
                    "_partial_": True,
                    "dim": 8,
                    "n_layers": 1,
                    "n_heads": 2,
                },
                "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True},
                "warmup_steps": 1,
            },
        }
    )
    vocab = {"codes": codes, "bins": {codes[0]: [1.0, 2.0, 3.0]}, "n_bins": 4}
    module = build_module(cfg, vocab, 4)
    extras = {**module.checkpoint_extras, "kind": kind}
    state = {k: v for k, v in module.state_dict().items() if k != drop}
    torch.save({"state_dict": state, "medweave": extras}, path)
    return path


def encoder(path, codes, **kw):
    from medweave.models.encoders.ehr_codes import EHRCodesEncoder

    return EHRCodesEncoder(len(codes) + 2, dim=8, pretrained=str(path), codes=codes, code_stats={}, **kw)


def test_vocabulary_mismatch_names_the_unknown_codes_and_extends(tmp_path):
    ckpt = save_checkpoint(tmp_path / "p.ckpt", ["A", "B", "C", "D"])
    cohort = ["A", "B", "X", "Y"]
    with pytest.raises(MedweaveError, match=r"lacks 2 of the cohort's 4 codes \(50%.*extend_vocab=true"):
        encoder(ckpt, cohort)
    grown = encoder(ckpt, cohort, extend_vocab=True)
    assert grown.pretrained.backbone.code.num_embeddings == 4 + 3 + 2
    assert grown.pretrained.id_map.tolist() == [0, 1, 3, 4, 7, 8]
    out = grown(
        {
            "codes": torch.tensor([[2, 4, 5, 0]]),
            "values": torch.full((1, 4), NAN),
            "days": torch.tensor([[30.0, 20, 1, 0]]),
        }
    )
    assert out.shape == (1, 8) and torch.isfinite(out).all()
    assert encoder(ckpt, ["A", "B", "C", "D", "X"], max_unknown=0.25).pretrained.id_map[-1] == store.UNK


def test_wrong_checkpoints_are_refused_in_one_line(tmp_path):
    codes = ["A", "B"]
    with pytest.raises(MedweaveError, match="does not exist"):
        encoder(tmp_path / "none.ckpt", codes)
    masked = save_checkpoint(tmp_path / "m.ckpt", codes, objective="masked")
    with pytest.raises(MedweaveError, match="objective masked; this needs objective next_event"):
        encoder(masked, codes, objective="next_event")
    assert encoder(masked, codes).pretrained.source["objective"] == "masked"
    task = save_checkpoint(tmp_path / "t.ckpt", codes, kind=None)
    with pytest.raises(MedweaveError, match="not a medweave checkpoint|a medweave-train checkpoint"):
        encoder(task, codes)
    other = save_checkpoint(tmp_path / "o.ckpt", codes, drop="backbone.norm.weight")
    with pytest.raises(MedweaveError, match="do not fit the EventTransformer"):
        encoder(other, codes)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(MedweaveError, match="not a readable checkpoint"):
        encoder(tmp_path / "junk.ckpt", codes)


def test_task_cache_events_read_as_pretraining_read_them(tmp_path):
    """Birth at 10,000 days before prediction, A (value 2.5) at 500, B at 100, static SEX last (as
    the task cache orders them) -> static first, age and days since previous as in the store."""
    codes = [c.BIRTH_CODE, "A", "B", "SEX//F"]
    ckpt = save_checkpoint(tmp_path / "p.ckpt", ["A", c.BIRTH_CODE, "B", "SEX//F"])  # bins for A: 1, 2, 3
    enc = encoder(ckpt, codes, freeze=True).pretrained
    enc.stats[3] = torch.tensor([2.0, 0.5])  # A's mean and sd in the cohort: z = 1 means 2.5
    inputs = {
        "codes": torch.tensor([[2, 3, 4, 5, 0]]),
        "values": torch.tensor([[NAN, 1.0, NAN, NAN, NAN]]),
        "days": torch.tensor([[10000.0, 500, 100, NAN, 0]]),
    }
    tokens, _ = enc.translate(inputs)
    assert tokens["codes"].tolist() == [[6, 4, 3, 5, 0]]  # checkpoint ids: SEX, birth, A, B
    assert tokens["age"][0, :4].nan_to_num(-1).tolist() == [-1, 0, 9500, 9900]
    assert tokens["delta"][0, :4].nan_to_num(-1).tolist() == [-1, 0, 9500, 400]
    assert tokens["bins"][0].tolist() == [0, 0, 3, 0, 0]  # 2.5 lies in A's third bin
    enc.train()
    assert not enc.backbone.training and not any(p.requires_grad for p in enc.backbone.parameters())


@pytest.mark.parametrize("objective", ["next_event", "masked"])
def test_pretrain_config_composes_and_its_callbacks_instantiate(tmp_path, objective):
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from tests.conftest import compose

    overrides = ["data.root=/x", f"pretrain/objective={objective}", f"paths.log_dir={tmp_path}"]
    overrides.append("trainer=ddp")
    cfg = compose("pretrain", [*overrides, "pretrain.eval_subjects=exclude"])
    assert cfg.data.eval_subjects == "exclude" and cfg.trainer.strategy == "ddp"
    assert cfg.pretrain.objective._target_.endswith(OBJECTIVE_CLASS[objective])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    callbacks = [instantiate(node) for node in cfg.callbacks.values()]
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss" and all(callbacks[:2])


def test_fsdp_config_shards_each_backbone_layer_and_keeps_the_checkpoint_keys(tmp_path):
    """trainer=fsdp's wrap policy makes every transformer layer its own FSDP unit, and the full
    state dict it saves has the plain backbone's keys (load.py reads it like any other). Lightning
    runs FSDP on GPUs only, so this wraps with torch's FSDP itself, one CPU rank over gloo."""
    import torch.distributed as dist
    from hydra.utils import instantiate
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from medweave.models.pretrain.backbone import EventTransformer
    from medweave.models.pretrain.objectives import NextEvent
    from tests.conftest import compose

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.objective = EventTransformer(50, 3, 16, 3, 2, 0.0), NextEvent(16, 50)

        def forward(self, batch):
            inputs, targets = self.objective.prepare(batch)
            return self.objective.loss(self.backbone(inputs), targets)[0]

    policy = instantiate(compose("pretrain", ["data.root=/x", "trainer=fsdp"]).trainer.strategy).kwargs
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = Step()
        keys = set(plain.state_dict())
        model = FSDP(plain, auto_wrap_policy=policy["auto_wrap_policy"], device_id=torch.device("cpu"))
        units = [name for name, m in model.named_modules() if isinstance(m, FSDP)]
        assert len(units) == 4 and all(f"transformer.layers.{i}" in units[i + 1] for i in range(3))
        codes = torch.randint(3, 50, (2, 8))
        batch = {"codes": codes, "bins": torch.zeros_like(codes), "age": torch.rand(2, 8) * 1e4}
        model({**batch, "delta": torch.rand(2, 8)}).backward()
        full = FullStateDictConfig(offload_to_cpu=False, rank0_only=False)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, full):
            assert set(model.state_dict()) == keys
    finally:
        dist.destroy_process_group()


def test_fine_tuning_refuses_samples_predicted_before_what_pretraining_saw(tmp_path):
    """The checkpoint keeps each evaluation subject's cutoff; a task sample whose subject gave
    pretraining events at or after its prediction time is counted (an ACES task triggered
    earlier than the labels pretraining was cut at, or a subject pretrained on whole)."""
    root = write_cohort(tmp_path / "cohort")
    rule = store.evaluation_cutoffs(store.eval_cutoffs(root, "cut"))
    assert rule["subject_ids"].tolist() == [100, 101, 200]  # train subjects are not kept
    day = lambda d: np.datetime64(T0 + timedelta(days=d), "us").astype(np.int64)  # noqa: E731
    ids = np.array([100, 100, 200, 200, 101, 3])
    times = np.array([day(50), day(40), day(20), day(10), day(5), day(10)])
    assert store.leaked_samples(rule, ids[:1], times[:1]) == 0  # at the cut: nothing after it seen
    assert store.leaked_samples(rule, ids, times) == 3  # 100 at day 40, 200 at day 10, train 3
    excluded = store.evaluation_cutoffs(store.eval_cutoffs(root, "exclude"))
    assert store.leaked_samples(excluded, ids[:5], times[:5]) == 0


def test_value_bins_need_min_subjects_with_a_value(tmp_path):
    root = write_cohort(tmp_path / "cohort")
    folders = store.build_store(root, tmp_path / "cache", "cut")
    names = json.loads((folders[0] / "codes.json").read_text())
    valued = dict(zip(names, np.load(folders[0] / "valued_subjects.npy").tolist(), strict=True))
    assert valued["ICD//1"] == valued["ICD//3"] == 6 and valued["ICD//0"] == 0  # the 6 train subjects
    assert sorted(store.fit_vocab(folders, min_subjects=6, n_bins=4)["bins"]) == ["ICD//1", "ICD//3"]
    np.save(folders[0] / "valued_subjects.npy", np.minimum(np.load(folders[0] / "valued_subjects.npy"), 1))
    vocab = store.fit_vocab(folders, min_subjects=2, n_bins=4)
    assert "ICD//1" in vocab["codes"] and not vocab["bins"]  # one person's values make no edges


def test_a_frozen_backbone_cannot_extend_its_vocabulary(tmp_path):
    ckpt = save_checkpoint(tmp_path / "p.ckpt", ["A", "B"])
    with pytest.raises(MedweaveError, match="extend_vocab=true needs freeze=false"):
        encoder(ckpt, ["A", "B", "X"], extend_vocab=True, freeze=True)


def test_linear_probe_imports():
    from medweave.embeddings.probe import linear_probe

    assert callable(linear_probe)


def test_check_leakage_reads_the_task_cache_and_refuses(tmp_path):
    from medweave.models.pretrain.load import check_leakage

    rule = {"subject_ids": np.array([100, 200]), "cutoff": np.array([50, 20])}
    ckpt = tmp_path / "p.ckpt"
    torch.save({"medweave": {"evaluation_cutoffs": rule}}, ckpt)
    train, held_out = c.SPLITS.index(c.TRAIN_SPLIT), c.SPLITS.index("held_out")
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    fine = dict(subject_id=np.array([3, 100, 200]), split=np.array([train, held_out, held_out]))
    np.savez(prepared / "subjects.npz", **fine, prediction_time=np.array([0, 50, 20]))
    check_leakage(str(ckpt), prepared)  # train rows are not evaluated; the others predict at the cut
    np.savez(prepared / "subjects.npz", **fine, prediction_time=np.array([0, 40, 20]))
    with pytest.raises(MedweaveError, match="1 of this task's 2 tuning and held-out samples predict before"):
        check_leakage(str(ckpt), prepared)


# ------------------------------------------------------------------ last-event pooling and prior
def test_the_zero_shot_prior_is_the_next_event_risk_of_its_code_at_the_last_event(tmp_path):
    """pool=last returns the last event's state and prior_logit is logit(1 - exp(-rate p(B) H))
    from the checkpoint's own heads, read at that state (evaluation/next_event.py's formula)."""
    from medweave.evaluation.next_event import code_risks
    from medweave.models.pretrain.load import read_checkpoint

    codes = ["A", "B", "C"]
    ckpt = save_checkpoint(tmp_path / "p.ckpt", codes)
    enc = encoder(ckpt, codes, pool="last", prior={"code": "B", "horizon_days": 730}).pretrained
    inputs = {
        "codes": torch.tensor([[2, 3, 4, 0], [4, 2, 0, 0]]),
        "values": torch.full((2, 4), NAN),
        "days": torch.tensor([[300.0, 200, 10, 0], [90, 5, 0, 0]]),
    }
    out = enc.eval()(inputs)
    tokens, _ = enc.translate(inputs)
    saved = read_checkpoint(ckpt)
    heads = NextEvent(8, saved["module"].vocab_size)
    heads.load_state_dict(saved["objective_state"])
    hidden = saved["module"].eval()(tokens)
    last = hidden[torch.arange(2), torch.tensor([2, 1])]
    torch.testing.assert_close(out, last)
    wait, logits = heads.wait_head(last).squeeze(-1), heads.code_head(last)
    risk = code_risks(wait, logits, 2.0 * 365 / 365.25, [3 + codes.index("B")])[:, 0]
    torch.testing.assert_close(torch.sigmoid(enc.prior_logit), risk)
    assert not any(p.requires_grad for p in enc.prior.parameters())  # the heads stay as pretrained


def test_the_query_event_is_read_at_the_prediction_time_after_each_rows_last_event(tmp_path):
    """query=Q puts one event Q after each row's last (right padding kept): 0 days before prediction,
    its age the subject's then, its delta the last event's days before; last pooling reads it."""
    codes = [c.BIRTH_CODE, "A", "Q"]
    ckpt = save_checkpoint(tmp_path / "p.ckpt", codes)
    enc = encoder(ckpt, codes, freeze=True, pool="last", query="Q").pretrained.eval()
    inputs = {  # row 0: birth 10,000 days before prediction, A at 40; row 1: A at 7 only
        "codes": torch.tensor([[2, 3, 0], [3, 0, 0]]),
        "values": torch.full((2, 3), NAN),
        "days": torch.tensor([[10000.0, 40, 0], [7, 0, 0]]),
    }
    tokens, days = enc.with_query(*enc.translate(inputs))
    q = 3 + codes.index("Q")
    assert tokens["codes"].tolist() == [[3, 4, q, 0], [4, q, 0, 0]]
    assert tokens["age"][0, 2].item() == 10000 and torch.isnan(tokens["age"][1, 1])  # row 1: no birth
    assert tokens["delta"][0, 2].item() == 40 and tokens["delta"][1, 1].item() == 7
    assert days[0, 2].item() == 0 and days[1, 1].item() == 0 and torch.isnan(days[1, 2:]).all()
    out = enc(inputs)
    backbone = read_checkpoint_module(ckpt).eval()
    alone = {k: t[:1, :3] for k, t in tokens.items()}  # row 0 with its query, no padding
    torch.testing.assert_close(out[0], backbone(alone)[0, 2])
    with pytest.raises(MedweaveError, match="query='Z' is not in the pretrained vocabulary"):
        encoder(ckpt, codes, query="Z")
    with pytest.raises(MedweaveError, match="need pretrained"):
        from medweave.models.encoders.ehr_codes import EHRCodesEncoder

        EHRCodesEncoder(5, dim=8, codes=codes, query="Q")


def read_checkpoint_module(path):
    from medweave.models.pretrain.load import read_checkpoint

    return read_checkpoint(path)["module"]


def prior_model_config(ckpt):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "encoders": {
                "ehr_codes": {
                    "_target_": "medweave.models.encoders.ehr_codes.EHRCodesEncoder",
                    "dim": 8,
                    "pretrained": str(ckpt),
                    "pool": "last",
                    "prior": {"code": "A", "horizon_days": 365},
                }
            },
            "fusion": {"_target_": "medweave.models.fusion.attention.AttentionFusion", "n_heads": 2},
            "head": {"_target_": "medweave.models.heads.binary.BinaryHead"},
            "module": {"_target_": "medweave.models.module.MultimodalModule", "_partial_": True},
            "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True},
        }
    )


def test_a_task_model_with_a_prior_starts_at_the_prior_and_bad_priors_are_refused(tmp_path):
    from medweave.models.build import build_model

    codes = ["A", "B"]
    ckpt = save_checkpoint(tmp_path / "p.ckpt", codes)
    model_cfg = prior_model_config(ckpt)
    inputs = {c.EHR_CODES: {"vocab_size": 4, "codes": codes, "code_stats": {}}}
    model = build_model(model_cfg, [c.EHR_CODES], inputs).eval()
    events = {
        "codes": torch.tensor([[2, 3, 0]]),
        "values": torch.full((1, 3), NAN),
        "days": torch.tensor([[40.0, 3, 0]]),
    }
    logit = model({c.EHR_CODES: events, f"{c.EHR_CODES}_mask": torch.tensor([True])})
    torch.testing.assert_close(logit, model.encoders[c.EHR_CODES].prior_logit)
    hidden = model({c.EHR_CODES: events, f"{c.EHR_CODES}_mask": torch.tensor([False])})
    assert hidden.item() == 0.0  # the modality absent: no prior, and the head starts at zero

    model_cfg.head = {"_target_": "medweave.models.heads.survival.CoxHead"}
    with pytest.raises(MedweaveError, match="zero-shot prior is the logit of a risk, for binary tasks"):
        build_model(model_cfg, [c.EHR_CODES], inputs)
    with pytest.raises(MedweaveError, match="pretrained vocabulary has no code Z"):
        encoder(ckpt, codes, prior={"code": "Z", "horizon_days": 365})
    masked = save_checkpoint(tmp_path / "m.ckpt", codes, objective="masked")
    with pytest.raises(MedweaveError, match="needs a next_event checkpoint"):
        encoder(masked, codes, prior={"code": "A", "horizon_days": 365})
    with pytest.raises(MedweaveError, match="need pretrained="):
        from medweave.models.encoders.ehr_codes import EHRCodesEncoder

        EHRCodesEncoder(4, dim=8, codes=codes, pool="last")
    with pytest.raises(MedweaveError, match="pool='max'"):
        encoder(ckpt, codes, pool="max")


def test_fine_tuning_from_a_prior_starts_at_the_draws_base_rate(tmp_path):
    """start_at_prior sets the head's bias so the mean risk on the train draw is its share of
    positives, leaves the weights at zero (the ranking is the prior's) and returns the tuning loss."""
    from medweave.fewshot.arms import start_at_prior
    from medweave.models.build import build_model

    codes = ["A", "B"]
    model = build_model(
        prior_model_config(save_checkpoint(tmp_path / "p.ckpt", codes)),
        [c.EHR_CODES],
        {c.EHR_CODES: {"vocab_size": 4, "codes": codes, "code_stats": {}}},
    )
    generator = torch.Generator().manual_seed(0)
    batch = {
        c.EHR_CODES: {
            "codes": torch.randint(2, 4, (6, 5), generator=generator),
            "values": torch.full((6, 5), NAN),
            "days": torch.rand(6, 5, generator=generator) * 1000,
        },
        f"{c.EHR_CODES}_mask": torch.ones(6, dtype=torch.bool),
        "targets": torch.tensor([1.0, 0, 0, 1, 0, 0]),
    }
    loss, state = start_at_prior(model, [batch], [batch])
    with torch.no_grad():
        risk = torch.sigmoid(model(batch))
    assert risk.mean().item() == pytest.approx(2 / 6, abs=1e-6)
    assert not model.head.net[-1].weight.any()
    assert loss == pytest.approx(
        torch.nn.functional.binary_cross_entropy(risk, batch["targets"]).item(), rel=1e-5
    )
    assert torch.equal(state["head.net.1.bias"], model.head.net[-1].bias)

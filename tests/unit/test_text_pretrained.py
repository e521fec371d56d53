"""The offline pretrained route: a Hugging Face model and tokenizer from a local folder."""

import numpy as np
import torch

from medweave.data.prepare import PrepareConfig, prepare
from medweave.data.store import open_arrays
from medweave.data.text import fit_tokenizer, load_tokenizer
from medweave.models.encoders.text import TextEncoder


def test_pretrained_folder_feeds_prepare_and_encoder(tiny_cohort, tmp_path):
    from transformers import AutoConfig, AutoModel

    folder = tmp_path / "local-bert"
    tokenizer = load_tokenizer(
        {"json": fit_tokenizer(["no signs of dyspnea", "reports fatigue"] * 5, 50, min_subjects=1)}
    )
    tokenizer.save_pretrained(folder)
    config = AutoConfig.for_model(
        "bert",
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)

    cache = prepare(
        tiny_cohort,
        tmp_path / "cache",
        PrepareConfig(
            task="cvd_onset_1y", modalities=("text",), max_text_tokens=32, text_tokenizer_path=str(folder)
        ),
    )
    ids = np.asarray(open_arrays(cache)["text_ids"])
    assert ids.max() < len(tokenizer) and (ids == tokenizer.unk_token_id).any()

    encoder = TextEncoder(
        vocab_size=len(tokenizer), pad_token_id=0, dim=8, pretrained_path=str(folder), freeze=True
    ).eval()
    assert not any(p.requires_grad for p in encoder.transformer.parameters())
    batch = torch.from_numpy(ids[:4].astype(np.int64))
    out = encoder({"input_ids": batch, "attention_mask": (batch != 0).long()})
    assert out.shape == (4, 8)
    reloaded = AutoModel.from_pretrained(folder)
    torch.testing.assert_close(
        encoder.transformer.embeddings.word_embeddings.weight, reloaded.embeddings.word_embeddings.weight
    )


def test_fitted_tokenizer_drops_rare_words():
    tok = load_tokenizer({"json": fit_tokenizer(["common word"] * 6 + ["Jensen"], 100)})
    assert tok.convert_ids_to_tokens(tok("Jensen common")["input_ids"]) == [
        "[CLS]",
        "[UNK]",
        "common",
        "[SEP]",
    ]


def test_word_from_one_subject_stays_out_however_often_written():
    docs = ["patient seen today"] * 5 + ["Jensen Jensen Jensen Jensen Jensen Jensen seen"]
    tok = load_tokenizer({"json": fit_tokenizer(docs, 100, min_subjects=5)})
    assert tok.convert_ids_to_tokens(tok("Jensen seen")["input_ids"])[1:3] == ["[UNK]", "seen"]

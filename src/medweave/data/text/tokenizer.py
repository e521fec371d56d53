"""Note tokenizers: fitted on the train split's notes, or a pretrained one from a local path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def fit_tokenizer(docs: list[str], vocab_size: int, min_subjects: int = 5) -> str:
    """A lower-cased word-level tokenizer as Hugging Face tokenizer JSON (works offline).

    ``docs`` holds one document per subject. Words used by fewer than ``min_subjects`` subjects
    become [UNK]: rare words are where names and other identifiers hide, and the vocabulary
    travels inside checkpoints.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])

    # Each subject's words once, so that a word's frequency counts subjects, not mentions. Built
    # before training: the trainer holds the tokenizer, and using it from the iterator deadlocks.
    once_per_subject = [
        " ".join(sorted({w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(d))}))
        for d in docs
    ]
    tok.train_from_iterator(
        once_per_subject,
        trainers.WordLevelTrainer(
            vocab_size=vocab_size, min_frequency=min_subjects, special_tokens=SPECIALS, show_progress=False
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok.to_str()


def load_tokenizer(spec: dict):
    """A transformers fast tokenizer from {"json": ...} or {"path": ...}, truncating old text first."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if "path" in spec:
        tok = AutoTokenizer.from_pretrained(spec["path"], local_files_only=True)
    else:
        from tokenizers import Tokenizer

        tok = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(spec["json"]),
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )
    tok.truncation_side = "left"  # keep the most recent notes
    return tok


def prepare_text(docs: list[str], train, cfg, vocab: dict, out: Path) -> np.ndarray:
    """Token ids [N, max_text_tokens] of each subject's notes (``docs``, one per labelled subject,
    oldest note first) into ``out/text_ids.npy``; the tokenizer is fitted on train unless the
    vocabulary holds one. Returns which subjects have notes."""
    from tqdm.auto import tqdm

    from medweave.errors import MedweaveError

    n = len(docs)
    if "tokenizer" not in vocab:
        if cfg.text_tokenizer_path:
            vocab["tokenizer"] = {"path": str(Path(cfg.text_tokenizer_path).resolve())}
        else:
            train_docs = [d for d, t in zip(docs, train, strict=True) if t and d]
            vocab["tokenizer"] = {
                "json": fit_tokenizer(train_docs, cfg.text_vocab_size, min_subjects=cfg.min_subjects)
            }
    tokenizer = load_tokenizer(vocab["tokenizer"])
    if tokenizer.pad_token_id is None:
        raise MedweaveError(
            f"tokenizer {vocab['tokenizer'].get('path', '(fitted)')} has no pad token; "
            "expected an encoder-style tokenizer (BERT-like) with [PAD]"
        )
    ids = np.full((n, cfg.max_text_tokens), tokenizer.pad_token_id, np.int32)
    batch = 512
    for start in tqdm(range(0, n, batch), desc="tokenising notes", unit="batch", leave=False):
        enc = tokenizer(
            docs[start : start + batch], truncation=True, max_length=cfg.max_text_tokens, padding="max_length"
        )
        ids[start : start + batch] = np.asarray(enc["input_ids"], np.int32)
    np.save(out / "text_ids.npy", ids)
    vocab["text_vocab_size"] = len(tokenizer)
    vocab["text_pad_id"] = int(tokenizer.pad_token_id)
    return np.array([bool(d) for d in docs])

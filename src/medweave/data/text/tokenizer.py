"""Note tokenizers: fitted on the train split's notes, or a pretrained one from a local path."""

from __future__ import annotations

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

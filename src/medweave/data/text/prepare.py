"""The text modality in the prepared cache: each subject's notes before prediction time, tokenised.

The notes a sample sees depend on its prediction time and the tokenizer on the train split's
notes, so the text store (``<cache_dir>/text/<key>/``, data/store.py) is keyed as the EHR cache
shards are: by the event files, the labelled subjects with their prediction times and train
split, the truncation and the tokenizer (fitted, a local path, or a checkpoint's). Tasks and
ablation arms that share labels (another model, another set of other modalities, an evaluation
with the checkpoint's vocabulary) read one copy, and the notes are read from the events only once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medweave.data import contract as c
from medweave.data import store
from medweave.data.fingerprint import quick_fingerprint
from medweave.data.text.tokenizer import fit_tokenizer, load_tokenizer

STORE = "text"  # under cache_dir
FITTED = ("tokenizer", "text_vocab_size", "text_pad_id")  # what the store puts into the vocabulary


def prepare_text(root: Path, units, labelled, bad, cfg, vocab: dict, out: Path) -> np.ndarray:
    """Link the token ids of each labelled subject's notes (built once in the text store) and put
    the tokenizer into ``vocab``; returns which subjects have notes."""
    from medweave.data import ehr
    from medweave.data.prepare import CACHE_FORMAT

    if "tokenizer" in vocab:
        tokenizer = vocab["tokenizer"]
    elif cfg.text_tokenizer_path:
        path = Path(cfg.text_tokenizer_path).resolve()
        tokenizer = {"path": str(path), "files": quick_fingerprint(path) if path.is_dir() else None}
    else:
        tokenizer = {"fit": cfg.text_vocab_size, "min_subjects": cfg.min_subjects}
    folder = (
        out.parent
        / STORE
        / store.key(
            cache=CACHE_FORMAT,
            inputs=store.inputs_fingerprint(root, [c.EVENTS_DIR], cfg.fingerprint, out.parent),
            labelled=labelled.digest(),
            max_tokens=cfg.max_text_tokens,
            tokenizer=tokenizer,
            lenient=cfg.lenient,
        )
    )

    def build(tmp: Path) -> dict:
        docs = ehr.notes_per_subject(units, labelled.subject_ids, labelled.pred_time, bad)
        fitted = dict(vocab)
        np.save(tmp / "present.npy", tokenise(docs, labelled.train, cfg, fitted, tmp))
        (tmp / "fitted.json").write_text(json.dumps({k: fitted[k] for k in FITTED}))
        return {"subjects": len(docs)}

    store.build_once(folder, build)
    vocab.update(json.loads((folder / "fitted.json").read_text()))
    store.link(out, "text_ids", folder, np.arange(len(labelled.subject_ids)), fill=vocab["text_pad_id"])
    return np.load(folder / "present.npy")


def tokenise(docs: list[str], train, cfg, vocab: dict, out: Path) -> np.ndarray:
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

"""The text modality: clinical notes (EHR events with a NOTE// code) tokenised up to prediction time.

tokenizer.py fits a word-level tokenizer on the train split's notes (or loads a pretrained one
from a local path); prepare.py writes the token ids into the shared text store (data/store.py).
"""

from medweave.data.text.prepare import prepare_text
from medweave.data.text.tokenizer import SPECIALS, fit_tokenizer, load_tokenizer

__all__ = ["SPECIALS", "fit_tokenizer", "load_tokenizer", "prepare_text"]

"""The text modality: clinical notes tokenised up to prediction time (tokenizer.py)."""

from medweave.data.text.tokenizer import SPECIALS, fit_tokenizer, load_tokenizer, prepare_text

__all__ = ["SPECIALS", "fit_tokenizer", "load_tokenizer", "prepare_text"]

"""Frozen encoders that medweave-embed runs over one modality of a prepared cohort cache.

Each reads its modality's arrays from the prepared cache, which holds only what came before each
subject's prediction_time (the notes before it, tokenised; the latest image before it), so an
embedding never sees later data. Constructors only check the files; ``load`` reads the weights,
so a run that reuses an embedding cache never loads the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from medweave.data import store
from medweave.errors import MedweaveError

HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HF_TOKENIZER = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


class FrozenEncoder(Protocol):
    modality: str
    pooling: str  # how one vector per subject is formed (written into the provenance)

    def inputs(self, prepared: Path) -> tuple[np.ndarray, np.ndarray]:
        """(array [N, ...] of model inputs, present bool [N]) from the prepared cache (the array a
        view of its shared store, data/store.py)."""

    def load(self, device: torch.device) -> None: ...

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        """[B, ...] inputs -> [B, W] float32 embeddings (on the CPU)."""


def _subjects_present(prepared: Path, modality: str) -> np.ndarray:
    subjects = np.load(prepared / "subjects.npz")
    key = f"present_{modality}"
    if key not in subjects:
        raise MedweaveError(
            f"{prepared / 'subjects.npz'}: no {key}; the cache was prepared without {modality}"
        )
    return subjects[key].astype(bool)


class SentenceEncoder:
    """A Hugging Face encoder from a local folder (e.g. sentence-transformers' all-MiniLM-L6-v2).

    Pooling: the mean of the last hidden states over the note tokens the attention mask marks as
    real (padding left out), as sentence-transformers' mean pooling does; ``normalize`` scales each
    vector to unit length (its Normalize module). The notes are the prepared cache's ``text_ids``,
    tokenised with this folder's own tokenizer (data.text_tokenizer_path, which medweave-embed sets).

    Args:
        path: local model folder: config.json, weights (model.safetensors or pytorch_model.bin,
            as save_pretrained writes them) and the tokenizer files. Never a hub download.
        normalize: L2-normalise each embedding.
        attn_implementation: sdpa (PyTorch's fused attention) or eager (the reference).
    """

    modality = "text"
    pooling = "mean over tokens (attention mask)"

    def __init__(self, path: str, normalize: bool = False, attn_implementation: str = "sdpa"):
        self.path = Path(path).expanduser().resolve()
        self.normalize, self.attn_implementation = normalize, attn_implementation
        expect = (
            "a local Hugging Face model folder with config.json, weights "
            f"({' or '.join(HF_WEIGHTS[::2])}) and its tokenizer ({' or '.join(HF_TOKENIZER[:2])})"
        )
        if not self.path.exists():
            raise MedweaveError(f"model_path '{path}' does not exist; expected {expect}")
        if not self.path.is_dir():
            raise MedweaveError(f"model_path '{path}' is a file; expected {expect}")
        if not (self.path / "config.json").is_file():
            raise MedweaveError(f"{self.path}: no config.json; expected {expect}")
        if not any((self.path / w).is_file() for w in HF_WEIGHTS):
            raise MedweaveError(
                f"{self.path}: no model weights (none of {list(HF_WEIGHTS)}); expected {expect}"
            )
        if not any((self.path / t).is_file() for t in HF_TOKENIZER):
            raise MedweaveError(
                f"{self.path}: no tokenizer (none of {list(HF_TOKENIZER)}); expected {expect}"
            )
        self.model = None
        self.pad_id = 0

    def inputs(self, prepared: Path) -> tuple[np.ndarray, np.ndarray]:
        from transformers import AutoConfig

        vocab = json.loads((prepared / "vocab.json").read_text())
        used = vocab.get("tokenizer", {}).get("path")
        if used is None or Path(used).resolve() != self.path:
            used = used or "a fitted word tokenizer"
            raise MedweaveError(
                f"{prepared / 'vocab.json'}: the notes were tokenised with {used}, not with the tokenizer "
                f"of {self.path}; expected data.text_tokenizer_path={self.path}"
            )
        ids = store.open_arrays(prepared)["text_ids"]
        config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        longest = getattr(config, "max_position_embeddings", None)
        if longest is not None and ids.shape[1] > longest:
            raise MedweaveError(
                f"data.max_text_tokens={ids.shape[1]}: {self.path} reads at most {longest} tokens "
                f"(max_position_embeddings in config.json); expected data.max_text_tokens<={longest}"
            )
        self.pad_id = int(vocab["text_pad_id"])
        return ids, _subjects_present(prepared, self.modality)

    def load(self, device: torch.device) -> None:
        from transformers import AutoModel

        try:
            model = AutoModel.from_pretrained(
                self.path, local_files_only=True, attn_implementation=self.attn_implementation
            )
        except (OSError, ValueError, RuntimeError) as err:  # a corrupt or mismatched weights file
            raise MedweaveError(f"{self.path}: the model does not load ({err})") from None
        self.model = model.eval().requires_grad_(False).to(device)

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        ids = torch.from_numpy(np.asarray(batch, np.int64))
        mask = ids != self.pad_id
        width = max(int(mask.any(0).nonzero().max()) + 1, 1) if mask.any() else 1
        device = next(self.model.parameters()).device
        ids, mask = ids[:, :width].to(device), mask[:, :width].to(device)
        states = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, T, H]
        keep = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * keep).sum(1) / keep.sum(1).clamp(min=1)  # [B, H]
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu()


class StateDictNetwork:
    """An imaging network (a MONAI ResNet by default) with weights from a local state dict.

    The network is built from its config (embed.yaml ``image.network`` or ``volume.network``) and
    must return pooled features ([B, F], e.g. ``ResNet(feed_forward=False)``); the weights are read
    with ``torch.load(weights_only=True)``, which runs no code from the file. Inputs are the prepared
    cache's: the latest radiograph ([N, 1, H, W]) or CT/MR volume ([N, 1, D, H, W]) before
    prediction_time, scaled to [0, 1].

    Args:
        path: a file written by ``torch.save(network.state_dict(), path)``, or a checkpoint whose
            ``state_dict`` holds the network's weights under ``state_dict_prefix``.
        network: the network the weights belong to.
        state_dict_prefix: keep only keys under this prefix, without it (e.g.
            ``encoders.image.backbone.`` for the image backbone inside a medweave checkpoint).
        modality: the prepared array it reads: ``image`` (2D) or ``volume`` (3D); the network's
            spatial_dims must match.
    """

    pooling = "the network's own (global average pooling in a MONAI ResNet)"

    def __init__(self, path: str, network: nn.Module, state_dict_prefix: str = "", modality: str = "image"):
        if modality not in ("image", "volume"):
            raise MedweaveError(f"StateDictNetwork modality='{modality}': expected image or volume")
        self.modality = modality
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise MedweaveError(
                f"model_path '{path}' does not exist or is not a file; expected a state dict written "
                "by torch.save(network.state_dict(), path)"
            )
        self.network, self.prefix = network, state_dict_prefix

    def inputs(self, prepared: Path) -> tuple[np.ndarray, np.ndarray]:
        arrays = store.open_arrays(prepared)[self.modality]
        return arrays, _subjects_present(prepared, self.modality)

    def load(self, device: torch.device) -> None:
        try:
            with torch.serialization.safe_globals(_NUMPY_ARRAYS):  # medweave checkpoints hold RNG states
                state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a file that is not a state dict
            raise MedweaveError(
                f"{self.path}: not a readable PyTorch state dict ({type(err).__name__}); expected a file "
                "written by torch.save(network.state_dict(), path) (read weights_only: no code runs)"
            ) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise MedweaveError(
                f"{self.path}: expected a state dict (parameter name -> tensor), found {type(state).__name__}"
            )
        if self.prefix:
            state = {k[len(self.prefix) :]: v for k, v in state.items() if k.startswith(self.prefix)}
            if not state:
                raise MedweaveError(f"{self.path}: no key starts with state_dict_prefix '{self.prefix}'")
        try:
            self.network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
            raise MedweaveError(
                f"{self.path}: the state dict does not fit the network in {self.modality}.network "
                f"({type(self.network).__name__}): {detail[:400]}; expected the weights of that network"
            ) from None
        self.network = self.network.eval().requires_grad_(False).to(device)

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        device = next(self.network.parameters()).device
        images = torch.from_numpy(np.asarray(batch, np.float32)).to(device)
        return self.network(images).flatten(1).float().cpu()


def _numpy_array_globals() -> list:
    """What unpickling plain numpy arrays needs (no code of the file's choosing runs)."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


_NUMPY_ARRAYS = _numpy_array_globals()

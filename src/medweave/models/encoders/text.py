"""Clinical text through Hugging Face transformers: a tiny random-init model from a config, or a
pretrained one from a local folder (never a hub download)."""

from __future__ import annotations

import inspect

import torch
from torch import nn


class TextEncoder(nn.Module):
    """Mean-pooled transformer states over the note tokens, projected to ``dim``.

    Args:
        vocab_size: tokenizer size (given by the prepared cohort).
        pad_token_id: the tokenizer's padding id (given by the prepared cohort).
        dim: output embedding width.
        pretrained_path: local folder with a Hugging Face model; its tokenizer must be the one
            given to the data module (``data.text_tokenizer_path``).
        config: AutoConfig keyword arguments (model_type and sizes) used when no path is given.
        freeze: keep the transformer's weights fixed (train only the projection).
        attn_implementation: Hugging Face attention kernel: ``sdpa`` (PyTorch's fused
            ``scaled_dot_product_attention``) or ``eager`` (matmul + softmax, the reference). Named
            here so a transformers upgrade cannot change it silently.
    """

    def __init__(
        self,
        vocab_size: int,
        pad_token_id: int,
        dim: int = 64,
        pretrained_path: str | None = None,
        config: dict | None = None,
        freeze: bool = False,
        attn_implementation: str = "sdpa",
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.out_dim = dim
        if pretrained_path:
            self.transformer = AutoModel.from_pretrained(
                pretrained_path, local_files_only=True, attn_implementation=attn_implementation
            )
        else:
            settings = dict(config or {"model_type": "bert"})
            model_type = settings.pop("model_type")
            hf_config = AutoConfig.for_model(
                model_type, vocab_size=vocab_size, pad_token_id=pad_token_id, **settings
            )
            self.transformer = AutoModel.from_config(hf_config, attn_implementation=attn_implementation)
        if getattr(self.transformer, "pooler", None) is not None:
            # We pool ourselves; an unused pooler would also stall DDP (unused parameters).
            self.transformer.pooler = None
        if freeze:
            self.transformer.requires_grad_(False)
        self.project = nn.Linear(self.transformer.config.hidden_size, dim)
        # Positions given per subject ([B, T], not the model's shared [1, T]): the same numbers, but
        # DP-SGD's per-subject gradients need the position embedding's input to have a batch axis.
        self._pass_positions = "position_ids" in inspect.signature(self.transformer.forward).parameters

    def forward(self, inputs: dict) -> torch.Tensor:
        mask = inputs["attention_mask"]
        ids = inputs["input_ids"]
        extra = {}
        if self._pass_positions:
            extra["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        states = self.transformer(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
        keep = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.project(pooled)

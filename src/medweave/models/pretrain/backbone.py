"""EventTransformer: a transformer over a timeline of events, each code + value bin + time.

Time enters twice, as Delphi and life2vec do: the age at the event (sinusoids of age in years,
so that risks that change with age have a smooth handle) and the days since the previous event
(log-scaled). Static events (sex) carry neither and a flag instead. ``causal`` decides whether a
token sees only the past (next-event pretraining) or the whole window (masked events).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medweave.models.encoders.ehr_codes import SDPAEncoderLayer

N_FREQ = 8  # sinusoid pairs over age: periods from 1 to ~128 years


class EventLayer(SDPAEncoderLayer):
    """SDPAEncoderLayer whose attention calls SDPA on batch-first tensors itself, with
    nn.MultiheadAttention's own parameters: the same state_dict keys and the same math.
    MultiheadAttention goes sequence-first and back and copies the packed q, k, v (and their
    gradients) several times a layer: on a 2-core CPU a sixth of a next-event step
    (benchmarks/RESULTS.md, "Pretraining at scale"). Masks arrive as TransformerEncoder hands
    them over (float); with ``is_causal`` and no padding mask SDPA gets no mask at all."""

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal=False):
        attn = self.self_attn
        if not isinstance(attn, nn.MultiheadAttention):  # swapped out (privacy=dp: DPAttention)
            return super()._sa_block(x, attn_mask, key_padding_mask, is_causal=is_causal)
        b, n, d = x.shape
        qkv = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        mask, causal = (None, True) if is_causal else (attn_mask, False)
        if key_padding_mask is not None:
            if is_causal and attn_mask is None:  # keep causality when padding brings a mask
                attn_mask = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
            mask = key_padding_mask[:, None, None, :] + (attn_mask if attn_mask is not None else 0)
            causal = False
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=attn.dropout if self.training else 0.0, is_causal=causal
        )
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.dropout1(nn.functional.linear(out, attn.out_proj.weight, attn.out_proj.bias))


def time_features(age: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """[B, L, 2 N_FREQ + 4]: sin/cos of age, age / 100, log-days since previous, static, no age."""
    static = torch.isnan(delta)
    no_age = torch.isnan(age)
    years = torch.nan_to_num(age) / 365.25
    periods = 2.0 ** torch.arange(N_FREQ, device=age.device, dtype=years.dtype)
    angle = 2 * math.pi * years.unsqueeze(-1) / periods
    waves = torch.cat([angle.sin(), angle.cos()], -1) * (~no_age).unsqueeze(-1)
    gap = torch.log1p(torch.nan_to_num(delta).clamp(min=0)) / 10
    flags = torch.stack([years / 100, gap, static.to(years.dtype), no_age.to(years.dtype)], -1)
    return torch.cat([waves, flags], -1)


class EventTransformer(nn.Module):
    """Args:
    vocab_size: code ids (0 pad, 1 unknown, 2 mask, then the codes).
    n_bins: value bins per code (ids 0 = no value, 1..n_bins, n_bins + 1 = masked).
    dim: token and output width.
    n_layers: transformer layers.
    n_heads: attention heads (dim must divide by it).
    dropout: dropout inside the transformer.
    causal: each token attends to itself and earlier tokens only.
    """

    def __init__(
        self,
        vocab_size: int,
        n_bins: int,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.1,
        causal: bool = True,
    ):
        super().__init__()
        self.vocab_size, self.n_bins, self.dim, self.causal = vocab_size, n_bins, dim, causal
        self.code = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.value = nn.Embedding(n_bins + 2, dim, padding_idx=0)
        self.time = nn.Linear(2 * N_FREQ + 4, dim)
        layer = EventLayer(
            dim, n_heads, 4 * dim, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def embed(
        self, codes: torch.Tensor, bins: torch.Tensor, age: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """[B, L, dim] input tokens."""
        return (
            self.code(codes)
            + self.value(bins)
            + self.time(time_features(age, delta).to(self.time.weight.dtype))
        )

    def encode(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """[B, L, dim] hidden states of tokens ``x``; ``padding`` True = no token, right-padded
        (a row's pads after all its tokens: the token store's batches and load.py's are).

        Causal: a token attends to itself and earlier tokens only, so with right padding no token
        sees a pad and the causal mask is the whole mask: SDPA runs with ``is_causal`` and no
        mask, instead of reading a [B, heads, L, L] float mask merged from a causal and a padding
        mask in every layer (benchmarks/RESULTS.md, "Pretraining at scale"). Every token's output
        is what the merged masks gave; a pad's own output differs and is never used (the losses
        and the pooling skip pads).
        """
        if self.causal:
            return self.norm(self.transformer(x, is_causal=True))
        padding = padding.clone()
        padding[:, 0] &= ~padding.all(1)  # an empty row sees one pad token rather than NaN
        # As float: PyTorch warns on (and deprecates) a bool mask beside the float one it makes.
        padding = torch.zeros(padding.shape, device=x.device, dtype=x.dtype).masked_fill(
            padding, float("-inf")
        )
        return self.norm(self.transformer(x, src_key_padding_mask=padding))

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.embed(batch["codes"], batch["bins"], batch["age"], batch["delta"])
        return self.encode(x, batch["codes"] == 0)

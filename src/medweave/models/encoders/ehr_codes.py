"""EHR codes: a small transformer over the events before prediction_time."""

from __future__ import annotations

import torch
from torch import nn


class EHRCodesEncoder(nn.Module):
    """Each event is code embedding + numeric value + time before prediction; a transformer
    reads them and a masked mean pools them.

    Args:
        vocab_size: number of code ids (given by the prepared cohort: 0 pad, 1 unknown).
        dim: width of tokens and of the output embedding.
        n_layers: transformer layers.
        n_heads: attention heads (dim must divide by it).
        dropout: dropout inside the transformer.
    """

    def __init__(
        self, vocab_size: int, dim: int = 64, n_layers: int = 2, n_heads: int = 4, dropout: float = 0.1
    ):
        super().__init__()
        self.out_dim = dim
        self.code = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.value = nn.Linear(2, dim)  # (z-scored value, has value)
        self.time = nn.Linear(3, dim)  # log-days before prediction, its square, is-static
        layer = nn.TransformerEncoderLayer(
            dim, n_heads, 2 * dim, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, inputs: dict) -> torch.Tensor:
        codes, values, days = inputs["codes"], inputs["values"], inputs["days"]
        padding = codes == 0  # [B, L], True = no event
        has_value = ~torch.isnan(values)
        value_feats = torch.stack([torch.nan_to_num(values).clamp(-5, 5), has_value.float()], -1)
        static = torch.isnan(days)  # events without a time (sex)
        log_days = torch.log1p(torch.nan_to_num(days).clamp(min=0)) / 10
        time_feats = torch.stack([log_days, log_days**2, static.float()], -1)
        x = self.code(codes) + self.value(value_feats) + self.time(time_feats)
        # A subject with no events would make attention all-masked (NaN); let it see one pad token.
        padding = padding.clone()
        padding[:, 0] &= ~padding.all(1)
        h = self.norm(self.transformer(x, src_key_padding_mask=padding))
        keep = (~padding).unsqueeze(-1).float()
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1)

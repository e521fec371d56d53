"""EHR codes: a small transformer over the events before prediction_time."""

from __future__ import annotations

import torch
from torch import nn

from medweave.data import contract as c
from medweave.errors import MedweaveError


class SDPAEncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` (pre-norm) that always attends through
    ``F.scaled_dot_product_attention``.

    In inference without autocast, the stock layer swaps in PyTorch's fast path
    (``torch._transformer_encoder_layer_fwd``), which with a padding mask computes attention as
    bmm + masked softmax, not with the fused SDPA kernels: on a 2-core CPU it measured 1.4-2x
    slower (64 subjects x 256 events, dim 64). Training and autocast took the SDPA route already;
    this layer always does. Same parameters and state_dict keys as the stock layer, so older
    checkpoints load unchanged.
    """

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        # The stock layer's own pre-norm branch, without the fast-path check before it. The padding
        # mask arrives as float (nn.TransformerEncoder converts it), which also keeps
        # MultiheadAttention off its fast path: F.multi_head_attention_forward then calls SDPA.
        x = src + self._sa_block(self.norm1(src), src_mask, src_key_padding_mask, is_causal=is_causal)
        return x + self._ff_block(self.norm2(x))


def age_at_prediction(codes: torch.Tensor, days: torch.Tensor, birth: int) -> torch.Tensor:
    """[B] days from the birth event (code id ``birth``) to prediction time; NaN where a subject
    has none. The task cache keeps the birth event however long the history (data/ehr/shards.py)."""
    is_birth = (codes == birth) & ~torch.isnan(days)
    found = torch.where(is_birth, days, torch.full_like(days, -1.0)).amax(1)
    return torch.where(found >= 0, found, torch.full_like(found, float("nan")))


class EHRCodesEncoder(nn.Module):
    """Each event is code embedding + numeric value + time before prediction (+ the subject's
    age); a transformer reads them and a masked mean pools them.

    Args:
        vocab_size: number of code ids (given by the prepared cohort: 0 pad, 1 unknown).
        dim: width of tokens and of the output embedding.
        n_layers: transformer layers.
        n_heads: attention heads (dim must divide by it).
        dropout: dropout inside the transformer.
        pretrained: a medweave-pretrain checkpoint to start from (models/pretrain/load.py); its
            backbone replaces the transformer above (n_layers, n_heads, dropout come from it).
        freeze: with ``pretrained``: keep the pretrained weights fixed (a probe of them).
        extend_vocab: with ``pretrained``: learn embeddings for codes the checkpoint lacks.
        max_unknown: with ``pretrained``: the share of the cohort's codes it may lack.
        objective: with ``pretrained``: refuse a checkpoint of another objective (null: either).
        pool, prior, query: with ``pretrained``: the last event's state instead of the mean, the
            zero-shot risk of a code the binary logit starts from, and the index event's code read
            at the prediction time (models/pretrain/load.py).
        codes, code_stats: the cohort's code names and value statistics (given by the data module).
        linear_time: also give each event its time before prediction in years / 100, unlogged.
            On log days alone the birth event of a 50- and a 100-year-old differ by 0.07 (an
            age is almost invisible); linearly, by 0.5. On flchain, with lr 2e-3, it lifted
            held-out AUROC from 0.72 to 0.785 (benchmarks/RESULTS.md).
        age: also give every event the subject's age at prediction time (years / 100, from the
            birth event; 0 and a flag where unknown), so age reaches every token, not only the
            birth event's. Both are on in configs/model/encoder/ehr_codes_transformer.yaml (the
            quickstart sandbox lost nothing with them: benchmarks/RESULTS.md, "The from-scratch
            EHR model: age") and off here, so older task checkpoints rebuild as they were.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.1,
        pretrained: str | None = None,
        freeze: bool = False,
        extend_vocab: bool = False,
        max_unknown: float = 0.05,
        objective: str | None = None,
        codes: list[str] | None = None,
        code_stats: dict | None = None,
        linear_time: bool = False,
        age: bool = False,
        pool: str = "mean",
        prior: dict | None = None,
        query: str | None = None,
    ):
        super().__init__()
        self.out_dim = dim
        self.linear_time, self.age = linear_time, age
        names = list(codes or [])
        self.birth = names.index(c.BIRTH_CODE) + 2 if c.BIRTH_CODE in names else -1
        self.pretrained = None
        if (pool != "mean" or prior or query) and not pretrained:
            raise MedweaveError(
                f"model.encoders.ehr_codes: pool={pool}, prior={prior} and query={query} need pretrained=<a "
                "medweave-pretrain checkpoint> (the encoder trained from scratch mean-pools)"
            )
        if pretrained:
            from medweave.models.pretrain.load import PretrainedEvents

            self.pretrained = PretrainedEvents(
                pretrained,
                list(codes or []),
                dict(code_stats or {}),
                dim,
                freeze,
                extend_vocab,
                max_unknown,
                objective,
                pool,
                dict(prior) if prior else None,
                query,
            )
            return
        self.code = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.value = nn.Linear(2, dim)  # (z-scored value, has value)
        # log-days before prediction, its square, is-static (+ years / 100 with linear_time,
        # + age / 100 and has-age with age)
        self.time = nn.Linear(3 + linear_time + 2 * age, dim)
        layer = SDPAEncoderLayer(
            dim, n_heads, 2 * dim, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def time_features(self, days: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] days before prediction (NaN = static) -> [B, L, 3 to 6] inputs of ``self.time``;
        ``codes`` (the event ids) find the birth event for ``age``."""
        static = torch.isnan(days)  # events without a time (sex)
        log_days = torch.log1p(torch.nan_to_num(days).clamp(min=0)) / 10
        parts = [log_days, log_days**2, static.float()]
        if self.linear_time:
            parts.append(torch.nan_to_num(days).clamp(min=0) / 36525.0)
        if self.age:
            age = (
                age_at_prediction(codes, days, self.birth) if codes is not None else days[:, 0] * float("nan")
            )
            known = ~torch.isnan(age)
            parts += [
                torch.nan_to_num(age / 36525.0).unsqueeze(1).expand_as(days),
                known.float().unsqueeze(1).expand_as(days),
            ]
        return torch.stack(parts, -1)

    @property
    def prior_logit(self) -> torch.Tensor | None:
        """With a pretrained ``prior``: its zero-shot logit for the last forward's subjects."""
        return None if self.pretrained is None else self.pretrained.prior_logit

    def forward(self, inputs: dict) -> torch.Tensor:
        if self.pretrained is not None:
            return self.pretrained(inputs)
        codes, values, days = inputs["codes"], inputs["values"], inputs["days"]
        padding = codes == 0  # [B, L], True = no event
        has_value = ~torch.isnan(values)
        value_feats = torch.stack([torch.nan_to_num(values).clamp(-5, 5), has_value.float()], -1)
        x = self.code(codes) + self.value(value_feats) + self.time(self.time_features(days, codes))
        # A subject with no events would make attention all-masked (NaN); let it see one pad token.
        padding = padding.clone()
        padding[:, 0] &= ~padding.all(1)
        h = self.norm(self.transformer(x, src_key_padding_mask=padding))
        keep = (~padding).unsqueeze(-1).float()
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1)

"""Make a model's modules fit for DP-SGD, or say which one cannot be and what to do.

DP-SGD clips each subject's gradient, so every trainable module must yield per-subject gradients.
Opacus computes them from hooks, per module type, from the module's positional tensor inputs and the
gradient of its output. Three cases need care in medweave's models:

- ``nn.MultiheadAttention`` (inside every ``nn.TransformerEncoderLayer``: the EHR encoder, the
  attention fusion; the cross-attention fusion) packs q, k and v into one weight, which the hooks
  cannot see apart. It is swapped here for ``DPAttention``, with separate q, k, v layers, which
  saves and loads ``nn.MultiheadAttention``'s state_dict keys: checkpoints stay loadable by a
  plain model (medweave-eval builds one).
- BatchNorm mixes subjects in a batch: no per-subject gradient exists. MONAI backbones take
  ``norm`` (configs/privacy/dp.yaml sets GroupNorm for the image and volume ResNets).
- A module holding its own parameters, fed anything but one tensor (dicts, several inputs), has no
  Opacus formula; Opacus would fall back to functorch over the first input only (wrong gradients).
  Such modules are refused by name (fusion/attention.py's ``ModalityTokens`` has a formula below).
"""

from __future__ import annotations

import warnings

import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.utils import register_grad_sampler
from opacus.validators import ModuleValidator
from torch import nn

from medweave.errors import MedweaveError
from medweave.models.fusion.attention import ModalityTokens

# What to do instead of a module Opacus cannot handle, by class name.
FIXES = {
    "BatchNorm": "use GroupNorm: for a MONAI backbone set its norm, e.g. "
    "model.encoders.<modality>.backbone.norm=[group,{num_groups:4}] (privacy=dp does for image and volume)",
    "CrossAttentionFusion": "choose a fusion DP-SGD supports: model/fusion=attention, concat, gated or late",
    "LowRankTensorFusion": "choose a fusion DP-SGD supports: model/fusion=attention, concat, gated or late",
}


@register_grad_sampler(ModalityTokens)
def _modality_tokens_grad_sample(layer: ModalityTokens, activations, backprops) -> dict:
    """out = [summary, tokens + modality_embedding]: each subject's gradient is its own slice of
    the output's gradient (backprops: [B, 1 + M, D])."""
    grads = {}
    if layer.summary.requires_grad:
        grads[layer.summary] = backprops[:, :1].unsqueeze(1)  # [B, 1, 1, D]
    if layer.modality_embedding.requires_grad:
        grads[layer.modality_embedding] = backprops[:, 1:]  # [B, M, D]
    return grads


class DPAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch first) with q, k and v as separate ``nn.Linear`` layers fed
    [B, L, E], so that Opacus's hooks see each subject's inputs; attention through
    ``F.scaled_dot_product_attention``. Same maths and the same state_dict keys as the module it
    replaces (checkpoints load into a plain model). Opacus's own ``DPMultiheadAttention`` mixes
    heads and positions when ``batch_first=True`` and more than one head (opacus 1.6).

    Returns no attention weights (medweave's callers ask for none).
    """

    _qkv_same_embed_dim = False  # keeps nn.TransformerEncoderLayer off its fused fast path
    in_proj_weight = in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, True
        self.qlinear = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.klinear = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.vlinear = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self._register_state_dict_hook(_as_multihead_keys)
        self._register_load_state_dict_pre_hook(_from_multihead_keys)

    @classmethod
    def replacing(cls, module: nn.MultiheadAttention, name: str = "") -> DPAttention:
        odd = {
            "batch_first=False": not module.batch_first,
            "kdim/vdim": not module._qkv_same_embed_dim,
            "add_bias_kv": module.bias_k is not None,
            "add_zero_attn": module.add_zero_attn,
        }
        if unsupported := [k for k, v in odd.items() if v]:
            raise MedweaveError(
                f"privacy=dp: {name} (MultiheadAttention) with {', '.join(unsupported)} is not supported"
            )
        attention = cls(
            module.embed_dim, module.num_heads, module.dropout, bias=module.in_proj_bias is not None
        )
        attention.load_state_dict(module.state_dict())
        return attention.to(module.out_proj.weight.device, module.out_proj.weight.dtype)

    def forward(
        self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None, is_causal=False
    ):
        if attn_mask is not None or is_causal:
            raise MedweaveError(
                "privacy=dp: DPAttention takes a key_padding_mask only (no attn_mask, not causal)"
            )
        batch, length, width = query.shape
        heads = self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:  # [B, L, E] -> [B, heads, L, E / heads]
            return x.view(batch, -1, heads, width // heads).transpose(1, 2)

        q, k, v = split(self.qlinear(query)), split(self.klinear(key)), split(self.vlinear(value))
        allowed = None
        if key_padding_mask is not None:
            padded = (
                torch.isneginf(key_padding_mask) if key_padding_mask.is_floating_point() else key_padding_mask
            )
            allowed = ~padded[:, None, None, :]  # [B, 1, 1, S], True = attend
        drop = self.dropout if self.training else 0.0
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=drop)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width)), None


_PACKED = (("in_proj_weight", "weight"), ("in_proj_bias", "bias"))


def _as_multihead_keys(module, state_dict, prefix, local_metadata) -> None:
    for packed, part in _PACKED:
        names = [f"{prefix}{x}linear.{part}" for x in "qkv"]
        if all(n in state_dict for n in names):
            state_dict[prefix + packed] = torch.cat([state_dict.pop(n) for n in names])


def _from_multihead_keys(state_dict, prefix, *args) -> None:
    for packed, part in _PACKED:
        if prefix + packed in state_dict:
            for x, chunk in zip("qkv", state_dict.pop(prefix + packed).chunk(3), strict=True):
                state_dict[f"{prefix}{x}linear.{part}"] = chunk


def _replace_attention(model: nn.Module) -> int:
    swaps = [(name, m) for name, m in model.named_modules() if type(m) is nn.MultiheadAttention]
    for name, module in swaps:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, DPAttention.replacing(module, name))
    return len(swaps)


def unsupported_modules(model: nn.Module) -> list[str]:
    """Every module of ``model`` that DP-SGD cannot train, each with its fix (empty: all fit)."""
    problems = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        kind = type(module).__name__
        fix = next((f for key, f in FIXES.items() if key in kind), None)
        errors = ModuleValidator.VALIDATORS.get(type(module), lambda m: [])(module)
        if errors or list(module.buffers(recurse=False)):
            reason = str(errors[0]) if errors else "it keeps statistics across subjects (buffers)"
            problems.append(f"{name} ({kind}): {fix or reason}")
        elif type(module) not in GradSampleModule.GRAD_SAMPLERS:
            problems.append(
                f"{name} ({kind}): Opacus has no per-subject gradient for its own parameters "
                f"({', '.join(n for n, p in module.named_parameters(recurse=False) if p.requires_grad)}); "
                + (fix or "hold them in a standard layer (nn.Linear, nn.Embedding) or drop the module")
            )
    return problems


def prepare_model(model: nn.Module) -> GradSampleModule:
    """Swap in DP attention, check every module, then attach Opacus's per-subject gradient hooks.

    The returned wrapper only holds the hooks: the model itself keeps running as before (Lightning
    calls it, state_dict keys are unchanged). Raises MedweaveError naming every module that cannot
    be trained privately, with the fix.
    """
    _replace_attention(model)
    for module in model.modules():
        if getattr(module, "inplace", False) and not isinstance(module, nn.Dropout):
            module.inplace = False  # an in-place op on a hooked output breaks the backward hooks
    problems = unsupported_modules(model)
    if problems:
        raise MedweaveError(
            "privacy=dp: DP-SGD needs a per-subject gradient from every trainable module; "
            + "; ".join(problems)
        )
    # The first layers' inputs (images, embeddings' ids) need no gradient; torch warns that the
    # hooks then fire on outputs only, which is all Opacus reads.
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
    return GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)

"""What pretraining asks of the backbone: predict the next event and when (Delphi, CLMBR) or the
masked events (BEHRT, life2vec). Each objective owns its heads and says whether the backbone is
causal; ``loss`` returns the total and its parts for logging."""

from __future__ import annotations

import torch
from torch import nn

from medweave.data.ehr.pretrain import MASK


def exponential_nll(log_rate: torch.Tensor, wait: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of waiting ``wait`` under an exponential with rate exp(log_rate):
    -(log lambda - lambda t)."""
    return torch.exp(log_rate) * wait - log_rate


class NextEvent(nn.Module):
    """At each token, the next event's code (softmax over the vocabulary) and the waiting time to
    it (an exponential whose rate a second head gives), as Delphi-2M's waiting-time head does.

    Args:
        dim: backbone width.
        vocab_size: code ids the code head scores.
        time_weight: weight of the waiting-time loss beside the code loss.
        min_wait_days: waits shorter than this (events on the same day) count as this long, so
            that ties do not drive the rate to infinity.
    """

    name = "next_event"
    causal = True

    def __init__(self, dim: int, vocab_size: int, time_weight: float = 1.0, min_wait_days: float = 0.5):
        super().__init__()
        self.code_head = nn.Linear(dim, vocab_size)
        self.wait_head = nn.Linear(dim, 1)
        self.time_weight, self.min_wait_days = time_weight, min_wait_days

    def prepare(self, batch: dict, generator: torch.Generator | None = None) -> tuple[dict, dict]:
        """(backbone inputs, targets): the inputs unchanged; targets are the next token's code and
        wait in years, where the next token is a timed event."""
        codes, delta = batch["codes"], batch["delta"]
        target = torch.zeros_like(codes)
        target[:, :-1] = codes[:, 1:]
        wait = torch.zeros_like(delta)
        wait[:, :-1] = torch.nan_to_num(delta[:, 1:])
        valid = torch.zeros_like(codes, dtype=torch.bool)
        valid[:, :-1] = (codes[:, 1:] != 0) & ~torch.isnan(delta[:, 1:]) & (codes[:, :-1] != 0)
        wait = wait.clamp(min=self.min_wait_days) / 365.25
        return batch, {"code": target, "wait": wait, "valid": valid}

    def loss(self, hidden: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict]:
        valid = targets["valid"]
        h = hidden[valid]
        code_loss = nn.functional.cross_entropy(self.code_head(h).float(), targets["code"][valid])
        log_rate = self.wait_head(h).squeeze(-1).float().clamp(-20, 20)
        time_loss = exponential_nll(log_rate, targets["wait"][valid]).mean()
        total = code_loss + self.time_weight * time_loss
        return total, {
            "code_loss": code_loss.detach(),
            "time_loss": time_loss.detach(),
            "tokens": valid.sum(),
        }


class MaskedEvents(nn.Module):
    """A share of the timed events is hidden (code and value bin): 80 % become the mask token,
    10 % a random code, 10 % stay, as BERT and BEHRT do; the backbone, seeing the whole window,
    names the original codes.

    Args:
        dim: backbone width.
        vocab_size: code ids the code head scores.
        n_bins: value bins (the masked value bin is n_bins + 1).
        mask_prob: share of timed events chosen (at least one per window).
    """

    name = "masked"
    causal = False

    def __init__(self, dim: int, vocab_size: int, n_bins: int, mask_prob: float = 0.15):
        super().__init__()
        self.code_head = nn.Linear(dim, vocab_size)
        self.vocab_size, self.n_bins, self.mask_prob = vocab_size, n_bins, mask_prob

    def prepare(self, batch: dict, generator: torch.Generator | None = None) -> tuple[dict, dict]:
        codes = batch["codes"]
        device = codes.device
        timed = (codes > MASK) & ~torch.isnan(batch["delta"])
        draw = torch.rand(codes.shape, generator=generator, device=device)
        chosen = timed & (draw < self.mask_prob)
        # Each window with a timed event hides at least one: the one with the smallest draw.
        first = torch.where(timed, draw, torch.full_like(draw, 2.0)).argmin(1)
        chosen[torch.arange(len(codes), device=device), first] |= timed.any(1)
        how = torch.rand(codes.shape, generator=generator, device=device)
        random_codes = torch.randint(
            MASK + 1, self.vocab_size, codes.shape, generator=generator, device=device
        )
        new_codes = torch.where(chosen & (how < 0.8), torch.full_like(codes, MASK), codes)
        new_codes = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_codes, new_codes)
        bins = torch.where(chosen, torch.full_like(batch["bins"], self.n_bins + 1), batch["bins"])
        return {**batch, "codes": new_codes, "bins": bins}, {"code": codes, "valid": chosen}

    def loss(self, hidden: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict]:
        valid = targets["valid"]
        code_loss = nn.functional.cross_entropy(self.code_head(hidden[valid]).float(), targets["code"][valid])
        return code_loss, {"code_loss": code_loss.detach(), "tokens": valid.sum()}

"""Simulated futures from a next-event model (Delphi-2M's generative check): sample each
subject's trajectory forward from the prediction time, then compare simulated with observed
incidence per code and age band, and count the observed diagnoses the simulations foresaw.

Sampling: from the last event before the prediction time t, the wait to the next event is drawn
from Exp(rate) and its code from the softmax (padding, unknown and mask ids left out); by the
exponential's lack of memory the first sampled event is at t + wait. Each sampled event is
appended with its age and the days since the previous event and the model reads it on (one
token's forward, keys and values of the earlier tokens cached: CachedWindow), until the event
falls past the horizon or ``max_steps`` is reached. The context is the static events and the
latest timed ones, between half the pretraining width and the width: when it fills, the cache
restarts from the latest half. A sampled death (ENDS_RECORD) ends the trajectory. Generated
events carry no value bin (bin 0, "no value"): a sampled lab code is a lab taken, not a result.

Censoring: the observed side counts a subject whose record ends (death, emigration, the data
cutoff) before the year as a non-case there; the simulated side stops only at a sampled death.
Keep ``years`` inside the data's follow-up (the sandbox: 4 to 5 years after t).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from medweave.data.ehr.events import NO_TIME
from medweave.data.ehr.pretrain import MASK, US_PER_DAY
from medweave.evaluation.next_event import DAYS_PER_YEAR, Cohort, NextEventModel, model_batch

ENDS_RECORD = ("MEDS_DEATH",)  # codes after which a record, and so a trajectory, has nothing more


def trim(batch: dict, n_static: torch.Tensor, m: int) -> dict:
    """Each row cut to its static events and its latest timed ones, ``m`` tokens at most."""
    codes = batch["codes"]
    n, w = codes.shape
    length = (codes != 0).sum(1)
    skip = (length - m).clamp(min=0).unsqueeze(1)
    pos = torch.arange(m).expand(n, m)
    source = torch.where(pos < n_static.unsqueeze(1), pos, pos + skip)
    valid = source < length.unsqueeze(1)
    source = source.clamp(max=w - 1)
    fill = {"codes": 0, "bins": 0, "age": float("nan"), "delta": float("nan")}
    return {k: v.gather(1, source).masked_fill(~valid, fill[k]) for k, v in batch.items()}


def append_event(batch: dict, n_static: torch.Tensor, code, age, delta) -> dict:
    """The rows with one more timed event at the end; a full row drops its oldest timed event
    (the first after its ``n_static`` static events) to make room."""
    codes = batch["codes"]
    n, w = codes.shape
    length = (codes != 0).sum(1)
    full = length >= w
    pos = torch.arange(w).expand(n, w)
    # A full row reads position j from j + 1 from its first timed event on; others stay.
    source = torch.where(full.unsqueeze(1) & (pos >= n_static.unsqueeze(1)), (pos + 1).clamp(max=w - 1), pos)
    out = {k: v.gather(1, source) for k, v in batch.items()}
    at = torch.where(full, torch.full_like(length, w - 1), length)
    rows = torch.arange(n)
    out["codes"][rows, at], out["bins"][rows, at] = code, 0
    out["age"][rows, at], out["delta"][rows, at] = age.to(out["age"].dtype), delta.to(out["delta"].dtype)
    return out


def sample_trajectories(
    model: NextEventModel,
    cohort: Cohort,
    rows: np.ndarray,
    samples: int,
    years: float,
    max_steps: int,
    batch_size: int,
    seed: int = 0,
) -> dict:
    """Trajectories of ``samples`` draws for each of the cohort's ``rows``: {"row", "sample",
    "code" (model ids), "days" after t} of every generated event within ``years`` ("row": the
    position in ``rows``), and
    "truncated": the share of trajectories that reached ``max_steps`` before the horizon."""
    generator = torch.Generator().manual_seed(seed)
    horizon = years * DAYS_PER_YEAR
    # A sampled death ends its trajectory, as a death ends a record (nothing is recorded after it).
    ending = torch.zeros(len(model.vocab["codes"]) + MASK + 1, dtype=torch.bool)
    for name in ENDS_RECORD:
        if name in model.vocab["codes"]:
            ending[model.vocab["codes"].index(name) + MASK + 1] = True
    position = np.repeat(np.arange(len(rows)), samples)  # into rows
    subject = rows[position]
    draw = np.tile(np.arange(samples), len(rows))
    found = {"row": [], "sample": [], "code": [], "days": []}
    truncated = 0
    with torch.no_grad():
        for start in tqdm(range(0, len(subject), batch_size), desc="simulated futures", unit="batch"):
            who = subject[start : start + batch_size]
            batch = {k: v.clone() for k, v in model_batch(cohort.inputs, who).items()}
            width = model.width
            if batch["codes"].shape[1] < width:  # room to grow up to the pretraining width
                pad = width - batch["codes"].shape[1]
                fill = {"codes": 0, "bins": 0, "age": float("nan"), "delta": float("nan")}
                batch = {k: torch.nn.functional.pad(v, (0, pad), value=fill[k]) for k, v in batch.items()}
            static = (cohort.inputs["time"][who] == NO_TIME) & (cohort.inputs["codes"][who] != 0)
            n_static = torch.from_numpy(static.sum(1))
            length = (batch["codes"] != 0).sum(1)
            last_age = batch["age"][torch.arange(len(who)), (length - 1).clamp(min=0)].double()
            since_last = torch.from_numpy(
                (cohort.prediction_time[who] - cohort.last_time[who]) / US_PER_DAY
            ).clamp(min=0)
            elapsed = torch.zeros(len(who), dtype=torch.float64)  # days after t of the last sampled event
            active = torch.ones(len(who), dtype=torch.bool)
            cache, hidden = None, None
            for step in range(max_steps):
                idx = active.nonzero(as_tuple=True)[0]
                if not len(idx):
                    break
                sub = {k: v[idx] for k, v in batch.items()}
                if cache is None or cache.valid.shape[1] >= width:  # (re)start from the window's latest half
                    cache = CachedWindow(model.backbone, trim(sub, n_static[idx], max(width // 2, 1)))
                    hidden = cache.hidden
                log_rate = model.objective.wait_head(hidden).squeeze(-1)
                logits = model.objective.code_head(hidden).float()
                logits[:, : MASK + 1] = float("-inf")
                code = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
                rate = torch.exp(log_rate.double().clamp(-20, 20))  # per year
                wait = torch.empty(len(idx), dtype=torch.float64).exponential_(generator=generator)
                wait = wait / rate * DAYS_PER_YEAR
                gap = wait + (since_last[idx] if step == 0 else 0.0)
                elapsed[idx] += wait
                inside = elapsed[idx] <= horizon
                hit = idx[inside]
                found["row"].append(position[start : start + batch_size][hit.numpy()])
                found["sample"].append(draw[start : start + batch_size][hit.numpy()])
                found["code"].append(code[inside].numpy())
                found["days"].append(elapsed[hit].numpy())
                age = last_age[idx] + since_last[idx] * (step == 0) + wait
                last_age[idx] = age
                grown = append_event(sub, n_static[idx], code, age, gap)
                for k in batch:
                    batch[k][idx] = grown[k]
                ended = inside & ending[code]
                active[idx[~inside | ended]] = False
                keep = (inside & ~ended).nonzero(as_tuple=True)[0]
                if len(keep):
                    hidden = cache.append(keep, code[keep], age[keep].float(), gap[keep].float())
            truncated += int(active.sum())
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in found.items()}
    out["truncated"] = truncated / max(len(subject), 1)
    return out


def first_simulated(traj: dict, code_ids: np.ndarray, n_rows: int, samples: int) -> np.ndarray:
    """[n_rows, samples, K] days after t of each code's first simulated event (inf: none)."""
    column = np.full(int(max(code_ids.max(initial=0), traj["code"].max(initial=0))) + 1, -1)
    column[code_ids] = np.arange(len(code_ids))
    out = np.full((n_rows, samples, len(code_ids)), np.inf)
    k = column[traj["code"].astype(int)] if len(traj["code"]) else np.zeros(0, int)
    keep = k >= 0
    np.minimum.at(
        out, (traj["row"][keep].astype(int), traj["sample"][keep].astype(int), k[keep]), traj["days"][keep]
    )
    return out


def first_observed(cohort: Cohort, rows: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """([n, K] eligible: no code at or before t, [n, K] days after t of the first event; inf: none)."""
    at = np.full(len(cohort), -1)
    at[rows] = np.arange(len(rows))
    eligible = np.ones((len(rows), len(names)), bool)
    days = np.full((len(rows), len(names)), np.inf)
    for k, name in enumerate(names):
        prior = at[cohort.prior.get(name, np.zeros(0, int))]
        eligible[prior[prior >= 0], k] = False
        r, d = cohort.first_after.get(name, (np.zeros(0, int), np.zeros(0)))
        r = at[r]
        days[r[r >= 0], k] = d[r >= 0]
    return eligible, days


def age_band(age_days: np.ndarray, bands: list[float]) -> np.ndarray:
    """Index of each age's band (lower edges in years; -1 below the first or unknown)."""
    years = np.nan_to_num(age_days / DAYS_PER_YEAR, nan=-np.inf)
    return np.searchsorted(np.asarray(bands, float), years, side="right") - 1


def incidence_cells(
    eligible: np.ndarray,
    observed: np.ndarray,
    simulated: np.ndarray,
    band: np.ndarray,
    years: float,
    names: list[str],
    band_names: list[str],
    min_subjects: int,
) -> list[dict]:
    """One cell per code x age band with ``min_subjects`` eligible subjects and an observed or
    simulated case: the eligible count, the observed cases and the share of eligible subjects with
    a first event within ``years``, observed and simulated (mean over samples). observed [n, K],
    simulated [n, S, K] in days. Internal: ``incidence_points`` is what may be shown."""
    horizon = years * DAYS_PER_YEAR
    seen, drawn = observed <= horizon, (simulated <= horizon).mean(1)
    cells = []
    for b, band_name in enumerate(band_names):
        in_band = band == b
        for k, name in enumerate(names):
            sel = in_band & eligible[:, k]
            if sel.sum() < min_subjects or not (seen[sel, k].any() or drawn[sel, k].any()):
                continue
            cells.append({
                "code": name,
                "age_band": band_name,
                "eligible": int(sel.sum()),
                "cases": int(seen[sel, k].sum()),
                "observed": float(seen[sel, k].mean()),
                "simulated": float(drawn[sel, k].mean()),
            })  # fmt: skip
    return cells


def incidence_points(cells: list[dict], min_cell: int = 0) -> list[dict]:
    """The cells that may be shown: none with an observed count of 1 to ``min_cell`` - 1 people
    (disclosure control), and no counts."""
    return [
        {k: v for k, v in cell.items() if k != "cases"} for cell in cells if not 0 < cell["cases"] < min_cell
    ]


def pooled_incidence(cells: list[dict], n_bins: int = 10, min_cell: int = 0) -> list[dict]:
    """All cells, small ones included, in bins of simulated incidence of about equal eligible
    counts: each bin's eligible-weighted mean simulated and observed incidence, a calibration
    curve. The points alone would mislead: at a thousand subjects most cells have no case, and
    disclosure control hides those with a few but keeps those with none. A bin with 1 to
    ``min_cell`` - 1 observed cases shows no observed incidence (None)."""
    if not cells:
        return []
    sim_ = np.array([c["simulated"] for c in cells], float)
    n = np.array([c["eligible"] for c in cells], float)
    cases = np.array([c["cases"] for c in cells], float)
    order = np.argsort(sim_, kind="stable")
    middle = (np.cumsum(n[order]) - n[order] / 2) / n.sum()  # each cell's middle in eligible
    bins = np.minimum((middle * n_bins).astype(int), n_bins - 1)
    out = []
    for b in np.unique(bins):
        rows = order[bins == b]
        w, count = n[rows].sum(), int(cases[rows].sum())
        out.append({
            "cells": int(len(rows)),
            "eligible": int(w),
            "simulated": float((sim_[rows] * n[rows]).sum() / w),
            "observed": None if 0 < count < min_cell else count / w,
        })  # fmt: skip
    return out


def foreseen_share(
    eligible: np.ndarray, observed: np.ndarray, hit_probability: np.ndarray, years: int
) -> list[dict]:
    """Per year ahead k = 1..years: of the observed incident diagnoses whose first event after t
    falls in year k ((k-1, k] years after t; codes the subject had at or before t are not
    incident), the share a trajectory foresaw, i.e. whose first simulated event of the same code
    falls in the same year, as a mean over trajectories. ``hit_probability(k)`` [n, K]: each
    (subject, code)'s chance that a trajectory has its first event of the code in year k."""
    out = []
    for k in range(1, years + 1):
        lo, hi = (k - 1) * DAYS_PER_YEAR, k * DAYS_PER_YEAR
        pairs = eligible & (observed > lo) & (observed <= hi)
        p = hit_probability(k)
        out.append(
            {
                "year": k,
                "diagnoses": int(pairs.sum()),
                "share": float(p[pairs].mean()) if pairs.any() else float("nan"),
            }
        )
    return out


def marginal_incidence(
    eligible: np.ndarray, observed: np.ndarray, band: np.ndarray, n_bands: int, years: int
) -> np.ndarray:
    """[n_bands, years, K] the reference population's chance of a first event of each code in year
    k after t, by age band, among those without it at or before t: what a trajectory drawn from
    the population's marginal incidence foresees."""
    out = np.zeros((n_bands, years, observed.shape[1]))
    for b in range(n_bands):
        sel = band == b
        at_risk = eligible[sel].sum(0)
        for k in range(years):
            lo, hi = k * DAYS_PER_YEAR, (k + 1) * DAYS_PER_YEAR
            cases = (eligible[sel] & (observed[sel] > lo) & (observed[sel] <= hi)).sum(0)
            out[b, k] = np.where(at_risk > 0, cases / np.maximum(at_risk, 1), 0.0)
    return out


class CachedWindow:
    """The backbone's causal forward one token at a time: each layer's keys and values of the
    tokens so far are kept, so a new token costs one token's forward, not the window's. The
    hidden state of an appended token equals that of the full causal forward over the same
    tokens (tested). Rows are right-padded; appended tokens go after the padding, which stays
    masked (the backbone has no positions, only times).

    Args:
        backbone: the EventTransformer (eval mode).
        batch: codes, bins, age, delta [B, L] of the starting tokens.
    """

    def __init__(self, backbone, batch: dict[str, torch.Tensor]):
        self.backbone = backbone
        self.valid = batch["codes"] != 0
        x = backbone.embed(batch["codes"], batch["bins"], batch["age"], batch["delta"])
        n = x.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        mask = (causal.unsqueeze(0) & self.valid.unsqueeze(1)).unsqueeze(1)  # [B, 1, L, L]
        self.keys, self.values = [], []
        for layer in backbone.transformer.layers:
            q, k, v = self._qkv(layer, layer.norm1(x))
            x = x + self._attend(layer, q, k, v, mask)
            x = x + layer._ff_block(layer.norm2(x))
            self.keys.append(k)
            self.values.append(v)
        last = (self.valid.sum(1) - 1).clamp(min=0)
        self.hidden = backbone.norm(x)[torch.arange(len(x)), last]  # [B, dim] after the last token

    @staticmethod
    def _qkv(layer, y: torch.Tensor):
        attn = layer.self_attn
        b, n, d = y.shape
        h = attn.num_heads
        q, k, v = torch.nn.functional.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
        return (t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))

    @staticmethod
    def _attend(layer, q, k, v, mask) -> torch.Tensor:
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, h, n, dh = a.shape
        return layer.self_attn.out_proj(a.transpose(1, 2).reshape(b, n, h * dh))

    def append(self, rows: torch.Tensor, codes, age, delta) -> torch.Tensor:
        """Keep only ``rows`` (positions in the cache, in that order) and append one timed event
        (no value bin) to each; their new hidden states [len(rows), dim]."""
        bins = torch.zeros_like(codes)
        x = self.backbone.embed(codes[:, None], bins[:, None], age[:, None], delta[:, None])
        valid = torch.cat([self.valid[rows], torch.ones(len(rows), 1, dtype=torch.bool)], 1)
        mask = valid[:, None, None, :]
        for i, layer in enumerate(self.backbone.transformer.layers):
            q, k, v = self._qkv(layer, layer.norm1(x))
            keys = torch.cat([self.keys[i][rows], k], 2)
            values = torch.cat([self.values[i][rows], v], 2)
            x = x + self._attend(layer, q, keys, values, mask)
            x = x + layer._ff_block(layer.norm2(x))
            self.keys[i], self.values[i] = keys, values
        self.valid = valid
        self.hidden = self.backbone.norm(x)[:, 0]
        return self.hidden

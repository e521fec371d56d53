"""A pretrained backbone in the task model: read a medweave-pretrain checkpoint, check it, and
read the task cache's events the way pretraining read the store's.

The task cache (data/ehr/cache.py) serves each subject's events before prediction time as
cohort code ids, z-scored values and days before prediction time, static events last. The
pretrained backbone reads its own code ids, quantile bins, age and days since the previous event,
static events first. ``PretrainedEvents`` translates one into the other (code names through both
vocabularies, values back to their raw scale and into the checkpoint's bins, age from the birth
event) and adds what pretraining never saw: how long before prediction time each event came, as a
learnt term that starts at zero, so fine-tuning starts from the pretrained representation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medweave.data import contract as c
from medweave.data.ehr.pretrain import MASK, UNK
from medweave.errors import MedweaveError
from medweave.models.pretrain.backbone import EventTransformer
from medweave.models.pretrain.module import FORMAT, KIND

log = logging.getLogger("medweave")

OBJECTIVES = ("next_event", "masked")
POOLS = ("mean", "last")


def read_checkpoint(path: str | Path, objective: str | None = None) -> dict:
    """The checkpoint's ``medweave`` extras and backbone weights, checked: a medweave-pretrain
    checkpoint, of ``objective`` if given, whose weights fit the backbone it names."""
    path = Path(path).expanduser()
    expect = "a checkpoint written by medweave-pretrain (<run>/checkpoints/*.ckpt)"
    if not path.is_file():
        raise MedweaveError(f"pretrained checkpoint '{path}' does not exist; expected {expect}")
    try:
        from medweave.embeddings.frozen import _NUMPY_ARRAYS

        with torch.serialization.safe_globals(_NUMPY_ARRAYS):
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise MedweaveError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {first}); expected {expect}"
        ) from None
    extras = saved.get("medweave") if isinstance(saved, dict) else None
    if not isinstance(extras, dict) or extras.get("kind") != KIND:
        what = (
            "a medweave-train checkpoint (a task model)"
            if isinstance(extras, dict)
            else "not a medweave checkpoint"
        )
        raise MedweaveError(f"{path}: {what}; expected {expect}")
    if extras.get("format") != FORMAT:
        raise MedweaveError(
            f"{path}: pretraining checkpoint format {extras.get('format')}; this medweave reads {FORMAT}"
        )
    if objective is not None and extras["objective"] != objective:
        raise MedweaveError(
            f"{path}: pretrained with objective {extras['objective']}; this needs objective {objective} "
            f"(medweave-pretrain pretrain/objective={objective})"
        )
    if extras.get("backbone", {}).get("class") != "EventTransformer":
        raise MedweaveError(
            f"{path}: backbone {extras.get('backbone', {}).get('class')}; expected EventTransformer "
            "(a checkpoint of another architecture)"
        )
    prefix = "backbone."
    state = {k[len(prefix) :]: v for k, v in saved["state_dict"].items() if k.startswith(prefix)}
    heads = {k[len("objective.") :]: v for k, v in saved["state_dict"].items() if k.startswith("objective.")}
    backbone = EventTransformer(**extras["backbone"]["args"])
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise MedweaveError(
            f"{path}: the weights do not fit the EventTransformer the checkpoint names "
            f"({detail[:300]}); expected a checkpoint of the same architecture"
        ) from None
    return {**extras, "module": backbone, "objective_state": heads, "path": str(path)}


def pretrained_codes(path: str | Path) -> list[str]:
    """The code names a checkpoint's vocabulary holds (checked as ``read_checkpoint`` does): the
    task cache keeps them all, however rare among the task's train subjects (data/ehr/vocab.py)."""
    return list(read_checkpoint(path)["vocab"]["codes"])


def check_leakage(path: str, prepared: Path) -> None:
    """Refuse fine-tuning when a tuning or held-out sample of this task predicts before what
    pretraining saw of its subject (the rule in data/ehr/pretrain.py, kept in the checkpoint)."""
    import numpy as np
    import torch

    from medweave.data import contract as c
    from medweave.data.ehr.pretrain import leaked_samples

    saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("medweave", {})
    rule = saved.get("evaluation_cutoffs")
    if rule is None:
        log.warning(
            "%s keeps no evaluation cutoffs (an older checkpoint): the leakage rule is not checked", path
        )
        return
    subjects = np.load(Path(prepared) / "subjects.npz")
    evaluated = subjects["split"] != c.SPLITS.index(c.TRAIN_SPLIT)
    n = leaked_samples(rule, subjects["subject_id"][evaluated], subjects["prediction_time"][evaluated])
    if n:
        raise MedweaveError(
            f"{path}: {n} of this task's {int(evaluated.sum())} tuning and held-out samples predict "
            "before what pretraining saw of their subjects (the pretraining run was cut at other "
            "labels' prediction times); pretrain with pretrain.eval_subjects=exclude, or with "
            "data.labels_dir holding this task's labels"
        )


class PretrainedEvents(nn.Module):
    """Task-cache events ({codes, values, days}) -> pooled [B, out_dim] through a pretrained backbone.

    Args:
        path: the medweave-pretrain checkpoint.
        codes: the cohort vocabulary's code names (cohort id = index + 2).
        code_stats: the cohort's {code: [mean, sd]} its z-scores were made with.
        out_dim: output width (a linear map from the backbone's width if they differ; None: the
            backbone's).
        freeze: keep the backbone's weights (and its dropout off); only the recency term and the
            projection train. With a linear task head, a linear probe.
        extend_vocab: give codes the checkpoint does not know new embeddings, learnt in
            fine-tuning, instead of the unknown code.
        max_unknown: the share of the cohort's codes the checkpoint may not know before it is
            refused (unless ``extend_vocab``).
        objective: refuse a checkpoint of another objective (None: either).
        pool: ``mean`` of the events' hidden states, or the ``last`` event's: in a causal
            (next_event) backbone the one state that has read the whole history, the one the
            next-event heads read.
        prior: ``{code, horizon_days}``: the next_event checkpoint's zero-shot risk of this code
            within the horizon (``ZeroShotPrior``) is kept as ``prior_logit`` after each forward,
            and the task model adds it to its binary logit (models/module.py): fine-tuning starts
            from the pretrained model's own prediction and learns what to add to it.
        query: a code of the pretrained vocabulary read as one more event at the prediction time
            (the task's index event: the sandbox's index visit, an ACES task's trigger), which the
            task cache leaves out (data/ehr/events.py). Without it the last state, which ``last``
            pooling and the prior read, is the model's state at the last event before: one that
            has not seen the history's index event, after which pretraining saw the outcomes come.
    """

    def __init__(
        self,
        path: str,
        codes: list[str],
        code_stats: dict,
        out_dim: int | None = None,
        freeze: bool = False,
        extend_vocab: bool = False,
        max_unknown: float = 0.05,
        objective: str | None = None,
        pool: str = "mean",
        prior: dict | None = None,
        query: str | None = None,
    ):
        super().__init__()
        if pool not in POOLS:
            raise MedweaveError(f"model.encoders.ehr_codes.pool={pool!r}: choose from {list(POOLS)}")
        if freeze and extend_vocab:
            raise MedweaveError(
                "model.encoders.ehr_codes: extend_vocab=true needs freeze=false (a frozen backbone "
                "never learns the new codes' embeddings)"
            )
        ckpt = read_checkpoint(path, objective)
        self.backbone: EventTransformer = ckpt["module"]
        self.source = {"path": ckpt["path"], "objective": ckpt["objective"]}
        vocab = ckpt["vocab"]
        known = {name: i + 3 for i, name in enumerate(vocab["codes"])}
        unknown = [n for n in codes if n not in known]
        share = len(unknown) / max(len(codes), 1)
        if unknown and not extend_vocab and (share > max_unknown or len(unknown) == len(codes)):
            raise MedweaveError(
                f"{path}: the pretrained vocabulary ({len(vocab['codes'])} codes) lacks "
                f"{len(unknown)} of the cohort's {len(codes)} codes ({share:.0%}, more than "
                f"max_unknown={max_unknown:.0%}; e.g. {', '.join(sorted(unknown)[:3])}); pass "
                "model.encoders.ehr_codes.extend_vocab=true to learn them in fine-tuning, or pretrain "
                "on this cohort"
            )
        if unknown:
            how = "new embeddings" if extend_vocab else "the unknown code"
            log.warning(
                "pretrained vocabulary lacks %d of the cohort's %d codes: they get %s",
                len(unknown),
                len(codes),
                how,
            )
        extra = {n: self.backbone.vocab_size + i for i, n in enumerate(unknown)} if extend_vocab else {}
        if extra:
            old = self.backbone.code
            grown = nn.Embedding(old.num_embeddings + len(extra), old.embedding_dim, padding_idx=0)
            with torch.no_grad():
                grown.weight[: old.num_embeddings] = old.weight
                grown.weight[old.num_embeddings :] = old.weight[MASK + 1 :].mean(0)
            self.backbone.code = grown
        ids = [0, UNK] + [known.get(n, extra.get(n, UNK)) for n in codes]
        self.register_buffer("id_map", torch.tensor(ids, dtype=torch.long), persistent=False)
        stats = np.full((len(codes) + 2, 2), np.nan)
        for i, n in enumerate(codes):
            if n in code_stats:
                stats[i + 2] = code_stats[n]
        self.register_buffer("stats", torch.tensor(stats, dtype=torch.float32), persistent=False)
        n_edges = vocab["n_bins"] - 1
        edges = np.full((self.backbone.code.num_embeddings, max(n_edges, 1)), np.inf)
        has_bins = np.zeros(self.backbone.code.num_embeddings, bool)
        for n, e in vocab["bins"].items():
            if n in known and n_edges:
                edges[known[n]], has_bins[known[n]] = e, True
        self.register_buffer("edges", torch.tensor(edges, dtype=torch.float32), persistent=False)
        self.register_buffer("has_bins", torch.tensor(has_bins), persistent=False)
        self.birth = codes.index(c.BIRTH_CODE) + 2 if c.BIRTH_CODE in codes else -1
        dim = self.backbone.dim
        self.recency = nn.Linear(3, dim)  # days before prediction time: learnt from zero
        nn.init.zeros_(self.recency.weight)
        nn.init.zeros_(self.recency.bias)
        out_dim = out_dim or dim
        self.project = nn.Identity() if out_dim == dim else nn.Linear(dim, out_dim)
        self.out_dim, self.freeze, self.pool = out_dim, freeze, pool
        if freeze:
            self.backbone.requires_grad_(False)
        self.prior = ZeroShotPrior(ckpt, known, **prior) if prior else None
        if query is not None and query not in known:
            raise MedweaveError(
                f"{path}: model.encoders.ehr_codes.query={query!r} is not in the pretrained vocabulary "
                f"({len(vocab['codes'])} codes); pass a code pretraining saw, or query=null"
            )
        self.query = None if query is None else known[query]
        self.prior_logit = None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.backbone.eval()  # frozen: no dropout either
        return self

    def translate(self, inputs: dict) -> tuple[dict, torch.Tensor]:
        """Backbone inputs (static events first) and each token's days before prediction time."""
        codes, values, days = inputs["codes"], inputs["values"], inputs["days"]
        pad = codes == 0
        static = torch.isnan(days) & ~pad
        position = torch.arange(codes.shape[1], device=codes.device).expand_as(codes)
        key = torch.where(static, -1, torch.where(pad, codes.shape[1], position))
        order = torch.sort(key, dim=1, stable=True).indices
        codes, values, days = (t.gather(1, order) for t in (codes, values, days))
        pad, static = pad.gather(1, order), static.gather(1, order)
        raw = values * self.stats[codes, 1] + self.stats[codes, 0]
        ids = self.id_map[codes]
        above = (raw.unsqueeze(-1) > self.edges[ids]).sum(-1)
        bins = torch.where(~torch.isnan(raw) & self.has_bins[ids], 1 + above, torch.zeros_like(above))
        birth_days = torch.where(codes == self.birth, days, torch.full_like(days, float("nan")))
        birth_days = torch.nan_to_num(birth_days, nan=-1.0).amax(1, keepdim=True)
        age = torch.where(
            (birth_days >= 0) & ~static & ~pad, birth_days - days, torch.full_like(days, float("nan"))
        )
        previous = torch.cat([days[:, :1], days[:, :-1]], 1)
        first_timed = torch.cat([torch.ones_like(static[:, :1]), static[:, :-1]], 1)
        delta = torch.where(first_timed, torch.zeros_like(days), (previous - days).clamp(min=0))
        delta = torch.where(static | pad, torch.full_like(days, float("nan")), delta)
        ids = ids.masked_fill(pad, 0)
        return {"codes": ids, "bins": bins, "age": age, "delta": delta}, days

    def with_query(self, tokens: dict, days: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """``tokens`` with the query event after each row's last token (right padding kept): at
        the prediction time (0 days before it), its age the subject's then, its time since the
        previous event the last timed event's days before."""
        grown = {k: torch.cat([t, t[:, :1]], 1) for k, t in tokens.items()}  # one more column
        days = torch.cat([days, days[:, :1]], 1)
        rows = torch.arange(len(days), device=days.device)
        n = (tokens["codes"] != 0).sum(1)
        last = (n - 1).clamp(min=0)
        before = torch.where(n > 0, days[rows, last], torch.full_like(days[:, 0], float("nan")))
        timed = ~torch.isnan(before)
        grown["codes"][rows, n] = self.query
        grown["bins"][rows, n] = 0
        grown["age"][rows, n] = torch.where(timed, grown["age"][rows, last] + before, before)
        grown["delta"][rows, n] = torch.where(timed, before, torch.zeros_like(before))
        days[rows, n] = 0.0
        pad = torch.arange(days.shape[1], device=days.device) > n.unsqueeze(1)
        fill = {"codes": 0, "bins": 0, "age": float("nan"), "delta": float("nan")}
        grown = {k: t.masked_fill(pad, fill[k]) for k, t in grown.items()}
        return grown, days.masked_fill(pad, float("nan"))

    def forward(self, inputs: dict) -> torch.Tensor:
        tokens, days = self.translate(inputs)
        if self.query is not None:
            tokens, days = self.with_query(tokens, days)
        pad = tokens["codes"] == 0
        log_days = torch.log1p(torch.nan_to_num(days).clamp(min=0)) / 10
        recency = torch.stack([log_days, log_days**2, torch.isnan(days).to(days.dtype)], -1)
        x = self.backbone.embed(**tokens) + self.recency(recency.to(self.recency.weight.dtype))
        h = self.backbone.encode(x, pad)
        last = h[torch.arange(len(h), device=h.device), ((~pad).sum(1) - 1).clamp(min=0)]
        self.prior_logit = self.prior(last) if self.prior is not None else None
        if self.pool == "last":
            return self.project(last)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.project((h * keep).sum(1) / keep.sum(1).clamp(min=1))


class ZeroShotPrior(nn.Module):
    """The logit of one code's risk within a horizon from a next_event checkpoint's heads, read at
    the last event: risk = 1 - exp(-rate p(code) H), as evaluation/next_event.py's code_risks
    (Delphi-2M's zero-shot prediction), so logit = log(-expm1(-x)) + x with x = rate p H. The
    heads stay frozen: fine-tuning moves the backbone under them and the task head beside them.

    Args:
        ckpt: what ``read_checkpoint`` returned.
        known: the checkpoint's {code name: id}.
        code: the outcome's code (e.g. ICD10//I21).
        horizon_days: the task's horizon.
    """

    def __init__(self, ckpt: dict, known: dict, code: str, horizon_days: float):
        super().__init__()
        from medweave.models.pretrain.objectives import NextEvent

        where = f"{ckpt['path']}: a zero-shot prior for {code}"
        if ckpt["objective"] != "next_event":
            raise MedweaveError(
                f"{where} needs a next_event checkpoint (its waiting-time head gives the hazard); "
                f"this one was pretrained with {ckpt['objective']}"
            )
        if code not in known:
            raise MedweaveError(f"{where}: the pretrained vocabulary has no code {code}")
        if not float(horizon_days) > 0:
            raise MedweaveError(f"{where}: horizon_days={horizon_days}; expected a positive number")
        backbone = ckpt["module"]
        heads = NextEvent(backbone.dim, backbone.vocab_size)
        heads.load_state_dict(ckpt["objective_state"])
        self.code_head, self.wait_head = heads.code_head, heads.wait_head
        self.requires_grad_(False)
        self.code_id, self.horizon_years = known[code], float(horizon_days) / 365.25

    def forward(self, last: torch.Tensor) -> torch.Tensor:
        logits = self.code_head(last).float()
        log_p = logits[:, self.code_id] - torch.logsumexp(logits, -1)
        log_rate = self.wait_head(last).squeeze(-1).float().clamp(-20, 20)
        x = (torch.exp(log_rate + log_p) * self.horizon_years).clamp(min=1e-12)
        return torch.log(-torch.expm1(-x)) + x

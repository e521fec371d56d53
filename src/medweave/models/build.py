"""Build a MultimodalModule from configs plus the sizes the prepared cohort reports.

Train and eval both call this, so a checkpoint is always rebuilt exactly as it was trained.
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from medweave.errors import MedweaveError


def build_model(
    model_cfg: DictConfig,
    modalities: list[str],
    encoder_inputs: dict[str, dict],
    checkpoint_extras: dict | None = None,
    head_inputs: dict | None = None,
):
    from hydra.utils import instantiate

    missing = [m for m in modalities if m not in model_cfg.encoders]
    if missing:
        raise MedweaveError(
            f"model.encoders has no encoder for modality {missing}; configured: {list(model_cfg.encoders)}"
        )
    for m in modalities:
        if "embedding_width" in encoder_inputs[m] and not str(model_cfg.encoders[m]._target_).endswith(
            "PrecomputedEncoder"
        ):
            raise MedweaveError(
                f"data.embeddings.{m} serves precomputed embeddings, but model.encoders.{m} is "
                f"{model_cfg.encoders[m]._target_}; add model/encoder@model.encoders.{m}=precomputed"
            )
    encoders = {m: instantiate(model_cfg.encoders[m], **encoder_inputs[m]) for m in modalities}
    dims = {m: e.out_dim for m, e in encoders.items()}
    if len(set(dims.values())) != 1:
        raise MedweaveError(f"all encoders must output the same width (model.dim); got {dims}")
    fusion = instantiate(model_cfg.fusion, modalities=modalities, dim=next(iter(dims.values())))
    head = instantiate(model_cfg.head, in_dim=fusion.out_dim, **(head_inputs or {}))
    with_prior = [m for m, e in encoders.items() if getattr(getattr(e, "pretrained", None), "prior", None)]
    if with_prior:
        if getattr(head, "kind", None) != "binary":
            raise MedweaveError(
                f"model.encoders.{with_prior[0]}.prior: a zero-shot prior is the logit of a risk, for "
                f"binary tasks; this task's head is {getattr(head, 'kind', type(head).__name__)}"
            )
        # The head adds to the prior from zero: the untrained model predicts the prior itself.
        nn.init.zeros_(head.net[-1].weight)
        nn.init.zeros_(head.net[-1].bias)
    # The module config is a partial: runtime objects go in here, not through Hydra's recursion.
    make_module = instantiate(model_cfg.module)
    scheduler = instantiate(model_cfg.scheduler) if model_cfg.get("scheduler") else None
    model = make_module(
        encoders=encoders,
        fusion=fusion,
        head=head,
        optimizer=instantiate(model_cfg.optimizer),
        scheduler=scheduler,
        checkpoint_extras=checkpoint_extras,
    )
    compile_cfg = model_cfg.get("compile")
    if compile_cfg and compile_cfg.enabled:
        # In place and part by part (nn.Module.compile): state_dict keys keep their names (no
        # `_orig_mod.` prefix), so eval and predict load the checkpoint with or without compiling,
        # and a graph break in one encoder leaves the others whole. The glue (masks, modality
        # dropout) and the loss stay eager.
        for part in [*model.encoders.values(), model.fusion, model.head]:
            part.compile(mode=compile_cfg.mode, backend=compile_cfg.backend)
    return model

"""medweave-embed: run a frozen pretrained encoder over one modality and cache the embeddings.

    medweave-embed data.root=data/sandbox model_path=models/all-MiniLM-L6-v2
    medweave-embed data.root=data/sandbox modality=image model_path=models/resnet.pt
    medweave-embed data.root=data/sandbox modality=volume model_path=models/resnet3d.pt
    medweave-embed data.root=data/sandbox modality=ehr_codes model_path=<medweave-pretrain ckpt>
    medweave-embed ... device=cuda batch_size=256

It embeds from the prepared cohort cache (only data before each subject's prediction_time, for
the task given, as training sees it) and writes <out_dir>/<modality>-<key>/, reused while the
input, the model's content and the settings stay the same. Train on it with the line it prints:

    medweave-train data.root=data/sandbox model/encoder@model.encoders.text=precomputed \\
        data.embeddings.text=logs/embeddings/text-<key>
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("medweave")

EMBEDDABLE = ("text", "image", "volume", "ehr_codes")


def check_config(cfg) -> None:
    """Every fault of the command line at once, before the cohort is read."""
    from omegaconf import OmegaConf

    from medweave.cli.hydra_main import root_problems
    from medweave.errors import MedweaveError

    problems = root_problems(cfg)
    if cfg.modality not in EMBEDDABLE:
        problems.append(f"modality={cfg.modality}: expected one of {list(EMBEDDABLE)}")
    if OmegaConf.is_missing(cfg, "model_path"):
        what = {
            "text": "a local Hugging Face model folder",
            "ehr_codes": "a medweave-pretrain checkpoint",
        }.get(cfg.modality, "a state dict file")
        problems.append(f"model_path is not set: pass model_path=<{what}>")
    if problems:
        raise MedweaveError("; ".join(problems))


def embed(cfg) -> Path:
    """Embed ``cfg.modality`` of the cohort at ``cfg.data.root``; returns the embedding cache folder."""
    check_config(cfg)

    from omegaconf import OmegaConf

    from medweave.embeddings.embed import embed_cohort
    from medweave.errors import MedweaveError

    modality = cfg.modality
    model_path = Path(cfg.model_path).expanduser().resolve()
    # Cheap: the constructor checks the files; weights are read only if the cache must be built.
    encoder = _instantiate(cfg[modality], path=str(model_path))
    data = {"modalities": [modality], "embeddings": {}}
    if modality == "ehr_codes":  # the task vocabulary keeps every code the checkpoint knows
        from medweave.models.pretrain.load import pretrained_codes

        data["keep_codes"] = pretrained_codes(model_path)
    if modality == "text":  # a pretrained model reads only its own tokenizer's ids
        given = cfg.data.get("text_tokenizer_path")
        if given and Path(given).expanduser().resolve() != model_path:
            raise MedweaveError(
                f"data.text_tokenizer_path={given}: a pretrained text model needs its own tokenizer; "
                f"expected {model_path} (or leave it unset: medweave-embed sets it)"
            )
        data["text_tokenizer_path"] = str(model_path)
    datamodule = _instantiate(cfg.data, **data)
    datamodule.setup()
    settings = OmegaConf.to_container(cfg[modality], resolve=True)
    folder, built = embed_cohort(
        encoder,
        prepared=datamodule.cohort.folder,
        root=datamodule.root,
        model_path=model_path,
        settings=settings,
        out_dir=Path(cfg.out_dir),
        batch_size=cfg.batch_size,
        device=cfg.device,
    )
    print(f"{'Wrote' if built else 'Reusing (inputs unchanged)'} embedding cache {folder}")
    print(
        f"Train on it: medweave-train data.root={cfg.data.root} task={cfg.task.get('aces') or cfg.task.name} "
        f"model/encoder@model.encoders.{modality}=precomputed data.embeddings.{modality}={folder}"
    )
    return folder


def _instantiate(node, **kwargs):
    """Hydra's instantiate, with a constructor's MedweaveError raised as itself (not wrapped)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from medweave.errors import MedweaveError

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, MedweaveError):
            raise err.__cause__ from None
        raise


def main() -> None:
    from medweave.cli.hydra_main import run

    run(embed, "embed", "medweave-embed")


if __name__ == "__main__":
    main()

"""medweave-sandbox: write a synthetic cohort in the contract layout.

medweave-sandbox out=data/sandbox n_subjects=2000 seed=0
medweave-sandbox out=data/sandbox missing.image=0.6 overwrite=true
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("medweave")


def sandbox(cfg) -> str:
    from omegaconf import OmegaConf

    from medweave.sandbox.generate import SandboxConfig, generate_cohort
    from medweave.sandbox.latent import LatentWeights

    settings = OmegaConf.to_container(cfg, resolve=True)
    out, overwrite = settings.pop("out"), settings.pop("overwrite")
    settings["weights"] = LatentWeights(**settings.get("weights", {}))
    root = generate_cohort(out, SandboxConfig(**settings), overwrite=overwrite)
    meta = json.loads((root / "metadata/dataset.json").read_text())["medweave"]
    for task, oracle in meta["oracle"].items():
        for modality, auroc in oracle["auroc_by_modality"].items():
            log.info("Oracle AUROC given %s alone: %s", modality, auroc)
        log.info(
            "Cohort written to %s: task %s, prevalence %.3f, oracle AUROC %s",
            root,
            task,
            oracle["prevalence"],
            oracle["auroc"],
        )
    return str(root)


def main() -> None:
    from medweave.cli.hydra_main import run

    run(sandbox, "sandbox", "medweave-sandbox")


if __name__ == "__main__":
    main()

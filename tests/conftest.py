"""Shared fixtures: a tiny sandbox cohort (made once per session) and composed configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests use their own embedded stores


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """120 subjects, every modality, some missing: the end-to-end smoke cohort."""
    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    return generate_cohort(
        tmp_path_factory.mktemp("cohort") / "tiny",
        SandboxConfig(n_subjects=120, n_variants=200, image_size=64, seed=3),
    )


def compose(config_name: str, overrides: list[str]):
    """The real config as the CLI would build it, with Hydra's runtime values filled in."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from medweave.cli.hydra_main import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    return cfg


def compose_run(config_name: str, overrides: list[str], log_dir, run_dir):
    """A composed config ready to hand to a task function, as the CLI would in ``run_dir``."""
    from omegaconf import open_dict

    cfg = compose(config_name, [f"paths.log_dir={log_dir}", f"hydra.run.dir={run_dir}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        del cfg.hydra
    return cfg


@pytest.fixture
def smoke_cfg(tiny_cohort, tmp_path):
    def make(*overrides: str):
        overrides = ["debug=smoke", f"data.root={tiny_cohort}", *overrides]
        return compose_run("train", overrides, tmp_path / "logs", tmp_path / "run")

    return make


def pytest_collection_modifyitems(config, items):
    """gpu tests skip, with the reason, where there is no CUDA device (scripts/test.sh leaves them out)."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))

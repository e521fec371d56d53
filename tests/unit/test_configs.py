"""Every config composes, and every model part instantiates from it."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from medweave.cli.hydra_main import config_dir
from tests.conftest import compose

ROOT = config_dir()
SIZES = {
    "ehr_codes": {"vocab_size": 30},
    "text": {"vocab_size": 40, "pad_token_id": 0},
    "image": {},
    "genomics": {"n_features": 25},
}


def names(group):
    return sorted(p.stem for p in (ROOT / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", names("experiment"))
def test_experiments_compose(experiment):
    cfg = compose("train", [f"experiment={experiment}", "data.root=/x"])
    assert cfg.data.modalities and cfg.model.encoders


@pytest.mark.parametrize("fusion", names("model/fusion"))
def test_every_fusion_builds_a_model(fusion):
    from medweave.models.build import build_model

    cfg = compose("train", ["debug=smoke", "data.root=/x", f"model/fusion={fusion}"])
    model = build_model(cfg.model, list(SIZES), SIZES)
    assert set(model.encoders) == set(SIZES)


@pytest.mark.parametrize("trainer", names("trainer"))
def test_trainer_configs_compose(trainer):
    cfg = compose("train", [f"trainer={trainer}", "data.root=/x"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_eval_and_sandbox_configs_compose():
    assert compose("eval", ["ckpt_path=a", "data.root=b"]).split == "held_out"
    assert compose("sandbox", ["out=x"]).n_subjects == 2000


def test_logger_and_callbacks_instantiate(tmp_path):
    cfg = compose("train", ["data.root=/x", f"paths.log_dir={tmp_path}", "logger=csv"])
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    for node in [*cfg.callbacks.values(), *cfg.logger.values()]:
        assert instantiate(node) is not None


def test_configs_ship_with_the_package():
    assert (ROOT / "train.yaml").exists() and Path(ROOT).name == "configs"

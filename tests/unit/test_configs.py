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
    export = compose("export", ["run=a", "out=b"]).export
    assert export.min_cell == 5 and export.include_model is False


def test_logger_and_callbacks_instantiate(tmp_path):
    cfg = compose("train", ["data.root=/x", f"paths.log_dir={tmp_path}", "logger=csv"])
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    for node in [*cfg.callbacks.values(), *cfg.logger.values()]:
        assert instantiate(node) is not None


def test_configs_ship_with_the_package():
    assert (ROOT / "train.yaml").exists() and Path(ROOT).name == "configs"


def test_hardware_presets_use_the_node_and_combine_with_any_trainer(monkeypatch):
    """The Slurm templates' default (hardware=gpu_node): bf16, a loader worker per CPU of the task
    but one, pinned memory, persistent workers, fused AdamW; with trainer=ddp_multi_node too."""
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    cfg = compose("train", ["data.root=x", "trainer=ddp_multi_node", "hardware=gpu_node"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.data.num_workers == 7 and cfg.data.pin_memory is True
    assert cfg.model.optimizer.fused is True
    cpu = compose("train", ["data.root=x", "trainer=ddp", "hardware=cpu_node"])
    assert cpu.trainer.precision == "32-true" and cpu.data.num_workers == 7 and cpu.data.pin_memory is False


def test_slurm_templates_pass_the_hardware_preset():
    for name in ("train_one_node.sbatch", "train_multi_node.sbatch"):
        text = (Path(__file__).resolve().parents[2] / "slurm" / name).read_text()
        assert 'hardware="${MEDWEAVE_HARDWARE:-gpu_node}"' in text, name

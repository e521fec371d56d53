"""task.type alone picks the head (and with it the loss) and the monitor; explicit keys win."""

import pytest
from hydra.utils import instantiate

from medweave.errors import MedweaveError
from medweave.tasks.types import BY_TYPE, check_type
from tests.conftest import compose

HEAD_INPUTS = {
    "multiclass": {"classes": ["a", "b", "c"]},
    "multilabel": {"labels": ["x", "y"]},
    "regression": {"target_mean": 40.0, "target_sd": 5.0},
}


@pytest.mark.parametrize("task_type", sorted(BY_TYPE))
def test_type_alone_picks_head_loss_and_monitor(task_type):
    cfg = compose("train", ["data.root=/x", "task.name=my_label", f"task.type={task_type}"])
    head_class, monitor = BY_TYPE[task_type]
    assert cfg.task.monitor == monitor
    assert cfg.callbacks.model_checkpoint.monitor == monitor and cfg.optimized_metric == monitor
    head = instantiate(cfg.model.head, in_dim=8, **HEAD_INPUTS.get(task_type, {}))
    assert f"{type(head).__module__}.{type(head).__name__}" == head_class
    assert head.kind == task_type  # the head's own loss and metrics are the type's


def test_survival_alone_is_cox_with_c_index():
    cfg = compose("train", ["data.root=/x", "task.name=death_surv", "task.type=survival"])
    assert cfg.model.head._target_.endswith("survival.CoxHead")
    assert cfg.callbacks.early_stopping.monitor == "val/c_index"


def test_explicit_keys_override_the_type():
    cfg = compose("train", ["data.root=/x", "task=cvd_survival_discrete"])
    assert cfg.model.head._target_.endswith("DiscreteTimeHead") and list(cfg.model.head.edges)[-1] == 1826
    assert cfg.task.monitor == "val/c_index"
    cfg = compose("train", ["data.root=/x", "task.type=survival", "task.monitor=val/auprc"])
    assert cfg.callbacks.model_checkpoint.monitor == "val/auprc"
    cfg = compose("train", ["data.root=/x", "task.head._target_=my.Head", "task.head.dropout=0.5"])
    assert cfg.model.head._target_ == "my.Head" and cfg.model.head.dropout == 0.5


def test_every_shipped_task_composes_to_its_type():
    for name in ["cvd_onset_1y", "cvd_survival", "first_diagnosis_1y", "hba1c_1y", "onsets_1y"]:
        cfg = compose("train", ["data.root=/x", f"task={name}"])
        assert cfg.task.monitor == BY_TYPE[cfg.task.type][1]


def test_unknown_type_names_the_choices_and_the_near_miss():
    with pytest.raises(MedweaveError, match=r"task.type=survial: expected one of .*did you mean 'survival'"):
        check_type("survial")

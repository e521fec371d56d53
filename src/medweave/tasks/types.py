"""What a task's type picks when its config does not say: the head (output layer and loss) and the
validation metric that selects the best checkpoint.

``task.name=mine task.type=survival`` is then a whole task: the Cox head (partial likelihood) and
val/c_index. Configs reach these through two resolvers (``medweave_task_head``,
``medweave_task_monitor``, registered in cli/hydra_main.py) used by configs/task/_by_type.yaml;
a task file or a command line that sets ``task.head`` or ``task.monitor`` still wins.
"""

from __future__ import annotations

import difflib

from medweave.errors import MedweaveError

HEADS = "medweave.models.heads"
# type -> (head class, monitor). Every monitor is a "higher is better" metric (callbacks use mode=max).
BY_TYPE = {
    "binary": (f"{HEADS}.binary.BinaryHead", "val/auroc"),
    "multiclass": (f"{HEADS}.multiclass.MulticlassHead", "val/auroc"),  # macro one-vs-rest
    "multilabel": (f"{HEADS}.multilabel.MultilabelHead", "val/auroc"),  # macro over the labels
    "regression": (f"{HEADS}.regression.RegressionHead", "val/r2"),
    "survival": (f"{HEADS}.survival.CoxHead", "val/c_index"),
}


def check_type(task_type) -> str:
    """The type if medweave knows it, else an error listing the types (and the near miss)."""
    if task_type in BY_TYPE:
        return task_type
    near = difflib.get_close_matches(str(task_type), list(BY_TYPE), n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise MedweaveError(f"task.type={task_type}: expected one of {list(BY_TYPE)}{hint}")


def default_head(task_type) -> str:
    return BY_TYPE[check_type(task_type)][0]


def default_monitor(task_type) -> str:
    return BY_TYPE[check_type(task_type)][1]

"""ACES task files as users write them: typos, broken YAML, codes the cohort does not have.

A task file is configuration, not data: no mode can go on past a broken one, so every case is
strict only. The step is the datamodule's labelling (task=<file>), into work/cache.
"""

from __future__ import annotations

from pathlib import Path

from medweave.cli.hydra_main import config_dir
from tests.integration.bad_inputs import Case

SHIPPED = config_dir() / "aces"


def label_step(cohort: Path, work: Path, task: Path, task_type: str = "binary"):
    from medweave.data.datamodule import CohortDataModule

    def run(lenient: bool):
        dm = CohortDataModule(
            root=str(cohort),
            task=task.stem,
            task_type=task_type,
            modalities=["ehr_codes"],
            cache_dir=str(work / "cache"),
            lenient=lenient,
            aces=str(task),
        )
        dm.setup()
        return dm.cohort.folder

    return run


def edited(name: str, old: str, new: str, task_type: str = "binary"):
    def make(cohort: Path, work: Path):
        text = (SHIPPED / name).read_text()
        assert old in text, old
        task = work / name
        task.write_text(text.replace(old, new))
        return label_step(cohort, work, task, task_type)

    return make


CASES = [
    Case(
        "window-field-misspelt",
        edited("cvd_onset_1y.yaml", "    label: cvd", "    lable: cvd"),
        ("cvd_onset_1y.yaml", "line 26, field windows.target.lable", "did you mean 'label'"),
        lenient=False,
    ),
    Case(
        "yaml-broken",
        edited("cvd_onset_1y.yaml", "  target:\n", "  target\n"),
        ("cvd_onset_1y.yaml", "line 22, column 10: not valid YAML", "expected ':'"),
        lenient=False,
    ),
    Case(
        "trigger-undefined",
        edited("cvd_onset_1y.yaml", "trigger: index", "trigger: visit"),
        ("cvd_onset_1y.yaml", "field trigger", "predicate 'visit' is not defined"),
        lenient=False,
    ),
    Case(
        "trigger-code-absent",  # a warning names the nearest codes; no subject is labelled: an error
        edited("cvd_onset_1y.yaml", '"SANDBOX//INDEX"', '"SANDBOX//INDX"'),
        ("cvd_onset_1y.yaml", "ACES found no subject", "matches the trigger and windows"),
        lenient=False,
    ),
    Case(
        "survival-end-before-prediction",
        edited("cvd_survival.yaml", "end: 2025-12-31", "end: 2001-01-01", "survival"),
        ("cvd_survival.yaml", "ACES found no subject", "survival.end after the prediction times"),
        lenient=False,
    ),
    Case(
        "survival-event-undefined",
        edited("cvd_survival.yaml", "event: cvd", "event: mi", "survival"),
        ("cvd_survival.yaml", "field metadata.survival", "predicate 'mi' is not defined"),
        lenient=False,
    ),
    Case(
        "type-not-aces",
        edited("cvd_onset_1y.yaml", "type: binary", "type: regression"),
        ("cvd_onset_1y.yaml", "field metadata.type", "an ACES task is one of ['binary', 'survival']"),
        lenient=False,
    ),
]

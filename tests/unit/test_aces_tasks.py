"""Tasks as ACES config files: reading (errors with line and field), labels, cache, task=<file>."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medweave.cli.hydra_main import config_dir, task_file_overrides
from medweave.data import aces
from medweave.data import contract as c
from medweave.errors import MedweaveError
from tests.conftest import compose

SHIPPED = config_dir() / "aces"
D = dt.datetime


def write_cohort(root: Path, events: list[tuple], shards: int = 1) -> Path:
    """A MEDS cohort from (subject_id, time, code) rows, split over ``shards`` files by subject."""
    (root / "data").mkdir(parents=True)
    (root / "metadata").mkdir()
    ids = sorted({e[0] for e in events})
    for k in range(shards):
        mine = [e for e in events if ids.index(e[0]) % shards == k]
        table = pa.table(
            {
                "subject_id": pa.array([e[0] for e in mine], pa.int64()),
                "time": pa.array([e[1] for e in mine], pa.timestamp("us")),
                "code": pa.array([e[2] for e in mine], pa.string()),
                "numeric_value": pa.nulls(len(mine), pa.float32()),
            }
        )
        pq.write_table(table, root / "data" / f"{k}.parquet")
    splits = pa.table({"subject_id": pa.array(ids, pa.int64()), "split": ["train"] * len(ids)})
    pq.write_table(splits, root / c.SUBJECT_SPLITS)
    return root


def k76_cohort(root: Path) -> Path:
    birth = [(s, D(1950, 1, 1), "MEDS_BIRTH") for s in (1, 2, 3, 4, 5)]
    return write_cohort(
        root,
        birth
        + [
            (1, D(2010, 1, 1), "ICD10//I10"),  # history, K76, death 3 years on: positive
            (1, D(2015, 1, 1), "ICD10//K76"),
            (1, D(2018, 1, 1), "MEDS_DEATH"),
            (2, D(2020, 1, 1), "ICD10//K76"),  # no clinical history a year before: not in the cohort
            (3, D(2011, 5, 1), "ATC//A10BA02"),  # history, K76 twice (the first counts), alive: negative
            (3, D(2014, 1, 1), "ICD10//K76"),
            (3, D(2016, 1, 1), "ICD10//K76"),
            (4, D(2001, 1, 1), "ICD10//E11"),  # death more than 5 years after K76: negative
            (4, D(2005, 1, 1), "ICD10//K76"),
            (4, D(2012, 1, 1), "MEDS_DEATH"),
            (5, D(2012, 1, 1), "ICD10//E11"),  # never K76
        ],
        shards=2,
    )


def write_task(tmp_path: Path, text: str, name="task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BINARY = """\
metadata:
  type: binary
predicates:
  index: {code: "SANDBOX//INDEX"}
  cvd: {code: "ICD10//I21"}
trigger: index
windows:
  input:
    start: null
    end: trigger
    start_inclusive: true
    end_inclusive: false
    index_timestamp: end
  target:
    start: input.end
    end: start + 365d
    start_inclusive: false
    end_inclusive: true
    label: cvd
"""


# ------------------------------------------------------------------------------ translation
def test_a_task_file_path_becomes_the_aces_group_entry(tmp_path):
    path = SHIPPED / "cvd_survival.yaml"
    args = task_file_overrides([f"task={path}", "data.root=/x", "debug=smoke"])
    assert args == [
        "task=aces",
        f"task.aces={path}",
        "task.name=cvd_survival",
        "task.type=survival",
        "data.root=/x",
        "debug=smoke",
    ]
    cfg = compose("train", args)
    assert cfg.data.aces == str(path) and cfg.data.task == "cvd_survival"
    assert cfg.model.head._target_.endswith("CoxHead") and cfg.task.monitor == "val/c_index"


def test_translation_leaves_names_and_explicit_keys_alone(tmp_path):
    assert task_file_overrides(["task=cvd_onset_1y", "x=1"]) == ["task=cvd_onset_1y", "x=1"]
    path = write_task(tmp_path, BINARY, "my_cvd.yaml")
    args = task_file_overrides([f"task={path}", "task.name=mine", "task.monitor=val/auprc"])
    assert "task.name=my_cvd" not in args and "task.name=mine" in args  # the command line wins
    cfg = compose("train", ["data.root=/x", *args])
    assert cfg.task.name == "mine" and cfg.callbacks.model_checkpoint.monitor == "val/auprc"


def test_a_missing_task_file_is_one_line(tmp_path):
    with pytest.raises(MedweaveError, match=r"nope.yaml: no such ACES task file"):
        task_file_overrides([f"task={tmp_path / 'nope.yaml'}"])


# ----------------------------------------------------------------------------- bad files
@pytest.mark.parametrize(
    "edit,message",
    [
        (
            ("    label: cvd\n", "    lable: cvd\n"),
            r"line 19, field windows.target.lable: unknown window "
            r"field.*did you mean 'label'",
        ),
        (
            ("trigger: index", "trigger: indx"),
            r"line 6, field trigger: predicate 'indx' is not defined"
            r".*did you mean 'index'",
        ),
        (("  target:\n", "  target\n"), r"line 1[0-9], column \d+: not valid YAML"),
        (
            ("  type: binary", "  type: multiclass"),
            r"line 2, field metadata.type: 'multiclass': an ACES "
            r"task is one of \['binary', 'survival'\]",
        ),
        (("  type: binary", "  tpye: binary"), r"field metadata.tpye: unknown task key; did you mean 'type'"),
        (("    index_timestamp: end\n", ""), r"field windows: exactly one window needs index_timestamp"),
        (
            ('  cvd: {code: "ICD10//I21"}', "  cvd: ICD10//I21"),
            r"line 5, field predicates.cvd: expected "
            r"\{code: <MEDS code>\}",
        ),
        (
            ('cvd: {code: "ICD10//I21"}', 'cvd: {code: {regex: "ICD10//(I21"}}'),
            r"line 5, field predicates.cvd.code: regex .* is not a valid regex",
        ),
        (
            ("  type: binary", "  type: survival"),
            r"field metadata.type: a survival task needs "
            r"metadata.survival",
        ),
    ],
)
def test_a_malformed_file_names_the_line_and_field(tmp_path, edit, message):
    path = write_task(tmp_path, BINARY.replace(*edit))
    with pytest.raises(MedweaveError, match=message) as err:
        aces.read_task_file(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_every_fault_is_reported_at_once(tmp_path):
    text = BINARY.replace("    label: cvd\n", "    lable: cvd\n").replace("trigger: index", "trigger: indx")
    with pytest.raises(MedweaveError) as err:
        aces.read_task_file(write_task(tmp_path, text))
    assert "windows.target.lable" in str(err.value) and "field trigger" in str(err.value)


def test_survival_keys_are_checked(tmp_path):
    text = BINARY.replace("  type: binary", "  type: survival\n  survival: {event: cvdd, ends: 2025-12-31}")
    with pytest.raises(MedweaveError) as err:
        aces.read_task_file(write_task(tmp_path, text))
    assert "metadata.survival.ends: unknown key" in str(err.value) and "did you mean 'end'" in str(err.value)
    assert "predicate 'cvdd' is not defined" in str(err.value)


def test_shipped_task_files_read(tmp_path):
    for path in sorted(SHIPPED.glob("*.yaml")):
        task = aces.read_task_file(path)
        assert task.name == path.stem and task.type in aces.TYPES
        aces.aces_config(task)  # ACES's own parse accepts them


# ----------------------------------------------------------------------------------- labels
def test_k76_example_labels_what_it_says(tmp_path, caplog):
    root = k76_cohort(tmp_path / "cohort")
    with caplog.at_level(logging.WARNING):
        table = aces.compute_labels(aces.read_task_file(SHIPPED / "death_5y_after_k76.yaml"), root)
    assert not [r for r in caplog.records if "does not occur" in r.message]
    rows = {r["subject_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == [1, 3, 4]  # 2: no year of history; 5: never K76
    assert rows[1]["boolean_value"] and not rows[3]["boolean_value"] and not rows[4]["boolean_value"]
    assert rows[3]["prediction_time"] == D(2014, 1, 1)  # the first K76, not the second
    assert table.schema == c.LABEL_SCHEMA


def test_a_code_absent_from_the_cohort_warns_with_the_nearest(tmp_path, caplog):
    root = k76_cohort(tmp_path / "cohort")
    text = (SHIPPED / "death_5y_after_k76.yaml").read_text().replace("ICD10//K76", "ICD10//K67")
    with caplog.at_level(logging.WARNING), pytest.raises(MedweaveError, match="ACES found no subject"):
        aces.compute_labels(aces.read_task_file(write_task(tmp_path, text)), root)
    [warning] = [r.message for r in caplog.records if "does not occur" in r.message]
    line = next(n for n, row in enumerate(text.splitlines(), 1) if row.startswith("  k76:"))
    assert (
        f"line {line}, field predicates.k76.code: code 'ICD10//K67' does not occur in the cohort" in warning
    )
    assert "nearest: ICD10//K76" in warning


def test_survival_time_is_the_first_event_or_censoring(tmp_path):
    root = write_cohort(
        tmp_path / "cohort",
        [
            (1, D(2020, 1, 1), "IDX"),
            (1, D(2020, 1, 11), "EV"),  # event after 10 days
            (1, D(2020, 3, 1), "LOST"),
            (2, D(2020, 1, 1), "IDX"),
            (2, D(2020, 1, 21), "LOST"),  # lost after 20 days, event later is never seen
            (2, D(2020, 2, 1), "EV"),
            (3, D(2020, 1, 1), "IDX"),
            (3, D(2020, 1, 5), "OTHER"),  # nothing: censored at the cutoff
            (4, D(2020, 1, 1), "IDX"),
            (4, D(2021, 6, 1), "EV"),  # event after the cutoff: censored at it
        ],
    )
    text = """\
metadata:
  type: survival
  survival: {event: ev, censor: [lost], end: 2021-01-01}
predicates:
  idx: {code: IDX}
  ev: {code: EV}
  lost: {code: LOST}
trigger: idx
windows:
  input: {start: null, end: trigger, start_inclusive: true, end_inclusive: true, index_timestamp: end}
"""
    table = aces.compute_labels(aces.read_task_file(write_task(tmp_path, text)), root).to_pandas()
    table = table.set_index("subject_id").sort_index()
    assert table.boolean_value.tolist() == [True, False, False, False]
    np.testing.assert_allclose(table.float_value, [10, 20, 366, 366])  # 2020 is a leap year
    text = text.replace("end: 2021-01-01", "end: null")  # each subject's last event
    table = aces.compute_labels(aces.read_task_file(write_task(tmp_path, text)), root).to_pandas()
    np.testing.assert_allclose(table.sort_values("subject_id").float_value, [10, 20, 4, 517])


def test_sandbox_tasks_agree_with_the_sandbox_labels(tiny_cohort):
    """Survival: the same to the second. Binary: the same but for people lost to follow-up before an
    onset within the year, whom the sandbox (knowing the latent onset) calls positive."""
    read = lambda name: pq.read_table(tiny_cohort / f"labels/{name}.parquet").to_pandas()  # noqa: E731
    for disease in ("cvd", "t1d"):
        mine = aces.compute_labels(aces.read_task_file(SHIPPED / f"{disease}_onset_1y.yaml"), tiny_cohort)
        mine = mine.to_pandas().set_index("subject_id").sort_index()
        theirs = read(f"{disease}_onset_1y").set_index("subject_id").sort_index()
        survival = read(f"{disease}_survival").set_index("subject_id").sort_index()
        assert mine.index.equals(theirs.index)
        assert (mine.prediction_time == theirs.prediction_time).all()
        lost_before_onset = theirs.boolean_value & ~survival.boolean_value & (survival.float_value < 365)
        assert ((mine.boolean_value != theirs.boolean_value) == lost_before_onset).all()

        timed = aces.compute_labels(aces.read_task_file(SHIPPED / f"{disease}_survival.yaml"), tiny_cohort)
        timed = timed.to_pandas().set_index("subject_id").sort_index()
        assert timed.index.equals(survival.index)
        assert (timed.boolean_value == survival.boolean_value).all()
        np.testing.assert_allclose(timed.float_value, survival.float_value, atol=1e-3)  # float32 days


def test_labels_are_cached_by_file_and_cohort(tmp_path, monkeypatch):
    root = k76_cohort(tmp_path / "cohort")
    path = write_task(tmp_path, (SHIPPED / "death_5y_after_k76.yaml").read_text(), "k76.yaml")
    first = aces.labels_dir(path, root, tmp_path / "cache", "fp1")
    assert pq.read_table(first / "death_5y_after_k76.parquet").num_rows == 3

    def never(*_):
        raise AssertionError("recomputed")

    monkeypatch.setattr(aces, "compute_labels", never)
    assert aces.labels_dir(path, root, tmp_path / "cache", "fp1") == first
    with pytest.raises(AssertionError):  # another cohort fingerprint, or an edited file: new labels
        aces.labels_dir(path, root, tmp_path / "cache", "fp2")
    path.write_text(path.read_text() + "\n# edited\n")
    with pytest.raises(AssertionError):
        aces.labels_dir(path, root, tmp_path / "cache", "fp1")
    left = sorted(str(p.relative_to(tmp_path / "cache")) for p in (tmp_path / "cache").rglob("*"))
    left = [p for p in left if not p.endswith(".lock")]  # the failed builds left nothing behind
    assert left == ["labels", f"labels/{first.name}", f"labels/{first.name}/death_5y_after_k76.parquet",
                    f"labels/{first.name}/task.yaml"]  # fmt: skip


def test_datamodule_trains_on_aces_labels(tmp_path, tiny_cohort):
    from medweave.data.datamodule import CohortDataModule

    dm = CohortDataModule(
        root=str(tiny_cohort),
        task="cvd_survival",
        task_type="survival",
        modalities=["ehr_codes"],
        cache_dir=str(tmp_path / "cache"),
        aces=str(SHIPPED / "cvd_survival.yaml"),
    )
    dm.setup()
    assert Path(dm.prepare_config.labels_dir).parent == (tmp_path / "cache" / "labels").resolve()
    assert len(dm.cohort.subject_id) == 120 and dm.cohort.has_times
    with pytest.raises(MedweaveError, match="keep one"):
        CohortDataModule(
            root=str(tiny_cohort),
            task="cvd_survival",
            task_type="survival",
            modalities=["ehr_codes"],
            cache_dir=str(tmp_path / "cache"),
            aces=str(SHIPPED / "cvd_survival.yaml"),
            labels_dir="labels",
        ).setup()


# ------------------------------------------------------------------------ names and checks
def test_a_misspelt_task_lists_every_near_name(tmp_path):
    from medweave.data.readers import meds

    root = tmp_path / "c"
    (root / "labels").mkdir(parents=True)
    for name in ("death_5y", "death_surv", "cvd_onset_1y"):
        (root / "labels" / f"{name}.parquet").write_bytes(b"")
    with pytest.raises(MedweaveError, match=r"Did you mean one of 'death_5y', 'death_surv'\?"):
        meds.label_files(root, "death")
    with pytest.raises(MedweaveError, match=r"Did you mean 'cvd_onset_1y'\?"):
        meds.label_files(root, "cvd_onset_1")


def test_validate_checks_label_columns_against_the_task_type(tmp_path, tiny_cohort):
    from medweave.data.validate import validate_cohort

    root = shutil.copytree(tiny_cohort, tmp_path / "c")
    survival = pq.read_table(root / "labels/cvd_survival.parquet")
    pq.write_table(survival.drop_columns(["float_value"]), root / "labels/death_surv.parquet")
    pq.write_table(survival, root / "labels/death_5y.parquet")
    report = validate_cohort(root, tasks={"death_surv": "survival", "death": "binary"})
    problems = [str(p) for p in report.problems]
    assert any(
        p.startswith(
            "labels/death_surv.parquet: column float_value: missing; a survival task reads "
            "['boolean_value', 'float_value'] (this file has ['boolean_value', 'integer_value',"
        )
        for p in problems
    ), problems
    assert any(
        "task death: no label file" in p and "Did you mean one of 'death_5y', 'death_surv'?" in p
        for p in problems
    ), problems
    assert len(problems) == 2
    assert validate_cohort(tiny_cohort, tasks={"cvd_survival": "survival", "hba1c_1y": "regression"}).ok
    [wrong] = validate_cohort(tiny_cohort, tasks={"hba1c_1y": "binary"}).problems
    assert str(wrong).startswith(
        "labels/hba1c_1y.parquet: row 0, field boolean_value: label is null; a binary"
    )


def test_validate_labels_an_aces_task_without_a_labels_folder(tmp_path):
    """task=<ACES file>: the labels are ACES's, computed into the cache train reads (no labels/
    written by hand); a task that labels nobody, or label files named as well, is a problem."""
    from medweave.data.validate import validate_cohort

    root = k76_cohort(tmp_path / "cohort")
    task = SHIPPED / "death_5y_after_k76.yaml"
    assert not validate_cohort(root).ok  # a label-file task still needs labels/
    report = validate_cohort(root, aces_task=task, cache_dir=tmp_path / "cache")
    assert report.ok, [str(p) for p in report.problems]
    counts = report.counts
    assert counts["death_5y_after_k76 labels"] == 3 and counts["death_5y_after_k76 positive"] == 1
    assert list((tmp_path / "cache/labels").glob("*/death_5y_after_k76.parquet"))  # what train reuses
    assert not (root / "labels").exists()
    nobody = write_task(tmp_path, task.read_text().replace("ICD10//K76", "ICD10//K67"))
    [problem] = validate_cohort(root, aces_task=nobody).problems
    assert problem.where == "labels" and "ACES found no subject" in problem.message
    [problem] = validate_cohort(root, labels_dir="mine", aces_task=task).problems
    assert "data.labels_dir=mine names label files too" in problem.message


def test_validate_cli_takes_an_aces_task_file(tmp_path):
    import subprocess
    import sys

    root = k76_cohort(tmp_path / "cohort")
    task = SHIPPED / "death_5y_after_k76.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "medweave.cli.validate", f"data.root={root}", f"task={task}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 death_5y_after_k76 labels, 1 death_5y_after_k76 positive" in done.stdout
    assert list((tmp_path / "logs/cache/labels").glob("*/death_5y_after_k76.parquet"))

"""slurm/prepare.sbatch on a real two-node Slurm cluster: an array of two tasks, one per node,
prepares the EHR shards, the job after it (afterok) reduces; the cache is the one a local run makes.
A task that fails names its shard, and the reduce job is cancelled instead of pending for ever."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
N_SHARDS = 4  # two units for each of the two array tasks


@pytest.fixture(scope="module")
def four_shards(tiny_cohort, tmp_path_factory):
    """The tiny cohort with its events in four shards by subject_id % 4 (as MEDS ETLs hash them)."""
    copy = shutil.copytree(tiny_cohort, tmp_path_factory.mktemp("four-shards") / "cohort")
    (single,) = (copy / c.EVENTS_DIR).glob("*.parquet")
    table = pq.read_table(single)
    single.unlink()
    shard_of = table.column("subject_id").to_numpy() % N_SHARDS
    for k in range(N_SHARDS):
        pq.write_table(table.filter(shard_of == k), copy / c.EVENTS_DIR / f"{k}.parquet")
    return copy


def cache_files(folder: Path) -> dict[str, bytes]:
    """Every file of a cache folder by relative path (the locks, empty files, left out)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def submit(slurm, cohort: Path, tmp_path: Path) -> tuple[str, str, Path, Path, list[str]]:
    """``bash slurm/prepare.sbatch`` as a user runs it, with two array tasks of a whole node each;
    returns the array and reduce job ids, the cache and log folders and the overrides."""
    import subprocess

    overrides = [f"data.root={cohort}", "data.modalities=[ehr_codes]", f"paths.log_dir={tmp_path / 'logs'}"]
    logs, cache = tmp_path / "slurm-logs", tmp_path / "slurm-cache"
    logs.mkdir()
    env = {
        **slurm.env,
        "MEDWEAVE_PREPARE_TASKS": "2",
        "MEDWEAVE_PREPARE_CPUS": str(slurm.cpus_per_node),  # a node each: the tasks run side by side
        "MEDWEAVE_PREPARE_MEM": "100M",
        "MEDWEAVE_PREPARE_LOGS": str(logs),
    }
    proc = subprocess.run(
        ["bash", "slurm/prepare.sbatch", *overrides, f"paths.cache_dir={cache}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array, reduce = re.search(r"array job (\d+) .* reduce job (\d+)", proc.stdout).groups()
    return array, reduce, cache, logs, overrides


def test_prepare_array_on_two_nodes_makes_the_cache_of_a_local_run(slurm, four_shards, tmp_path):
    from medweave.cli.prepare import prepare as prepare_cli
    from tests.conftest import compose_run

    array, reduce, cache, logs, overrides = submit(slurm, four_shards, tmp_path)
    assert slurm.job_state(reduce)["Dependency"] == f"afterok:{array}_*(unfulfilled)"

    info = slurm.wait(reduce, timeout=240)
    texts = {p.name: p.read_text() for p in sorted(logs.iterdir())}
    assert info["JobState"] == "COMPLETED", (info, texts)
    tasks = [texts[f"medweave-prepare-{array}_{k}.out"] for k in (0, 1)]
    for k, text in enumerate(tasks):
        assert f"prepared EHR part {k + 1} of 2 ({N_SHARDS} shard unit(s) in the cohort)" in text, text
    nodes = {re.search(r"medweave job \d+ \(restart 0\) on (\S+);", text).group(1) for text in tasks}
    assert nodes == {"n1", "n2"}, texts  # one array task per node
    array_info = [slurm.job_state(f"{array}_{k}") for k in (0, 1)]
    assert all(i["JobState"] == "COMPLETED" for i in array_info), array_info
    # the reduce job started only once both array tasks had ended
    reduce_info = slurm.job_state(reduce)
    assert reduce_info["StartTime"] >= max(i["EndTime"] for i in array_info)
    print(
        "\n"
        + "; ".join(f"{i['JobId']}: {i['StartTime']} - {i['EndTime']}" for i in [*array_info, reduce_info])
    )
    [prepared] = cache.glob("*/manifest.json")
    assert f"prepared {prepared.parent}" in texts[f"medweave-prepare-reduce-{reduce}.out"]

    local = tmp_path / "local-cache"
    prepare_cli(
        compose_run("train", [*overrides, f"paths.cache_dir={local}"], tmp_path / "logs", tmp_path / "run")
    )
    slurm_files, local_files = cache_files(cache), cache_files(local)
    assert len([f for f in local_files if f.endswith("/info.json")]) == N_SHARDS
    assert sorted(slurm_files) == sorted(local_files)  # the same cache key and shard keys
    assert [f for f in slurm_files if slurm_files[f] != local_files[f]] == []


def test_a_failed_array_task_names_its_shard_and_the_reduce_job_is_cancelled(slurm, four_shards, tmp_path):
    broken = shutil.copytree(four_shards, tmp_path / "cohort")
    (broken / c.EVENTS_DIR / "3.parquet").write_bytes(b"not parquet")  # unit 3: the second task's
    array, reduce, cache, logs, _ = submit(slurm, broken, tmp_path)
    info = slurm.wait(reduce, timeout=240)
    assert info["JobState"] == "CANCELLED", info  # --kill-on-invalid-dep: not pending for ever
    first, second = (slurm.wait(f"{array}_{k}", timeout=60) for k in (0, 1))
    assert first["JobState"] == "COMPLETED" and second["JobState"] == "FAILED", (first, second)
    text = (logs / f"medweave-prepare-{array}_1.out").read_text()
    assert "EHR shard data/3.parquet failed" in text and "a rerun reuses them" in text, text
    assert len(list((cache / "ehr").glob("*/info.json"))) == 3  # the others' shards are kept
    assert not list(cache.glob("*/manifest.json"))

"""EHR preparation by Dask, locally and on Slurm, beside medweave's own map, in one run.

    python benchmarks/ehr_prepare_dask.py --cohort /data/r10000 --cohort /data/r100000 --workers 2

The same work as medweave's map stage (data/ehr/shards.py) and its reduce (data/ehr/vocab.py),
written the way a Dask user would: one ``dask.delayed`` task per data/ shard (MEDS shards by
subject, so each task sees all of its subjects' events) doing the work in pandas, and the
per-code counts summed by a reduce task:

- the labelled subjects' events before prediction time (static events kept, placed last; notes
  left out), sorted by subject then time;
- per code, over train subjects: subjects, subjects with a value, valued events, sum and sum of
  squares of the values (what the vocabulary and value statistics are fitted from);
- the last ``max_events`` events of each subject (code, value, days before prediction time),
  written as one parquet file per shard.

Engines, each in a child process on the same files and an empty output folder:

- ``medweave``: ``prepare()`` with data.modalities=[ehr_codes] and ``workers`` processes (the map,
  the reduce, the index), as in benchmarks/ehr_prepare_scale.py.
- ``dask-local``: a distributed ``LocalCluster`` of ``workers`` worker processes, one thread each.
- ``dask-slurm``: dask-jobqueue's ``SLURMCluster`` on a two-node Slurm cluster brought up on this
  machine (tests/slurm_cluster.py), one single-CPU worker job per node; its wall time includes
  the worker jobs' start.
- ``dask-medweave``: medweave's own map and reduce functions (shards.build_unit per unit,
  vocab.fit_codes) as tasks on a ``LocalCluster``: Dask as the launcher only; its cache shards
  are checked byte for byte against medweave's.

Each engine's figures: wall time, CPU time (user + system of the child's process tree, and for
dask-slurm also of the worker jobs, which Slurm starts outside that tree), and the peak over time
of the summed RSS of all those processes (psutil, every 0.1 s; shared pages count once per
process). Afterwards the Dask outputs are checked against medweave's cache, shard by shard: the
same subjects' truncated events (codes, values, days) and the same integer counts per code, value
sums equal to 1e-9 relative (pandas and numpy sum in another order), the same vocabulary.

Prints one JSON line per cohort; --out appends them to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
MB = 1 << 20
COUNTS = ("subjects", "valued_subjects", "valued_events", "value_sum", "value_square_sum")


# ------------------------------------------------------------------------------ measurement
RUN_MARKER = "MEDWEAVE_BENCH_RUN"  # in the child's environment, so in its Slurm jobs' too
DAEMONS = frozenset({"munged", "slurmctld", "slurmd"})  # the test cluster's own, not the work's


def monitored(cmd: list[str], logs: Path, outside: bool = False) -> dict:
    """Run ``cmd``: wall time, CPU time and peak summed RSS of its process tree, and, with
    ``outside``, of the processes outside the tree that carry its marker (the Slurm worker jobs
    it starts; the Slurm and munge daemons not counted).

    CPU of the tree is the kernel's count for the child and every descendant it waited for;
    outside processes count with their CPU as last seen (every 0.1 s).
    """
    import uuid

    import psutil

    marker = uuid.uuid4().hex
    env = {**os.environ, RUN_MARKER: marker}
    start = time.perf_counter()
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
    top, peak, outside_cpu, outside_pids = psutil.Process(proc.pid), 0, {}, set()
    last_scan, status, usage = 0.0, None, None
    while status is None:
        pid, code, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status, usage = code, ru
            break
        try:
            procs = [top, *top.children(recursive=True)]
        except psutil.Error:
            procs = []
        if outside and time.perf_counter() - last_scan > 1.0:  # new worker jobs: looked for each second
            last_scan = time.perf_counter()
            outside_pids = {p.pid for p in psutil.process_iter(["name"]) if _carries(p, marker)}
            outside_pids -= {p.pid for p in procs}
        rss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        for pid in outside_pids:
            try:
                p = psutil.Process(pid)
                rss += p.memory_info().rss
                t = p.cpu_times()
                outside_cpu[pid] = t.user + t.system
            except psutil.Error:
                pass
        peak = max(peak, rss)
        time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (logs / "stderr").read_text()[-4000:]
        raise RuntimeError(f"{' '.join(cmd[:6])} failed ({proc.returncode}):\n{tail}")
    tree_cpu = usage.ru_utime + usage.ru_stime
    result = {
        "wall_s": round(wall, 2),
        "cpu_s": round(tree_cpu + sum(outside_cpu.values()), 1),
        "peak_rss_mb": round(peak / MB),
        "stdout": (logs / "stdout").read_text(),
    }
    if outside:
        result["of_which_worker_jobs_cpu_s"] = round(sum(outside_cpu.values()), 1)
    return result


def _carries(p, marker: str) -> bool:
    import psutil

    try:
        return p.info["name"] not in DAEMONS and p.environ().get(RUN_MARKER) == marker
    except (psutil.Error, OSError):
        return False


# ------------------------------------------------------------------------------ the work
def labelled_table(root: Path, task: str):
    """Labelled subjects with a split, one row each: subject_id, prediction_time (us), train."""
    import pandas as pd
    import pyarrow.parquet as pq

    labels = pq.read_table(root / "labels" / f"{task}.parquet", columns=["subject_id", "prediction_time"])
    splits = pq.read_table(root / "metadata" / "subject_splits.parquet", columns=["subject_id", "split"])
    df = labels.to_pandas().merge(splits.to_pandas(), on="subject_id", how="inner")
    df = df[df.split.isin(["train", "tuning", "held_out"])]
    return pd.DataFrame(
        {
            "subject_id": df.subject_id.to_numpy("int64"),
            "prediction_us": df.prediction_time.to_numpy("datetime64[us]").view("int64"),
            "train": (df.split == "train").to_numpy(),
        }
    )


def shard_work(path: str, labels, out: str, max_events: int):
    """One data/ shard in pandas: cut, counts over train subjects, truncation; writes the events."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(
        path, columns=["subject_id", "time", "code", "numeric_value"], read_dictionary=["code"]
    )
    df = pd.DataFrame(
        {
            "subject_id": table.column("subject_id").to_numpy(),
            "time_us": table.column("time").cast(pa.int64()).to_numpy(zero_copy_only=False),  # NaN: static
            "code": table.column("code").to_pandas(),  # categorical: each name stored once
            "value": table.column("numeric_value").cast(pa.float32()).to_numpy(zero_copy_only=False),
        }
    )
    del table
    df["order"] = np.arange(len(df))  # ties in time keep the shard's order
    df = df.merge(labels, on="subject_id", how="inner")
    static = df.time_us.isna()
    is_note = df.code.cat.categories.str.startswith("NOTE//")
    keep = (static | (df.time_us < df.prediction_us)) & ~is_note[df.code.cat.codes.to_numpy()]
    df = df[keep.to_numpy()].assign(static=static[keep.to_numpy()])
    df = df.sort_values(["subject_id", "static", "time_us", "order"], kind="stable")

    train = df[df.train]
    valued = train[train.value.notna()]
    counts = pd.DataFrame(
        {
            "subjects": train.groupby("code", observed=True).subject_id.nunique(),
            "valued_subjects": valued.groupby("code", observed=True).subject_id.nunique(),
            "valued_events": valued.groupby("code", observed=True).value.count(),
            "value_sum": valued.value.astype("float64").groupby(valued.code, observed=True).sum(),
            "value_square_sum": (valued.value.astype("float64") ** 2)
            .groupby(valued.code, observed=True)
            .sum(),
        }
    ).fillna(0)
    counts.index = counts.index.astype(str)

    # the last max_events of each subject, the birth event always among them (as medweave keeps)
    birth = (df.code.astype(str) == "MEDS_BIRTH").to_numpy()
    pinned = pd.Series(birth, df.index).groupby(df.subject_id, sort=False).transform("sum")
    other = pd.Series((~birth).astype(np.int64), df.index)
    from_end = other[::-1].groupby(df.subject_id[::-1], sort=False).cumsum()[::-1]
    kept = df[birth | (from_end <= (max_events - pinned).clip(lower=0)).to_numpy()]
    days = (kept.prediction_us - kept.time_us) / 8.64e10  # NaN for static events
    events = pa.table(
        {
            "subject_id": kept.subject_id.to_numpy(),
            "code": pa.array(kept.code.astype(str).to_numpy()).dictionary_encode(),
            "value": kept.value.to_numpy(),
            "days": days.to_numpy("float64").astype("float32"),
        }
    )
    pq.write_table(events, Path(out) / f"{Path(path).stem}.events.parquet")
    return counts


def reduce_counts(parts):
    import pandas as pd

    return pd.concat(parts).groupby(level=0).sum().sort_index()


def run_dask(client, root: Path, out: Path, task: str, max_events: int):
    """The graph: one task per shard, the labels sent once to every worker, one reduce.
    Without a client it runs on Dask's default scheduler in this process (the tests)."""
    import dask

    labels = labelled_table(root, task)
    if client is not None:
        labels = client.scatter(labels, broadcast=True)
    files = sorted(str(p) for p in (root / "data").rglob("*.parquet"))
    parts = [dask.delayed(shard_work)(f, labels, str(out), max_events) for f in files]
    counts = dask.delayed(reduce_counts)(parts).compute()
    counts.to_parquet(out / "counts.parquet")
    return len(files)


def child_dask_local(root: str, out: str, task: str, workers: int, max_events: int) -> None:
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        with Client(cl) as client:
            print(run_dask(client, Path(root), Path(out), task, max_events))


def child_dask_slurm(root: str, out: str, task: str, workers: int, max_events: int) -> None:
    """SLURMCluster on a local two-node Slurm cluster: ``workers`` single-CPU worker jobs."""
    sys.path.insert(0, str(REPO))
    from dask.distributed import Client
    from dask_jobqueue import SLURMCluster

    from tests.slurm_cluster import LocalSlurm

    with tempfile.TemporaryDirectory(prefix="dask-slurm-", dir="/tmp") as folder:
        with LocalSlurm(folder, cpus_per_node=1, real_memory_mb=8000) as slurm:
            os.environ.update(slurm.env)  # sbatch, squeue and scancel find the cluster
            cluster = SLURMCluster(
                cores=1,
                processes=1,
                memory="7GB",
                walltime="01:00:00",
                python=sys.executable,
                scheduler_options={"host": "127.0.0.1", "dashboard_address": None},
                job_extra_directives=[f"--output={folder}/dask-worker-%j.out"],
                log_directory=None,
            )
            try:
                with Client(cluster) as client:
                    cluster.scale(jobs=workers)
                    client.wait_for_workers(workers, timeout=120)
                    nodes = sorted(client.run(lambda: os.environ.get("SLURMD_NODENAME", "?")).values())
                    print(f"dask workers on Slurm nodes {nodes}", file=sys.stderr, flush=True)
                    print(run_dask(client, Path(root), Path(out), task, max_events))
            finally:
                cluster.close()


def child_dask_medweave(root: str, out: str, task: str, workers: int, max_events: int) -> None:
    """medweave's own map (shards.build_unit per unit) and reduce (vocab.fit_codes), scheduled
    by a LocalCluster: what Dask costs as the launcher alone, on medweave's work."""
    import json

    from dask.distributed import Client, LocalCluster

    from medweave.data import contract as c
    from medweave.data import ehr
    from medweave.data.bad_input import BadInput
    from medweave.data.ehr import shards, vocab
    from medweave.data.prepare import PrepareConfig, _read_labelled

    root_p, store = Path(root), Path(out) / ehr.STORE
    store.mkdir(parents=True)
    cfg = PrepareConfig(task=task, modalities=("ehr_codes",), max_events=max_events)
    _, _, subject_ids, pred_time, split = _read_labelled(root_p, cfg, BadInput(False))
    labelled = ehr.Labelled(subject_ids, pred_time, split == c.SPLITS.index(c.TRAIN_SPLIT))
    units = ehr.plan_units(root_p)
    folders = [store / shards.unit_key(root_p, f, labelled, max_events, False) for f in units]
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        with Client(cl) as client:
            shared = client.scatter(labelled, broadcast=True)
            futures = [
                client.submit(shards.build_unit, root_p, f, shared, max_events, False, d, pure=False)
                for f, d in zip(units, folders, strict=True)
            ]
            client.gather(futures)
            fitted = client.submit(vocab.fit_codes, folders, cfg.min_subjects).result()
    (Path(out) / "vocab.json").write_text(json.dumps(fitted))
    print(len(units))


def check_shards_identical(cache: Path, out: Path) -> dict:
    """dask-medweave's cache shards and vocabulary: byte for byte medweave's."""
    mine = sorted(p.relative_to(cache) for p in (cache / "ehr").rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(out) for p in (out / "ehr").rglob("*") if p.is_file())
    assert mine == theirs, "other cache shards"
    differ = [str(p) for p in mine if (cache / p).read_bytes() != (out / p).read_bytes()]
    assert not differ, f"files differ: {differ[:3]}"
    [prepared] = [p.parent for p in cache.glob("*/manifest.json")]
    assert json.loads((prepared / "vocab.json").read_text()) == json.loads((out / "vocab.json").read_text())
    return {"identical_files": len(mine), "vocabulary": "identical"}


def child_medweave(root: str, cache: str, task: str, workers: int, max_events: int) -> None:
    sys.path.insert(0, str(HERE.parent))
    from ehr_prepare_scale import child_medweave as run

    run(root, cache, task, workers, max_events)


# ------------------------------------------------------------------------------ the check
def check_against_medweave(root: Path, cache: Path, out: Path, min_subjects: int = 5) -> dict:
    """Compare a Dask output folder with medweave's prepared cache, shard by shard."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from medweave.data.ehr.vocab import fit_codes

    [prepared] = [p.parent for p in cache.glob("*/manifest.json")]
    subject_ids = np.load(prepared / "subjects.npz")["subject_id"]
    folders = [cache / p for p in json.loads((prepared / "ehr.json").read_text())]
    mine_total = []
    events = 0
    for folder in folders:
        info = json.loads((folder / "info.json").read_text())
        [name] = info["files"]
        got = pq.read_table(out / f"{Path(name).stem}.events.parquet").to_pandas()
        offsets = np.load(folder / "offsets.npy")
        sid = np.repeat(subject_ids[np.load(folder / "subject_row.npy")], np.diff(offsets))
        names = np.asarray(json.loads((folder / "codes.json").read_text()), dtype=object)
        code = names[np.load(folder / "code.npy")]
        assert np.array_equal(got.subject_id.to_numpy(), sid), f"{name}: subjects or event counts differ"
        assert np.array_equal(got.code.astype(str).to_numpy(), code.astype(str)), f"{name}: codes differ"
        np.testing.assert_array_equal(got.value.to_numpy(), np.load(folder / "value.npy"), err_msg=name)
        np.testing.assert_array_equal(got.days.to_numpy(), np.load(folder / "days.npy"), err_msg=name)
        events += len(sid)
        mine_total.append(pd.DataFrame(np.load(folder / "counts.npy"), index=names, columns=COUNTS))
    medweave = pd.concat(mine_total).groupby(level=0).sum().sort_index()
    dask_counts = pd.read_parquet(out / "counts.parquet").sort_index()
    assert list(medweave.index) == list(dask_counts.index), "the codes counted differ"
    for col in COUNTS[:3]:
        assert np.array_equal(medweave[col].to_numpy(), dask_counts[col].to_numpy()), f"{col} differ"
    for col in COUNTS[3:]:
        np.testing.assert_allclose(dask_counts[col], medweave[col], rtol=1e-9, err_msg=col)
    vocab = json.loads((prepared / "vocab.json").read_text())
    assert vocab["codes"] == sorted(dask_counts.index[dask_counts.subjects >= min_subjects]), "vocabulary"
    assert vocab == fit_codes(folders, min_subjects)
    return {"shards": len(folders), "events_compared": int(events), "codes_compared": len(medweave)}


# ------------------------------------------------------------------------------------ main
CHILDREN = {
    "medweave": child_medweave,
    "dask-local": child_dask_local,
    "dask-slurm": child_dask_slurm,
    "dask-medweave": child_dask_medweave,
}


def run_cohort(root: Path, args, work: Path) -> dict:
    import pyarrow.parquet as pq

    events = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted((root / "data").rglob("*.parquet")))
    subjects = pq.read_metadata(root / "metadata/subject_splits.parquet").num_rows
    result = {"cohort": root.name, "subjects": subjects, "events": events, "workers": args.workers}
    py = ["nice", "-n", str(args.nice), sys.executable, str(HERE), "--child"]
    common = [args.task, str(args.workers), str(args.max_events)]
    cache = work / f"{root.name}-cache"
    for engine in args.engines:
        target = cache if engine == "medweave" else work / f"{root.name}-{engine}"
        logs = work / f"{root.name}-{engine}-logs"
        target.mkdir(parents=True)
        logs.mkdir()
        cmd = [*py, engine, str(root), str(target), *common]
        try:
            run = monitored(cmd, logs, outside=engine == "dask-slurm")
        except RuntimeError as err:  # recorded: the other engines' figures still count
            result[engine] = f"failed: {str(err)[-800:]}"
            print(json.dumps({engine: result[engine]}), file=sys.stderr, flush=True)
            continue
        result[engine] = {k: v for k, v in run.items() if k != "stdout"}
        result[engine]["us_per_event"] = round(run["wall_s"] / events * 1e6, 3)
        if engine == "dask-slurm":
            nodes = [line for line in (logs / "stderr").read_text().splitlines() if "Slurm nodes" in line]
            result[engine]["workers_on"] = nodes[-1].split("nodes ", 1)[1] if nodes else None
        if engine != "medweave" and "medweave" in args.engines and args.check:
            if engine == "dask-medweave":
                agrees = check_shards_identical(cache, target)
            else:
                agrees = check_against_medweave(root, cache, target)
            result[engine]["agrees_with_medweave"] = agrees
        print(json.dumps({engine: result[engine]}), file=sys.stderr, flush=True)
        if engine != "medweave":
            shutil.rmtree(target)
    shutil.rmtree(cache, ignore_errors=True)
    return result


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        return CHILDREN[kind](rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, action="append", required=True)
    parser.add_argument("--task", default="cvd_onset_1y")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-events", type=int, default=256)
    parser.add_argument("--engines", nargs="+", default=list(CHILDREN), choices=list(CHILDREN))
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the comparison")
    parser.add_argument("--nice", type=int, default=5, help="the engines run under nice -n this")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="append the JSON lines here")
    args = parser.parse_args()
    if args.engines[0] != "medweave" and "medweave" in args.engines:
        parser.error("--engines: medweave first (the others are checked against its cache)")
    work = Path(tempfile.mkdtemp(prefix="ehr-dask-", dir=args.work))
    try:
        for root in args.cohort:
            result = {
                "benchmark": "ehr_prepare_dask",
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.node()} {os.cpu_count()} cores",
                "load_average": [round(x, 2) for x in os.getloadavg()],
                **run_cohort(root.resolve(), args, work),
            }
            result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(result), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(result) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

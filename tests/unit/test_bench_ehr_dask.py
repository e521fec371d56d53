"""benchmarks/ehr_prepare_dask.py does medweave's EHR preparation work: on a cohort of four shards
its Dask graph (run here on Dask's in-process scheduler) gives the events and counts of
medweave's cache, and its check catches an output that differs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.data.prepare import PrepareConfig, prepare

pytestmark = pytest.mark.slow  # imports Dask and pandas, prepares a cohort twice
MAX_EVENTS = 16


def load_bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "ehr_prepare_dask.py"
    spec = importlib.util.spec_from_file_location("ehr_prepare_dask", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def four_shards(tiny_cohort, tmp_path_factory):
    copy = shutil.copytree(tiny_cohort, tmp_path_factory.mktemp("four") / "cohort")
    (single,) = (copy / c.EVENTS_DIR).glob("*.parquet")
    table = pq.read_table(single)
    single.unlink()
    shard_of = table.column("subject_id").to_numpy() % 4
    for k in range(4):
        pq.write_table(table.filter(shard_of == k), copy / c.EVENTS_DIR / f"{k}.parquet")
    return copy


def test_dask_graph_does_medweaves_work_and_the_check_catches_a_difference(four_shards, tmp_path):
    bench = load_bench()
    cfg = PrepareConfig(task="cvd_onset_1y", modalities=("ehr_codes",), max_events=MAX_EVENTS)
    prepare(four_shards, tmp_path / "cache", cfg)
    out = tmp_path / "dask"
    out.mkdir()
    assert bench.run_dask(None, four_shards, out, "cvd_onset_1y", MAX_EVENTS) == 4
    agreed = bench.check_against_medweave(four_shards, tmp_path / "cache", out)
    assert agreed["shards"] == 4 and agreed["events_compared"] > 120 and agreed["codes_compared"] > 10

    # one subject's oldest kept event dropped: the check must notice
    shard = out / "2.events.parquet"
    events = pq.read_table(shard)
    pq.write_table(events.slice(1), shard)
    with pytest.raises(AssertionError, match="subjects or event counts differ"):
        bench.check_against_medweave(four_shards, tmp_path / "cache", out)
    # the same events, one of them a day earlier
    days = events.column("days").to_numpy().copy()
    days[np.flatnonzero(np.isfinite(days))[len(days) // 2]] += 1  # a timed event
    pq.write_table(events.set_column(3, "days", pa.array(days)), shard)
    with pytest.raises(AssertionError, match="2.parquet"):
        bench.check_against_medweave(four_shards, tmp_path / "cache", out)

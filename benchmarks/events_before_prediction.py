"""How many labelled subjects have more code events before prediction time than the task cache
keeps (``data.max_events``): before cache shard format 2 their birth event, the only carrier of
age, was truncated away.

    python benchmarks/events_before_prediction.py /work/data/r10k --task cvd_onset_1y --max-events 128

Reads the cohort's events whole (pandas): for sandboxes up to a few million events.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from medweave.data import contract as c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--task", default="cvd_onset_1y")
    parser.add_argument("--max-events", type=int, default=128)
    args = parser.parse_args()
    labels = pq.read_table(args.root / c.LABELS_DIR / f"{args.task}.parquet").to_pandas()
    columns = ["subject_id", "time", "code"]
    files = sorted((args.root / c.EVENTS_DIR).glob("*.parquet"))
    events = pd.concat(pq.read_table(f, columns=columns).to_pandas() for f in files)
    events = events[~events.code.str.startswith(c.NOTE_PREFIX)].merge(
        labels[["subject_id", "prediction_time"]], on="subject_id"
    )
    kept = events[events.time.isna() | (events.time < events.prediction_time)]  # what the cache reads
    n = kept.groupby("subject_id").size()
    over = (n > args.max_events).mean()
    print(
        f"{args.root} ({args.task}): {len(n)} labelled subjects with events; median {int(n.median())} "
        f"events before prediction; more than max_events={args.max_events}: {over:.3f}"
    )


if __name__ == "__main__":
    main()

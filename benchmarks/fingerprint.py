"""What identifying a cohort costs at launch: the quick fingerprint (stat calls) against hashing
every byte (data.fingerprint=full), on one cohort folder, each timed --repeats times (the lowest).

    python benchmarks/fingerprint.py --root data/sandbox

The full hash reads every byte, so it grows with the cohort's size (and runs from disk, not the
page cache, on a cohort larger than memory); the quick one grows with the number of files.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from medweave.data.fingerprint import SKIP, quick_fingerprint
from medweave.folders import content_hash


def lowest(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    files = [p for p in args.root.rglob("*") if p.is_file()]
    quick = lowest(lambda: quick_fingerprint(args.root), args.repeats)
    full = lowest(lambda: content_hash(args.root, skip=SKIP), args.repeats)
    print(
        json.dumps(
            {
                "benchmark": "fingerprint",
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "files": len(files),
                "bytes": sum(p.stat().st_size for p in files),
                "quick_s": round(quick, 4),
                "full_s": round(full, 4),
                "full_over_quick": round(full / quick, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

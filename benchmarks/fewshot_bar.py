"""Issue 15's bar on few-shot results: mean held-out AUROC per arm and k over the draws (a
markdown table), and whether pretrained-and-fine-tuned is >= scratch + 0.05 at every k <= 128,
>= GBM at every k <= 32 and, with all labels, not below scratch.

    .venv/bin/python benchmarks/fewshot_bar.py <run>/fewshot.csv [<all-labels run>/fewshot.csv ...]

The CSVs are medweave-fewshot's (one task per call); their rows are pooled.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict

import numpy as np

ARMS = ("zeroshot", "finetuned", "probe", "scratch", "gbm")


def means(paths: list[str]) -> tuple[str, dict]:
    """(task, {(arm, k): (mean AUROC, draws, share of neural runs that kept their start)})."""
    runs = defaultdict(list)
    tasks = set()
    for path in paths:
        with open(path) as f:
            for row in csv.DictReader(f):
                tasks.add(row["task"])
                runs[row["arm"], row["k"]].append(row)
    if len(tasks) != 1:
        raise SystemExit(f"expected one task's results, got {sorted(tasks)}")
    out = {}
    for key, rows in runs.items():
        kept = [r["best_epoch"] == "0" for r in rows if r.get("best_epoch", "") != ""]
        out[key] = (
            float(np.mean([float(r["auroc"]) for r in rows])),
            len(rows),
            np.mean(kept) if kept else None,
        )
    return tasks.pop(), out


def main(paths: list[str]) -> int:
    task, m = means(paths)
    ks = sorted({k for _, k in m}, key=lambda k: (k == "all", int(k) if k != "all" else 0))
    print(f"### {task}\n")
    print("| arm | " + " | ".join(f"k={k}" for k in ks) + " |")
    print("|---|" + "---|" * len(ks))
    for arm in ARMS:
        if any((arm, k) in m for k in ks):
            cells = [f"{m[arm, k][0]:.3f}" if (arm, k) in m else "" for k in ks]
            print(f"| {arm} | " + " | ".join(cells) + " |")
    starts = [
        f"k={k} {m['finetuned', k][2]:.0%}"
        for k in ks
        if m.get(("finetuned", k), (0, 0, None))[2] is not None
    ]
    print("\nfinetuned runs that kept the prior's start (best_epoch 0): " + ", ".join(starts))
    checks, ok = [], True
    for k in ks:
        if ("finetuned", k) not in m:
            continue
        ft = m["finetuned", k][0]
        if k != "all" and int(k) <= 128 and ("scratch", k) in m:
            passed = ft >= m["scratch", k][0] + 0.05
            checks.append(f"k={k}: finetuned - scratch = {ft - m['scratch', k][0]:+.3f} (>= 0.05: {passed})")
            ok &= passed
        if k != "all" and int(k) <= 32 and ("gbm", k) in m:
            passed = ft >= m["gbm", k][0]
            checks.append(f"k={k}: finetuned - gbm = {ft - m['gbm', k][0]:+.3f} (>= 0: {passed})")
            ok &= passed
        if k == "all" and ("scratch", k) in m:
            passed = ft >= m["scratch", k][0]
            checks.append(f"all: finetuned - scratch = {ft - m['scratch', k][0]:+.3f} (>= 0: {passed})")
            ok &= passed
    print("\n" + "\n".join(f"- {c}" for c in checks))
    print(f"\n{task}: the bar is {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

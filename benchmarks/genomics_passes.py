"""Old against new PCA and PGS passes on one PLINK 2 set, side by side in one run (CPU seconds).

    python benchmarks/genomics_passes.py --pgen PATH.pgen --score SCORE.txt --old-pca OLD.py --old-pgs OLD.py

``--old-*``: the modules before the rework (``git show <commit>:src/medweave/data/genomics/pca.py``);
the two sides alternate for ``--rounds`` rounds. The PCs of the two agree (|correlation| per PC
printed for PC1-3, the population components).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np


def load(path: Path, name: str):
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pgen", type=Path, required=True)
    parser.add_argument("--score", type=Path, required=True)
    parser.add_argument("--old-pca", type=Path, required=True)
    parser.add_argument("--old-pgs", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from medweave.data.genomics import pca, pgs
    from medweave.data.genomics.genotypes import Genotypes
    from medweave.data.genomics.options import GenomicsOptions
    from medweave.data.readers import plink

    old = {"pca": load(args.old_pca, "old_pca"), "pgs": load(args.old_pgs, "old_pgs")}
    new = {"pca": pca, "pgs": pgs}
    reader = plink.PgenReader(args.pgen)
    n = len(reader.samples)
    g = Genotypes([reader], [np.arange(n)], np.arange(n))
    train = np.random.default_rng(1).random(n) < 0.7
    opts = GenomicsOptions.from_dict({"pcs": 20, "pgs_ambiguous": "keep"})
    times: dict = {"old": {"pca": [], "pgs": []}, "new": {"pca": [], "pgs": []}}
    pcs = {}
    for _ in range(args.rounds):
        for side, mods in (("old", old), ("new", new)):
            c = time.process_time()
            pcs[side] = mods["pca"].fit_project(g, train, opts, {})
            times[side]["pca"].append(time.process_time() - c)
            c = time.process_time()
            mods["pgs"].fit_scores(g, [args.score], train, opts, "GRCh38", {})
            times[side]["pgs"].append(time.process_time() - c)
    elements = n * len(reader.variants)
    row = {
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "subjects": n,
        "variants": len(reader.variants),
        **{f"{s}_{k}_cpu_s": [round(x, 2) for x in v] for s in times for k, v in times[s].items()},
        "pca_old_over_new": round(min(times["old"]["pca"]) / min(times["new"]["pca"]), 2),
        "pgs_old_over_new": round(min(times["old"]["pgs"]) / min(times["new"]["pgs"]), 2),
        "new_pca_ns_per_genotype": round(min(times["new"]["pca"]) / elements * 1e9, 2),
        "pc1_3_corr": [
            round(abs(float(np.corrcoef(pcs["old"][:, j], pcs["new"][:, j])[0, 1])), 5) for j in range(3)
        ],
    }
    print(json.dumps(row))
    out = (
        Path(__file__).parent
        / "results"
        / f"{time.strftime('%Y-%m-%dT%H-%M-%S', time.gmtime())}-genomics_passes.jsonl"
    )
    out.write_text(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

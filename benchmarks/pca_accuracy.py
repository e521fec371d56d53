"""How many power iterations the randomized PCA needs: its PCs against numpy's exact SVD.

    python benchmarks/pca_accuracy.py                      # 3,000 genomes x 6,000 variants
    python benchmarks/pca_accuracy.py --subjects 2000 --variants 4000

Genomes from the registry sandbox's generator (sandbox/registry_genomes.py: four populations,
founder mosaics, so relatedness and LD as well as ancestry), written as one PLINK 2 set and fitted
by genomics/pca.py (20 PCs, 70 % train) for each setting of power iterations and oversampling.
The reference is the exact SVD of the same standardised train matrix (float64), its components
projected onto every subject. Per setting: the |correlation| of each PC with the exact one (the
population PCs 1-3, the worst of 1-10 and of 1-20), the share of the exact top-20 variance that
the fitted loadings capture, and the passes over the genotypes. Prints a table and appends JSON
lines under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SETTINGS = [(0, 10), (1, 10), (1, 20), (2, 10), (2, 20), (3, 10), (6, 10)]


def genomes(n: int, m: int, seed: int) -> np.ndarray:
    from medweave.sandbox import genomics, registry_genomes

    cfg = SimpleNamespace(seed=seed, genome_chromosomes=2, n_subjects=n, genome_subjects=n)
    panel = genomics.make_panel(m, 0.8, seed)
    f = registry_genomes.founders(cfg, panel)
    rows = registry_genomes.genome_rows(cfg)
    codes = registry_genomes.genotype_codes(f, registry_genomes.subset_mosaic(cfg, f, rows))
    return codes(0, m, dosage=True).astype(np.int8)  # [variants, subjects]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=3000)
    parser.add_argument("--variants", type=int, default=6000)
    parser.add_argument("--pcs", type=int, default=20)
    args = parser.parse_args()
    from medweave.data.genomics import pca
    from medweave.data.genomics.genotypes import Genotypes
    from medweave.data.genomics.options import GenomicsOptions
    from medweave.data.readers import plink
    from medweave.data.readers.genotypes import VariantTable

    g = genomes(args.subjects, args.variants, seed=0)
    n, m, k = args.subjects, args.variants, args.pcs
    train = np.random.default_rng(1).random(n) < 0.7
    x = g.T.astype(np.float64)
    mean, sd = x[train].mean(0), x[train].std(0)
    keep = (sd > 1e-6) & (np.minimum(mean / 2, 1 - mean / 2) >= 0.01)
    z = (x[:, keep] - mean[keep]) / sd[keep]
    t = time.perf_counter()
    _u, s, vt = np.linalg.svd(z[train], full_matrices=False)
    exact_s = round(time.perf_counter() - t, 1)
    exact = z @ vt[:k].T
    exact /= exact[train].std(0)
    top = float(np.sum(s[:k] ** 2))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.pgen"
        table = VariantTable(
            np.full(m, "1"), np.arange(m) * 100 + 1000, np.array([f"v{i}" for i in range(m)]),
            np.full(m, "A"), np.full(m, "G"),
        )  # fmt: skip
        plink.write_pgen(path, [str(i) for i in range(n)], table, [g])
        reader = plink.PgenReader(path)
        genos = Genotypes([reader], [np.arange(n)], np.arange(n))
        for q, over in SETTINGS:
            opts = GenomicsOptions.from_dict({"pcs": k, "pca_power_iterations": q, "pca_oversample": over})
            vocab: dict = {}
            got = pca.fit_project(genos, train, opts, vocab)
            corr = [abs(np.corrcoef(got[:, j], exact[:, j])[0, 1]) for j in range(k)]
            loadings = pca.unpack(vocab["pca"]["loadings"], (int(keep.sum()), k)).astype(np.float64)
            captured = float(np.sum((z[train] @ loadings) ** 2)) / top
            rows.append(
                {
                    "power_iterations": q,
                    "oversample": over,
                    "passes": q + 2,
                    "pc1_3_min_corr": round(min(corr[:3]), 5),
                    "pc1_10_min_corr": round(min(corr[:10]), 4),
                    "pc1_20_min_corr": round(min(corr[:k]), 4),
                    "variance_captured": round(captured, 5),
                }
            )
        reader.close()
    stamp = datetime.now(timezone.utc)
    head = {"date": f"{stamp:%Y-%m-%d %H:%M}", "subjects": n, "variants": m, "used": int(keep.sum())}
    head |= {
        "exact_svd_s": exact_s,
        "eigenvalues_1_5_21": [round(float(v), 1) for v in (s**2 / (train.sum() - 1))[[0, 4, 20]]],
    }
    print(json.dumps(head))
    columns = ["power iterations", "oversample", "passes", "PC1-3 min corr", "PC1-10 min corr"]
    columns += ["PC1-20 min corr", "top-20 variance captured"]
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")
    out = Path(__file__).parent / "results" / f"{stamp:%Y-%m-%dT%H-%M-%S}-pca_accuracy.jsonl"
    out.parent.mkdir(exist_ok=True)
    out.write_text("".join(json.dumps(head | r) + "\n" for r in rows))


if __name__ == "__main__":
    main()

"""The pcs source: principal components by an out-of-core randomized PCA over variant blocks.

Halko, Martinsson & Tropp (2011), Algorithm 4.4 (randomized range finder with power iterations),
on X = train genomes x variants, each variant standardised with its train mean and SD (a missing
call is 0, the mean). X is never formed: every product streams the variant blocks once.

    pass 1        Y = X Omega                      (Omega: variants x (k + oversample), Gaussian)
    passes 2..q+1 Y = X (X^T Q),   Q = qr(Y)       (power iterations sharpen the spectrum)
    last pass     B = Q^T X, and C = X_all B^T     (X_all: every labelled subject, train stats)
    SVD           B = U_b S V^T;  loadings V = B^T U_b / S;  PCs of anyone = x V = C U_b / S

So only train genomes fit the components and every subject is projected in the same last pass.
Nor is a block standardised or put in subject order: each is used as decoded, variants x samples
in file order, with G the raw dosages and m, s the train means and SDs,

    X Q   = (G Q_s - m (1^T Q_s)) / s          Q_s: Q's rows per sample (0 off train)
    X^T Z = G^T (Z / s) - (m / s)^T Z          scattered back to the samples' subjects

so a pass costs one decode into a reused float32 buffer and two BLAS products (about 5 ns per
genotype on this machine, against 15 ns gathering train columns and standardising a copy).
Memory: one block plus Y, Q (subjects x 30) and B (30 x variants used). Variants: train MAF >=
pca_min_maf, thinned evenly to pca_max_variants (a cheap stand-in for LD pruning). The loadings,
means and SDs travel in the vocabulary (packed), so evaluation projects a new cohort the same way.
"""

from __future__ import annotations

import base64
import logging
import zlib

import numpy as np
from threadpoolctl import threadpool_limits  # scikit-learn's dependency

from medweave.data.genomics.genotypes import Genotypes
from medweave.data.readers.genotypes import budget_blocks
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)


def pack(a: np.ndarray) -> str:
    """float32 array -> compact text for the JSON vocabulary."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(a, np.float32).tobytes(), 1)).decode()


def unpack(text: str, shape=None) -> np.ndarray:
    a = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.float32)
    return a.reshape(shape) if shape is not None else a


class _Side:
    """One file set seen from the subjects: which subject each sample is, which samples are train."""

    def __init__(self, g: Genotypes, i: int, train: np.ndarray):
        self.reader, rows = g.readers[i], g.rows[i]
        self.known = np.flatnonzero(rows >= 0)  # samples that are labelled subjects
        self.rows = rows[self.known]  # their subject rows
        self.train = np.zeros(len(rows), np.float32)
        self.train[self.known] = train[self.rows]

    def blocks(self, select):
        """(variant indices, float32 [variants, samples] in file order, missing mask or None)."""
        for index, block in budget_blocks(self.reader, select):
            ok = block.min(initial=0.0) >= 0  # nan (and PLINK's negative codes) fail: one cheap pass
            yield index, block, None if ok else ~(block >= 0)

    def to_subjects(self, per_sample: np.ndarray, out: np.ndarray) -> None:
        out[self.rows] += per_sample[self.known]

    def from_subjects(self, per_subject: np.ndarray) -> np.ndarray:
        out = np.zeros((len(self.train), per_subject.shape[1]), np.float32)
        out[self.known] = per_subject[self.rows]
        return out


def _fill(block: np.ndarray, missing: np.ndarray | None, mean: np.ndarray) -> None:
    """A missing call becomes its variant's train mean (0 once standardised)."""
    if missing is not None:
        np.copyto(block, np.broadcast_to(mean[:, None], block.shape).astype(np.float32), where=missing)


def _sample_stats(block, missing, train_w) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per variant over train samples: calls, mean and SD, as matrix-vector products (no gather)."""
    if missing is not None:
        block[missing] = 0.0
        n = (~missing).astype(np.float32) @ train_w
    else:
        n = np.full(len(block), train_w.sum(), np.float64)
    total = (block @ train_w).astype(np.float64)
    squares = np.empty(len(block), np.float64)
    for r0 in range(0, len(block), 32):  # squares a slice at a time: a small temporary, in cache
        squares[r0 : r0 + 32] = np.square(block[r0 : r0 + 32]) @ train_w
    mean = np.where(n > 0, total / np.maximum(n, 1), 0.0)
    sd = np.sqrt(np.maximum(squares / np.maximum(n, 1) - mean**2, 0.0))
    return n, mean, sd


def _products(block, mean, sd, q_samples, q_sum):
    """Z = X Q (variants x w) and X^T Z (samples x w) of the standardised block, never formed:
    X = (G - mean) / sd, so X Q = (G Q - mean (1^T Q)) / sd and X^T Z = G^T (Z / sd) - (mean / sd)^T Z.
    """
    z = block @ q_samples
    z -= np.outer(mean, q_sum).astype(np.float32)
    z /= sd[:, None]
    zs = z / sd[:, None]
    back = block.T @ zs
    back -= (mean.astype(np.float32) @ zs)[None, :]
    return z, back


def fit_project(g: Genotypes, train: np.ndarray, opts, vocab: dict) -> np.ndarray:
    """Fit the PCA on the train rows, put the model in ``vocab``, return float32 [subjects, pcs].

    Every pass works on the file's own sample order and weights (train mask, Q's rows per sample),
    so no block is ever gathered, reordered or standardised in memory: one decode into float32
    and two BLAS products per block.
    """
    k, width = opts.pcs, opts.pcs + opts.pca_oversample
    total = sum(len(r.variants) for r in g.readers)
    stride = max(1, -(-total // opts.pca_max_variants))
    rng = np.random.default_rng([opts.seed, 17])
    train_rows = np.flatnonzero(train)
    sides = [_Side(g, i, train) for i in range(len(g.readers))]
    # Pass 1: per-variant train statistics, the variants kept, and Y = X Omega.
    chosen, means, sds = [], [], []
    y = np.zeros((g.n_subjects, width), np.float64)
    offset = 0
    for side in sides:
        r = side.reader
        candidates = np.arange((-offset) % stride, len(r.variants), stride)
        offset += len(r.variants)
        keep_i, mean_i, sd_i = [], [], []
        n_train = side.train.sum()
        for index, block, missing in side.blocks(candidates):
            n, mean, sd = _sample_stats(block, missing, side.train)
            maf = np.minimum(mean / 2.0, 1.0 - mean / 2.0)
            ok = (n > 0) & (maf >= opts.pca_min_maf) & (sd > 1e-6) & (n >= opts.min_call_rate * n_train)
            if not ok.any():
                continue
            m, s = mean[ok].astype(np.float32), sd[ok].astype(np.float32)
            sub = block[ok] if not ok.all() else block
            _fill(sub, None if missing is None else missing[ok], m)
            omega = rng.standard_normal((len(m), width), dtype=np.float32) / s[:, None]
            part = sub.T @ omega
            part -= (m @ omega)[None, :]
            side.to_subjects(part, y)
            keep_i.append(index[ok])
            mean_i.append(m)
            sd_i.append(s)
        chosen.append(np.concatenate(keep_i) if keep_i else np.array([], np.int64))
        means.append(np.concatenate(mean_i) if mean_i else np.array([], np.float32))
        sds.append(np.concatenate(sd_i) if sd_i else np.array([], np.float32))
    used = sum(len(c) for c in chosen)
    if used < k or len(train_rows) < k:
        raise MedweaveError(
            f"{g.readers[0].path}: {used} variants pass pca_min_maf={opts.pca_min_maf} on "
            f"{len(train_rows)} train genomes; data.genomics.pcs={k} needs at least as many of both"
        )
    # Power iterations: Y = X X^T Q; then the last pass: B = Q^T X on train, C = X_all B^T.
    b_parts: list[np.ndarray] = []
    for step in range(opts.pca_power_iterations + 1):
        last = step == opts.pca_power_iterations
        q = np.zeros((g.n_subjects, width), np.float32)
        with threadpool_limits(1):  # a tall, thin QR: BLAS threads only wait on each other (8x slower)
            q[train_rows] = np.linalg.qr(y[train_rows])[0]
        y = np.zeros((g.n_subjects, width), np.float64)
        for i, side in enumerate(sides):
            q_samples = side.from_subjects(q)
            q_sum = q_samples.sum(axis=0, dtype=np.float64)
            at = 0
            for _index, block, missing in side.blocks(chosen[i]):
                m, s = means[i][at : at + len(block)], sds[i][at : at + len(block)]
                at += len(block)
                _fill(block, missing, m)
                z, back = _products(block, m, s, q_samples, q_sum)
                side.to_subjects(back, y)
                if last:
                    b_parts.append(z.T.astype(np.float64))  # B = Q^T X_train: Q is 0 off train
    c = y  # the last pass's X_all^T B^T, every subject
    b = np.concatenate(b_parts, axis=1)  # [width, variants used]: 30 x 200,000 at most
    with threadpool_limits(1):
        u_b, s, vt = np.linalg.svd(b, full_matrices=False)
    u_b, s = u_b[:, :k], s[:k]
    pcs = c @ u_b / s
    scale = pcs[train_rows].std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    loadings = (vt[:k].T).astype(np.float32)  # [variants used, k]
    keys = [key for i, r in enumerate(g.readers) for key in r.variants.keys(chosen[i])]
    vocab["pca"] = {
        "k": k,
        "variants": keys,
        "mean": pack(np.concatenate(means)),
        "sd": pack(np.concatenate(sds)),
        "loadings": pack(loadings),
        "scale": (scale).round(8).tolist(),
        "explained_variance": (s**2 / max(len(train_rows) - 1, 1)).round(6).tolist(),
    }
    log.info(
        "PCA on %d train genomes x %d variants (of %d): %d components, power iterations %d",
        len(train_rows),
        used,
        total,
        k,
        opts.pca_power_iterations,
    )
    return (pcs / scale).astype(np.float32)


def project(g: Genotypes, model: dict) -> np.ndarray:
    """Every subject's PCs from a fitted model; a variant this cohort lacks contributes 0 (the mean)."""
    k = model["k"]
    mean, sd = unpack(model["mean"]), unpack(model["sd"])
    loadings = unpack(model["loadings"], (len(mean), k))
    out = np.zeros((g.n_subjects, k), np.float64)
    found = 0
    for i, (index, pos) in enumerate(g.locate(model["variants"])):
        order = np.argsort(index)
        index, pos = index[order], pos[order]
        found += len(index)
        side, at = _Side(g, i, np.zeros(g.n_subjects, bool)), 0
        for _ix, block, missing in side.blocks(index):
            p = pos[at : at + len(block)]
            at += len(block)
            m, s = mean[p], sd[p]
            _fill(block, missing, m)
            weights = loadings[p] / s[:, None]
            part = block.T @ weights  # X^T L = G^T (L / sd) - (mean / sd)^T L: X never formed
            part -= (m @ weights)[None, :]
            side.to_subjects(part, out)
    if found < len(mean):
        log.warning("PCA projection: %d of the model's %d variants are in this cohort", found, len(mean))
    return (out / np.asarray(model["scale"])).astype(np.float32)

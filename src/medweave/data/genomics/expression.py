"""The expression and external-embeddings sources: tables per subject, normalised with train statistics."""

from __future__ import annotations

import numpy as np

from medweave.data import contract as c
from medweave.data.genomics.options import ARRAYS
from medweave.data.genomics.samples import cohort_ids, rows_of
from medweave.data.readers import embeddings as emb_reader
from medweave.data.readers import expression as expr_reader
from medweave.errors import MedweaveError


def _transform(values: np.ndarray, steps, rows_fit, mean_key, sd_key, vocab, path) -> np.ndarray:
    """Apply cpm / log1p / zscore in order; zscore uses train statistics kept in ``vocab``."""
    for step in steps:
        if step == "cpm":
            total = np.nansum(values, axis=1, keepdims=True)
            values = values / np.where(total > 0, total, 1.0) * 1e6
        elif step == "log1p":
            values = np.log1p(values)
        elif step == "zscore":
            if mean_key not in vocab:
                fit = values[rows_fit]
                if not len(fit):
                    raise MedweaveError(
                        f"{path}: no train-split subject has a row; zscore is fitted on train"
                    )
                with np.errstate(all="ignore"):
                    mean = np.nan_to_num(np.nanmean(fit, axis=0), nan=0.0)
                    sd = np.nan_to_num(np.nanstd(fit, axis=0), nan=1.0)
                vocab[mean_key] = mean.round(6).tolist()
                vocab[sd_key] = np.where(sd > 1e-6, sd, 1.0).round(6).tolist()
            values = (values - np.asarray(vocab[mean_key], np.float32)) / np.asarray(
                vocab[sd_key], np.float32
            )
    return values.astype(np.float32)


def prepare_expression(root, train_ids, vocab, out, opts, names, bad, fitting) -> np.ndarray:
    """Normalised expression [subjects with a row, genes] into ``out``; returns those subjects."""
    path = c.require_file(root, c.EXPRESSION, "data.genomics.sources: expression")
    expr = expr_reader.read_expression(path, names.subject, opts.expression_orientation, bad)
    if fitting:
        vocab["genes"] = list(expr.genes)
        vocab["expression_transform"] = list(opts.expression_transform)
    steps = list(vocab["expression_transform"])
    values = expr.values
    if {"cpm", "log1p"} & set(steps):
        negative = (values < 0).any(axis=1)
        rows = np.flatnonzero(negative)
        if len(rows):
            bad.fault(
                path,
                f"subject {rows[0]} (in file order)",
                f"negative expression value; expected counts >= 0 for {steps}",
                count=len(rows),
            )
            expr = expr_reader.Expression(expr.subjects[~negative], expr.genes, values[~negative])
            values = expr.values
    if steps[:1] == ["cpm"]:  # the library size counts every gene of the file: before the alignment
        total = np.nansum(values, axis=1, keepdims=True)
        values = values / np.where(total > 0, total, 1.0) * 1e6
        steps = steps[1:]
    col = {g: j for j, g in enumerate(expr.genes)}
    take = np.array([col.get(g, -1) for g in vocab["genes"]], np.int64)
    aligned = np.where(take >= 0, values[:, np.maximum(take, 0)], np.nan).reshape(len(values), len(take))
    subject_ids = np.unique(expr.subjects[expr.subjects >= 0])
    train = np.isin(subject_ids, train_ids)
    row, known = rows_of(subject_ids, expr.subjects)
    fit_rows = np.flatnonzero(known & train[row])
    z = _transform(aligned, steps, fit_rows, "gene_mean", "gene_sd", vocab, path)
    full = np.zeros((len(subject_ids), len(take)), np.float32)
    full[row[known]] = np.nan_to_num(z[known], nan=0.0)
    np.save(out / f"{ARRAYS['expression']}.npy", full)
    return subject_ids


def prepare_embeddings(root, train_ids, vocab, out, opts, bad, fitting) -> np.ndarray:
    """z-scored external embeddings [cohort subjects with one, dim] into ``out``; returns those subjects."""
    path = c.require_file(root, c.EMBEDDINGS, "data.genomics.sources: embeddings")
    emb = emb_reader.read_embeddings(path, bad)
    if fitting:
        vocab["embedding_provenance"] = emb.provenance
        vocab["embedding_dim"] = int(emb.values.shape[1])
        vocab["embeddings_transform"] = list(opts.embeddings_transform)
    elif emb.provenance != vocab["embedding_provenance"] or emb.values.shape[1] != vocab["embedding_dim"]:
        raise MedweaveError(
            f"{path}: embeddings from {emb.provenance} ({emb.values.shape[1]} values), but the model was "
            f"trained on {vocab['embedding_provenance']} ({vocab['embedding_dim']} values); "
            "expected the same model and version"
        )
    outside = ~np.isin(emb.subjects, list(cohort_ids(root)))
    subject_ids = np.unique(emb.subjects[~outside])
    train = np.isin(subject_ids, train_ids)
    row, known = rows_of(subject_ids, emb.subjects)
    if outside.any():
        rows = np.flatnonzero(outside)
        bad.fault(
            path,
            f"row {rows[0]}, field subject_id",
            f"matches no subject in {c.SUBJECT_SPLITS}",
            count=len(rows),
        )
        known &= ~outside
    fit_rows = np.flatnonzero(known & train[row])
    z = _transform(
        emb.values,
        vocab["embeddings_transform"],
        fit_rows,
        "embedding_mean",
        "embedding_sd",
        vocab,
        path,
    )
    full = np.zeros((len(subject_ids), vocab["embedding_dim"]), np.float32)
    full[row[known]] = z[known]
    np.save(out / f"{ARRAYS['embeddings']}.npy", full)
    return subject_ids

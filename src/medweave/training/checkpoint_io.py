"""Checkpoints written so that a kill or a node crash mid-save never corrupts the last good one."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, flushed to disk, then renamed over it.

    The rename is atomic on a POSIX file system, so readers see the old file or the new one and
    nothing in between; the fsyncs make that hold after a node crash too, not only a killed
    process (a rename can otherwise reach the disk before the data it names).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(partial, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def remove_partials(folder: str | os.PathLike) -> list[Path]:
    """Temporary files that a killed save left behind; returns what it removed."""
    leftovers = sorted(Path(folder).glob(".*.partial-*")) if Path(folder).is_dir() else []
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with ``atomic_save`` (local and shared file systems)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_save(checkpoint, path)

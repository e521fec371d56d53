"""medweave-prepare: build a cohort's prepared cache before training, on one machine or as a Slurm array.

    medweave-prepare data.root=<cohort> task=cvd_onset_1y data.prepare_workers=8
    bash slurm/prepare.sbatch data.root=<cohort> task=cvd_onset_1y     # Slurm array + final job

Takes medweave-train's overrides (data.*, task, paths.cache_dir) and prepares exactly the cache
that medweave-train with them would use. Inside a Slurm job array (SLURM_ARRAY_TASK_COUNT > 1)
each array task prepares only its share of the EHR shards (every n-th unit of data/ shards);
a run outside the array (the job that depends on it, or medweave-train itself) then finds every
shard done, reduces the vocabulary and writes the rest. Data only: no model, no tracking.
"""

from __future__ import annotations

import os


def slurm_part() -> tuple[int, int] | None:
    """(k, n) of this Slurm array task, or None outside an array."""
    count = int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1"))
    if count <= 1:
        return None
    first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    step = int(os.environ.get("SLURM_ARRAY_TASK_STEP", "1"))  # --array=0-10:2
    k = (int(os.environ["SLURM_ARRAY_TASK_ID"]) - first) // step
    if k >= count:
        from medweave.errors import MedweaveError

        raise MedweaveError(
            f"Slurm array task {os.environ['SLURM_ARRAY_TASK_ID']} is not one of {count} evenly spaced "
            "tasks: submit --array as a range (0-N or 0-N:step), not a list"
        )
    return k, count


def prepare(cfg) -> None:
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    part = slurm_part()
    if part:
        units = datamodule.prepare_part(part)
        print(f"prepared EHR part {part[0] + 1} of {part[1]} ({units} shard unit(s) in the cohort)")
        return
    datamodule.setup()
    print(f"prepared {datamodule.cohort.folder}")


def main() -> None:
    from medweave.cli.hydra_main import run

    run(prepare, "train", "medweave-prepare")


if __name__ == "__main__":
    main()

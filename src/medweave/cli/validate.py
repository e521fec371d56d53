"""medweave-validate: check a cohort against the contract; every problem, with file and row.

    medweave-validate data.root=data/sandbox
    medweave-validate data.root=<MEDS export> data.labels_dir=<labeller output>
    medweave-validate data.root=<cohort> task=cvd_survival       # its label file against its type
    medweave-validate data.root=<cohort> task.name=death_surv task.type=survival   # your own label
    medweave-validate data.root=<cohort> task=my_task.yaml   # ACES task file: its own labels (no labels/)

Exit status 0 when the cohort passes, 1 when anything is wrong, 2 for a bad command line.
"""

from __future__ import annotations

import sys


def validate(cfg) -> None:
    from medweave.data.validate import validate_cohort

    task = cfg.get("task")
    asked = {task.name: task.type} if task and task.get("name") and not task.get("aces") else {}
    aces_file = task.get("aces") if task else None
    report = validate_cohort(
        cfg.data.root,
        cfg.data.get("labels_dir"),
        tasks=asked,
        aces_task=aces_file,
        cache_dir=cfg.data.get("cache_dir"),
    )
    if task and task.get("aces"):
        from medweave.data import aces

        for warning in aces.absent_codes(aces.read_task_file(task.aces), aces.cohort_codes(report.root)):
            print(f"warning: {warning}")
    sizes = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    if report.ok:
        print(f"OK: {report.root} follows the cohort contract ({sizes})")
        return
    print(f"{report.root}: {len(report.problems)} problem(s) ({sizes})")
    for problem in report.problems:
        print(f"  {problem}")
    sys.exit(1)


def main() -> None:
    from medweave.cli.hydra_main import run

    run(validate, "validate", "medweave-validate")


if __name__ == "__main__":
    main()

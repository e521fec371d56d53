"""medweave-audit: measure what a model trained by medweave leaks about its training subjects.

    medweave-audit data.root=data/sandbox                                   # the train.yaml model
    medweave-audit experiment=quickstart data.root=data/sandbox audit.shadow_models=8
    medweave-audit debug=smoke data.root=data/sandbox audit.shadow_models=2  # seconds
    medweave-audit ... privacy=dp privacy.target_epsilon=4                   # where DP training exists

It takes every medweave-train override: the audited model is trained here, on a copy of the
cohort with canaries planted, and so are the shadow models (src/medweave/audit/run.py says who
is member, non-member and shadow). Writes <run dir>/audit/{audit.json, report.html, roc.png} and
logs audit/* metrics and the report to MLflow; no subject ID goes to either.
"""

from __future__ import annotations


def audit(cfg) -> float:
    from medweave.audit.run import check_audit_config, run_audit
    from medweave.cli.hydra_main import one_log_stream
    from medweave.cli.train import check_config
    from medweave.errors import MedweaveError

    problems = []
    for check in (check_config, check_audit_config):  # every fault of the config at once
        try:
            check(cfg)
        except MedweaveError as err:
            problems.append(str(err))
    if problems:
        raise MedweaveError("; ".join(problems))
    one_log_stream()
    report = run_audit(cfg)
    return report["attacks"]["lira_online"]["auroc"]["value"]


def main() -> None:
    from medweave.cli.hydra_main import run

    run(audit, "audit", "medweave-audit")


if __name__ == "__main__":
    main()

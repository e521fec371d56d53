"""Fixtures for the integration tests that need more than the shared ones in tests/conftest.py."""

from __future__ import annotations

import pytest

from tests.services import mlflow_server  # noqa: F401  (a team MLflow server on PostgreSQL, per session)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A started two-node Slurm cluster (nodes n1, n2, partition debug) for the whole session.

    Skips only when Slurm or munge is not installed (scripts/test-deps.sh installs them); a cluster
    that fails to come up is an error, not a skip.
    """
    from tests.slurm_cluster import LocalSlurm, missing_binaries

    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm/munge not installed ({', '.join(missing)} missing): run scripts/test-deps.sh")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()

"""Real services for the integration tests: the team MLflow server of scripts/mlflow-server.sh.

tests/integration/conftest.py makes it available to the integration tests; the server starts once per
session, because MLflow takes several seconds to come up.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "mlflow-server.sh"
INITDB = Path("/usr/lib/postgresql/15/bin/initdb")


@dataclass
class MlflowServer:
    uri: str
    artifacts: Path  # the shared artifact root clients write into
    home: Path

    def database_uri(self) -> str:
        """PostgreSQL behind the server, for tests that look at the tables themselves."""
        settings = dict(line.split("=", 1) for line in (self.home / "server.env").read_text().splitlines())
        secret = (self.home / "pg.secret").read_text().strip()
        return f"postgresql://mlflow:{secret}@127.0.0.1:{settings['PG_PORT']}/mlflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    # Fewer workers and no GenAI job runner: the same server, up in about half the time.
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="session")
def mlflow_server():
    """PostgreSQL + `mlflow server` on free ports, stopped at the end however the tests went.

    The home is a short folder under /tmp, not pytest's tmp_path: as root, PostgreSQL runs as an
    unprivileged user, who cannot enter pytest's 0700 base folder (and unix socket paths are short).
    """
    if not INITDB.exists():
        pytest.skip("PostgreSQL 15 is not installed: run scripts/test-deps.sh")
    home = Path(tempfile.mkdtemp(prefix="mw-mlflow-"))
    home.chmod(0o755)
    try:
        started = _script(
            "start", "--home", str(home), "--port", str(_free_port()), "--workers", "2", timeout=180
        )
        if started.returncode != 0:
            pytest.fail(f"mlflow-server.sh start failed:\n{started.stderr[-3000:]}", pytrace=False)
        yield MlflowServer(
            uri=started.stdout.strip().splitlines()[-1], artifacts=home / "artifacts", home=home
        )
    finally:
        stopped = _script("stop", "--home", str(home), timeout=90)
        assert stopped.returncode == 0, f"mlflow-server.sh stop failed, left {home}:\n{stopped.stderr}"
        shutil.rmtree(home, ignore_errors=True)

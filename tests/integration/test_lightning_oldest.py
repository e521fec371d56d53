"""Exact resume on the oldest Lightning that pyproject.toml allows; the rest of the suite runs the
newest. Resuming leans on Lightning's checkpoint layout (training/preemption.py), which a release
may change, so the floor in pyproject.toml is the oldest release this test passes on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def oldest_lightning() -> str:
    floor = re.search(r'"lightning>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert floor, "pyproject.toml names no lightning>= floor"
    return floor.group(1)


def test_exact_resume_on_the_oldest_supported_lightning(tmp_path):
    version = oldest_lightning()
    target = tmp_path / "lightning"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    subprocess.run([*pip, f"lightning=={version}"], check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    found = subprocess.run(
        [sys.executable, "-c", "import lightning; print(lightning.__version__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found == version
    test = "tests/integration/test_preemption.py::test_preempted_twice_and_resumed_equals_an_unbroken_run"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, f"exact resume fails on lightning {version}:\n{run.stdout[-3000:]}"

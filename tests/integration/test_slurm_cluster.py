"""The local Slurm cluster (tests/slurm_cluster.py) behaves like a real one: two nodes, signals, requeue."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TWO_NODES = """#!/bin/bash
#SBATCH --job-name=two-nodes
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
# Lightning takes MASTER_ADDR from the first node of the node list: it must resolve in the job
master=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
srun bash -c 'echo "TASK nodeid=$SLURM_NODEID procid=$SLURM_PROCID nodename=$SLURMD_NODENAME \\
hostname=$(hostname) ntasks_per_node=$SLURM_NTASKS_PER_NODE master=$0 \\
master_ip=$(getent hosts $0 | cut -d" " -f1)"' "$master"
"""

# The first run's srun task traps USR1 and requeues the job; the second run says so and completes.
REQUEUE = """#!/bin/bash
#SBATCH --job-name=requeue
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
restart=${SLURM_RESTART_COUNT:-0}
echo "RUN restart=$restart start=$(date +%s.%N) node=$SLURMD_NODENAME"
if [ "$restart" = 0 ]; then
  srun bash "$TASK"
  echo "SRUN_EXITED rc=$?"
  sleep 120  # the requeue ends this run; never complete on our own
else
  echo "RESTART=$restart"
  srun echo "SECOND_RUN_TASK procid=$SLURM_PROCID"
fi
"""

REQUEUE_TASK = """#!/bin/bash
on_usr1() {
  echo "GOT_USR1 at=$(date +%s.%N)"
  scontrol requeue "$SLURM_JOB_ID"
  echo "REQUEUED rc=$?"
  exit 0
}
trap on_usr1 USR1
echo "TASK_STARTED procid=$SLURM_PROCID"
while true; do sleep 0.1 & wait $!; done
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def _wait_for_line(path: Path, marker: str, timeout: float, cluster, job_id) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and marker in path.read_text():
            return
        time.sleep(0.1)
    content = path.read_text() if path.exists() else "<no output file>"
    pytest.fail(f"no {marker!r} in {path} after {timeout}s: {cluster.job_state(job_id)}\n{content}")


def test_two_node_job_runs_one_task_per_node(slurm, tmp_path):
    script = _write(tmp_path / "two_nodes.sh", TWO_NODES)
    out = tmp_path / "two_nodes.out"
    job = slurm.sbatch(script, f"--output={out}")
    info = slurm.wait(job, timeout=120)
    text = out.read_text() if out.exists() else "<no output file>"
    assert info["JobState"] == "COMPLETED", (info, text)
    assert info["ExitCode"] == "0:0"
    assert info["NodeList"] == "n[1-2]"

    tasks = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if line.startswith("TASK ")]
    assert len(tasks) == 2, text
    assert {t["nodename"] for t in tasks} == {"n1", "n2"}
    assert {t["procid"] for t in tasks} == {"0", "1"}
    assert {t["nodeid"] for t in tasks} == {"0", "1"}
    by_node = {t["nodename"]: t for t in tasks}
    assert by_node["n1"]["nodeid"] == "0" and by_node["n2"]["nodeid"] == "1"
    assert all(t["ntasks_per_node"] == "1" for t in tasks)
    assert all(t["master"] == "n1" and t["master_ip"] == "127.0.0.1" for t in tasks), text


def test_usr1_requeues_and_second_run_completes(slurm, tmp_path):
    script = _write(tmp_path / "requeue.sh", REQUEUE)
    task = _write(tmp_path / "requeue_task.sh", REQUEUE_TASK)
    out = tmp_path / "requeue.out"
    job = slurm.sbatch(script, f"--output={out}", env={"TASK": str(task)})

    slurm.wait(job, states={"RUNNING"}, timeout=60)
    _wait_for_line(out, "TASK_STARTED", 60, slurm, job)
    signalled = time.time()
    slurm.signal(job, "USR1")

    # the second run starting, seen from outside (the output file), then the final state
    _wait_for_line(out, "RUN restart=1", 180, slurm, job)
    seen = time.time()
    info = slurm.wait(job, timeout=120)
    text = out.read_text()
    assert info["JobState"] == "COMPLETED", (info, text)
    assert info["RestartCnt"] == info["Restarts"] == "1", info
    assert info["ExitCode"] == "0:0", info

    runs = re.findall(r"^RUN restart=(\d+) start=([\d.]+)", text, flags=re.M)
    assert [r for r, _ in runs] == ["0", "1"], text  # both runs in the one (appended) output file
    assert "GOT_USR1" in text, text
    assert "RESTART=1" in text and "SECOND_RUN_TASK procid=0" in text, text
    assert text.index("GOT_USR1") < text.index("RESTART=1")

    latency = float(runs[1][1]) - signalled
    print(
        f"\nrequeue latency: USR1 sent -> second run started {latency:.1f} s "
        f"(seen in the output file after {seen - signalled:.1f} s); cluster bring-up "
        f"{slurm.bringup_seconds:.1f} s"
    )
    assert 0 < latency < 120

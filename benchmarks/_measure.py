"""What a child process costs: wall time, CPU time and peak memory summed over its process tree.

The benchmarks that run medweave as a child (registry_sandbox.py, sandbox_scale.py,
ehr_prepare_scale.py) measure it here, the same way: the tree (the child and every process
below it, such as its workers) is sampled every ``interval`` seconds and the peak of the sum is
kept; CPU time is user + system of the child and the descendants it waited for; the 1-minute load
average at start and end says how busy the machine was. Output goes to files, never to pipes (a
full pipe would stall the child).
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

MB = 1 << 20


@dataclass
class Measured:
    returncode: int
    wall_s: float
    cpu_s: float  # user + system time of the child and its waited-for descendants
    peak_rss: int  # bytes: sum of RSS over the tree (shared pages once per process: overstates)
    peak_pss: int  # bytes: sum of PSS (shared pages split between processes); 0 unless asked
    load: tuple[float, float]  # 1-minute load average at start and at end
    stdout: str
    stderr: str

    def summary(self) -> dict:
        """The figures as a benchmark line records them."""
        out = {
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "peak_rss_mb": round(self.peak_rss / MB),
            "load_average": [round(x, 2) for x in self.load],
        }
        if self.peak_pss:
            out["peak_pss_mb"] = round(self.peak_pss / MB)
        return out


def tree_memory(proc: psutil.Process, pss: bool = False) -> tuple[int, int]:
    """(sum of RSS, sum of PSS or 0) over a process and its children, in bytes."""
    rss = total_pss = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            if pss:  # reads smaps: costlier, so only where asked
                info = p.memory_full_info()
                total_pss += getattr(info, "pss", info.rss)
            else:
                info = p.memory_info()
            rss += info.rss
        except psutil.Error:  # a worker that just ended
            continue
    return rss, total_pss


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    cmd: list[str], env: dict | None = None, interval: float = 0.1, pss: bool = False, log: Path | None = None
) -> Measured:
    """Run ``cmd`` to its end, sampling its tree's memory. stdout and stderr are kept in files
    (``log``.out/.err if given, else temporary ones) and returned as text."""
    folder = None if log else tempfile.TemporaryDirectory(prefix="measure-")
    base = Path(log) if log else Path(folder.name) / "child"
    out_path, err_path = base.with_name(base.name + ".out"), base.with_name(base.name + ".err")
    load_start = os.getloadavg()[0]
    cpu_start, start = _children_cpu(), time.perf_counter()
    try:
        with open(out_path, "w") as out, open(err_path, "w") as err:
            child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
            watched, peak_rss, peak_pss = psutil.Process(child.pid), 0, 0
            while child.poll() is None:
                rss, tree_pss = tree_memory(watched, pss)
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, tree_pss)
                time.sleep(interval)
        wall, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
        return Measured(
            child.returncode,
            wall,
            cpu,
            peak_rss,
            peak_pss,
            (load_start, os.getloadavg()[0]),
            out_path.read_text(),
            err_path.read_text(),
        )
    finally:
        if folder:
            folder.cleanup()

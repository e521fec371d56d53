"""A real two-node Slurm cluster on this machine, for the integration tests.

``LocalSlurm(folder)`` brings up its own munged (own key, socket, pid, log and seed in ``folder``: a
system munge is never touched), one slurmctld and two slurmd emulating the nodes ``n1`` and ``n2``
(Debian builds Slurm with multiple-slurmd support), all on free ports of their own and with every
state, spool, log and pid file inside ``folder``. Clients find the cluster through ``SLURM_CONF``:
pass ``cluster.env`` to ``subprocess``. ``/etc/slurm/slurm.conf`` is never written.

Node names must resolve inside jobs (Lightning takes MASTER_ADDR from the first node of
SLURM_NODELIST). Each slurmd runs in a private mount namespace in which ``/etc/hosts`` is a copy of
the real one plus ``127.0.0.1 n1 n2``, so jobs resolve n1 and n2 while the machine's ``/etc/hosts``
stays as it is. Where mount namespaces are not available the line is added to ``/etc/hosts``
itself and exactly that line removed again on ``stop()``.

``stop()`` stops exactly the daemons it started, by their pid files, and then kills whatever is
left of its jobs (found by the mount namespaces of its slurmd or by an environment marker).
"""

from __future__ import annotations

import os
import re
import shutil
import signal as _signal
import socket
import subprocess
import time
from pathlib import Path

NODES = ("n1", "n2")
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
    }
)
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo", "squeue", "srun")
HOSTS_LINE = "127.0.0.1 " + " ".join(NODES)
MARKER = "MEDWEAVE_LOCAL_SLURM"  # in the environment of our daemons and jobs: how stop() finds leftovers
_CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCANCEL_")


def missing_binaries() -> list[str]:
    """The Slurm and munge programs this cluster needs that are not on PATH (or in /usr/sbin)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in BINARIES if shutil.which(name, path=path) is None]


def _which(name: str) -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(f"{name} not found; scripts/test-deps.sh installs Slurm and munge")
    return found


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now on all interfaces (held together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie nobody has reaped yet is as good as gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def _wait_reaped(pids: set[int], timeout: float = 5.0) -> None:
    """Wait (a little) until ended processes are reaped too, so no zombie of ours shows up in ps.

    Daemons are not our children: init reaps them, here sometimes a second or two late.
    """
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                pending.discard(pid)
        time.sleep(0.05)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<{exc}>"


def parse_scontrol_oneliner(line: str) -> dict[str, str]:
    """``Key=Value Key=Value ...`` as printed by ``scontrol show ... -o``; values may contain ``=``."""
    return dict(re.findall(r"(?:^|\s)([A-Za-z][\w/:.\-]*)=(.*?)(?=\s+[A-Za-z][\w/:.\-]*=|\s*$)", line))


class SlurmError(RuntimeError):
    pass


class LocalSlurm:
    """A Slurm cluster with nodes n1 and n2 on this machine, everything kept under ``folder``."""

    def __init__(
        self,
        folder: str | os.PathLike,
        cpus_per_node: int = 2,
        real_memory_mb: int = 1000,
        start_timeout: float = 60.0,
        private_hosts: bool | None = None,
        cred_expire: int = 10,
    ):
        self.folder = Path(folder).resolve()
        self.cpus_per_node = cpus_per_node
        self.real_memory_mb = real_memory_mb
        self.start_timeout = start_timeout
        self.cred_expire = cred_expire
        self._private_hosts = private_hosts  # None: use a mount namespace when it works
        self.conf_path = self.folder / "etc" / "slurm.conf"
        self.munge_socket = self.folder / "munge" / "munge.socket.2"
        self.hosts_file = self.folder / "etc" / "hosts"
        self.ctld_port: int | None = None
        self.node_ports: dict[str, int] = {}
        self.bringup_seconds: float | None = None
        self._started: list[tuple[str, Path]] = []  # (name, pid file) of each daemon we started
        self._pids: dict[str, int] = {}
        self._namespaces: set[str] = set()
        self._ended: set[int] = set()  # pids stopped or killed by stop(), awaiting init's reaping
        self._added_hosts_line: str | None = None  # exactly what we appended to /etc/hosts, if anything
        self._marker = f"{self.folder}:{os.getpid()}:{time.time_ns()}"
        if len(str(self.munge_socket)) > 100:
            raise ValueError(f"folder path too long for unix sockets: {self.folder}")

    # ------------------------------------------------------------------ environment and clients
    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm clients (sbatch, scontrol, srun...) talking to this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_ENV_PREFIXES)}
        env["SLURM_CONF"] = str(self.conf_path)
        env[MARKER] = self._marker
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/sbin"])
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster; raise with its output on failure."""
        proc = subprocess.run(
            list(cmd), env=kw.pop("env", self.env), capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and proc.returncode != 0:
            raise SlurmError(
                f"{' '.join(cmd)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalSlurm:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalSlurm:
        missing = missing_binaries()
        if missing:
            raise FileNotFoundError(f"missing {', '.join(missing)}; scripts/test-deps.sh installs them")
        if self._started:
            raise SlurmError("cluster already started")
        t0 = time.monotonic()
        try:
            self._make_dirs()
            self._start_munged()
            self.ctld_port, *node_ports = _free_ports(1 + len(NODES))
            self.node_ports = dict(zip(NODES, node_ports, strict=True))
            self._write_conf()
            self._setup_hosts()
            self._start_daemon("slurmctld", [_which("slurmctld"), "-f", str(self.conf_path)])
            for node in NODES:
                cmd = [_which("slurmd"), "-f", str(self.conf_path), "-N", node]
                if self._private_hosts:
                    cmd = [
                        _which("unshare"),
                        "--mount",
                        "--propagation",
                        "private",
                        "sh",
                        "-c",
                        'mount --bind "$0" /etc/hosts && exec "$@"',
                        str(self.hosts_file),
                        *cmd,
                    ]
                self._start_daemon(f"slurmd-{node}", cmd)
                ns = self._mnt_ns(self._pids[f"slurmd-{node}"])
                if self._private_hosts and ns and ns != self._mnt_ns(os.getpid()):
                    self._namespaces.add(ns)  # its jobs live there too: how stop() finds leftovers
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        self.bringup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Cancel the jobs, stop the daemons we started (by pid file) and kill what is left of jobs."""
        if any(name == "slurmctld" for name, _ in self._started) and self._pid_of("slurmctld"):
            try:
                jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=15).stdout.split()
                if jobs:
                    self.run("scancel", *jobs, check=False, timeout=15)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    out = self.run("squeue", "-h", "-o", "%i", check=False, timeout=15).stdout
                    if not out.strip():
                        break
                    time.sleep(0.5)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for name in [*(f"slurmd-{n}" for n in NODES), "slurmctld"]:
            self._stop_daemon(name)
        self._kill_leftovers()
        self._stop_daemon("munged")
        self._started.clear()
        self._namespaces.clear()
        _wait_reaped(self._ended)
        self._ended.clear()
        self._restore_hosts()

    # ------------------------------------------------------------------ jobs
    def sbatch(
        self,
        script_path: str | os.PathLike,
        *args: str,
        env: dict[str, str] | None = None,
        script_args: tuple[str, ...] | list[str] = (),
        cwd: str | os.PathLike | None = None,
    ) -> str:
        """Submit ``script_path`` with sbatch options ``args`` and the script's own ``script_args``,
        from ``cwd`` (the job's SLURM_SUBMIT_DIR; default the script's folder); return the job id."""
        script_path = Path(script_path).resolve()
        full_env = self.env
        if env:
            full_env.update(env)
        out = self.run(
            "sbatch",
            "--parsable",
            *args,
            str(script_path),
            *script_args,
            env=full_env,
            cwd=cwd or script_path.parent,
        ).stdout
        return out.strip().split(";")[0]

    def job_state(self, job_id: str | int) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (JobState, Restarts alias RestartCnt, ExitCode, NodeList...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout.strip()
        if not out:
            raise SlurmError(f"scontrol shows nothing for job {job_id}")
        info = parse_scontrol_oneliner(out.splitlines()[0])
        if "Restarts" in info:  # scontrol says Restarts; squeue/sacct call the same count RestartCnt
            info.setdefault("RestartCnt", info["Restarts"])
        return info

    def wait(
        self,
        job_id: str | int,
        states: set[str] | frozenset[str] = FINAL_STATES,
        timeout: float = 120.0,
        poll: float = 0.25,
    ) -> dict[str, str]:
        """Poll ``scontrol show job`` until the job's state is one of ``states``; return its info."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while True:
            info = self.job_state(job_id)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {info.get('JobState')} (Reason={info.get('Reason')}) after "
                    f"{timeout:.0f}s, waiting for {sorted(states)}\n{self.log_tails()}"
                )
            time.sleep(poll)

    def signal(self, job_id: str | int, sig: str = "USR1", *extra: str) -> None:
        """``scancel -s SIG``: reaches the job's srun tasks (add ``--batch`` or ``--full`` for the shell)."""
        self.run("scancel", "-s", sig, *extra, str(job_id))

    def nodes(self) -> dict[str, str]:
        """Node name -> state as ``sinfo`` reports it (idle, alloc, mix, down*, ...)."""
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", timeout=15).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def log_tails(self, lines: int = 25) -> str:
        logs = self.folder / "log"
        parts = []
        for name in ["munged", "slurmctld", *(f"slurmd-{n}" for n in NODES)]:
            parts.append(f"--- {name}.log ---\n{_tail(logs / f'{name}.log', lines)}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ internals
    def _make_dirs(self) -> None:
        for sub in ["etc", "state", "log", "run", *(f"spool/{n}" for n in NODES)]:
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        munge_dir = self.folder / "munge"
        munge_dir.mkdir(parents=True, exist_ok=True)
        munge_dir.chmod(0o755)  # munged wants its socket dir searchable by all and writable by none

    def _start_munged(self) -> None:
        munge_dir = self.folder / "munge"
        key = munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        pid_file = self.folder / "run" / "munged.pid"
        self._start_daemon(
            "munged",
            [
                _which("munged"),
                # pytest's tmp folders are 0700, and munged wants every folder above its socket
                # searchable by all: --force turns that into a warning (all our clients run as root)
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={pid_file}",
                f"--log-file={self.folder / 'log' / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            pid_file=pid_file,
        )
        deadline = time.monotonic() + 10
        while not self.munge_socket.exists():
            if time.monotonic() > deadline:
                raise SlurmError(f"munged made no socket {self.munge_socket}\n{self.log_tails()}")
            time.sleep(0.05)

    def _write_conf(self) -> None:
        f = self.folder
        host = socket.gethostname().split(".")[0]
        lines = [
            "# written by tests/slurm_cluster.py: a throwaway two-node cluster on this machine",
            "ClusterName=medweave",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire (min 5) bounds how soon a requeued job may start again (default 120 s)
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool' / '%n'}",
            f"SlurmctldPidFile={f / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'run' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'log' / 'slurmd-%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobContainerType=job_container/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",  # memory is not a consumable: jobs need no --mem
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2",
            "SlurmdParameters=config_overrides",  # two nodes may claim more CPUs than the machine has
            "EnforcePartLimits=ALL",  # a job that can never fit is rejected, not left pending forever
            "ReturnToService=2",
            "MinJobAge=300",  # finished jobs stay visible to scontrol (there is no accounting)
            "KillWait=5",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "MessageTimeout=10",
            f"NodeName=DEFAULT CPUs={self.cpus_per_node} RealMemory={self.real_memory_mb} State=UNKNOWN",
            *(
                f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={p}"
                for n, p in self.node_ports.items()
            ),
            f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _setup_hosts(self) -> None:
        base = Path("/etc/hosts").read_text()
        self.hosts_file.write_text(base.rstrip("\n") + f"\n{HOSTS_LINE}\n")
        if self._private_hosts is None:
            self._private_hosts = self._namespace_works()
        if self._private_hosts:
            return
        # fallback: the machine's /etc/hosts itself
        if all(self._resolves(n) for n in NODES):
            return
        added = ("" if base.endswith("\n") or not base else "\n") + HOSTS_LINE + "\n"
        with open("/etc/hosts", "a") as fh:
            fh.write(added)
        self._added_hosts_line = added

    def _namespace_works(self) -> bool:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            return False
        probe = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f'mount --bind "$0" /etc/hosts && getent hosts {NODES[-1]}',
                str(self.hosts_file),
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return probe.returncode == 0

    @staticmethod
    def _resolves(name: str) -> bool:
        try:
            socket.gethostbyname(name)
            return True
        except OSError:
            return False

    def _restore_hosts(self) -> None:
        if self._added_hosts_line is None:
            return
        hosts = Path("/etc/hosts")
        text = hosts.read_text()
        if text.endswith(self._added_hosts_line):  # still last: take back exactly what we appended
            text = text[: -len(self._added_hosts_line)]
        else:  # someone appended after us: remove the last line equal to ours
            lines = text.splitlines(keepends=True)
            for i in range(len(lines) - 1, -1, -1):
                if lines[i].rstrip("\n") == HOSTS_LINE:
                    del lines[i]
                    break
            text = "".join(lines)
        hosts.write_text(text)
        self._added_hosts_line = None

    def _pid_file(self, name: str) -> Path:
        return self.folder / "run" / f"{name}.pid"

    def _pid_of(self, name: str) -> int | None:
        """The pid in ``name``'s pid file if that process still runs."""
        pid = self._pids.get(name)
        if pid is None:
            try:
                pid = int(self._pid_file(name).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
        return pid if _pid_alive(pid) else None

    def _start_daemon(self, name: str, cmd: list[str], pid_file: Path | None = None) -> None:
        pid_file = pid_file or self._pid_file(name)
        pid_file.unlink(missing_ok=True)
        env = self.env
        env.pop("SLURM_CONF")  # daemons get -f
        self._started.append((name, pid_file))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise SlurmError(
                f"{name} failed to start (exit {proc.returncode}): {proc.stderr or proc.stdout}\n"
                f"{self.log_tails()}"
            )
        deadline = time.monotonic() + 10
        while True:  # daemons fork; the pid file appears a moment later
            try:
                self._pids[name] = int(pid_file.read_text().split()[0])
                return
            except (OSError, ValueError, IndexError):
                if time.monotonic() > deadline:
                    raise SlurmError(f"{name} wrote no pid file {pid_file}\n{self.log_tails()}") from None
                time.sleep(0.05)

    def _stop_daemon(self, name: str, timeout: float = 30.0) -> None:
        if name not in {n for n, _ in self._started}:
            return
        pid = self._pid_of(name)
        if pid is not None:
            os.kill(pid, _signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, _signal.SIGKILL)
                while _pid_alive(pid):
                    time.sleep(0.05)
            self._ended.add(pid)
        self._pids.pop(name, None)

    @staticmethod
    def _mnt_ns(pid: int) -> str | None:
        try:
            return os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            return None

    def _ours(self) -> list[int]:
        """Processes left of our cluster: in a slurmd's mount namespace or carrying our marker."""
        skip = {os.getpid(), *self._pids.values()}  # munged is stopped after this, cleanly
        marker = f"{MARKER}={self._marker}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in skip:
                continue
            pid = int(entry.name)
            if self._namespaces and self._mnt_ns(pid) in self._namespaces:
                found.append(pid)
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(pid)
            except OSError:
                pass
        return [pid for pid in found if _pid_alive(pid)]

    def _kill_leftovers(self) -> None:
        for _ in range(50):
            pids = self._ours()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, _signal.SIGKILL)
                    self._ended.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            proc = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False, timeout=15)
            if proc.returncode == 0:
                states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
                if all(states.get(n) == "idle" for n in NODES):
                    return
            for name, _ in self._started:
                if self._pid_of(name) is None:
                    raise SlurmError(f"{name} died during start-up\n{self.log_tails()}")
            time.sleep(0.2)
        raise SlurmError(
            f"nodes not idle after {self.start_timeout:.0f}s (sinfo: {states or 'no answer'})\n"
            f"{self.log_tails()}"
        )

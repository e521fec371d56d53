"""Logging overhead: the share of training wall time spent inside MLflow calls, with the embedded
SQLite store (logger=mlflow) and with the team server (logger=mlflow_server, PostgreSQL behind
`mlflow server`, started here with scripts/mlflow-server.sh and always stopped at the end).

    python benchmarks/logging_overhead.py          # quickstart model, 1,000 subjects, 200 steps, 4 runs
    python benchmarks/logging_overhead.py --stores server --synchronous config   # the config as it is
    python benchmarks/logging_overhead.py --smoke --steps 4 --subjects 60 --stores sqlite   # a check

One run per store and per --synchronous value (default: true, then false, i.e. blocking and
asynchronous logging side by side). Each run is a real medweave-train (medweave.cli.train.train, in
this process, on a config composed as the CLI composes it): validation every epoch, checkpoints,
the MLflow logger at its default frequency (trainer.log_every_n_steps), params and the resolved
config logged before fitting, the checkpoints uploaded when the run ends; no early stopping (a run
takes --steps optimizer steps), no test or evaluation. Before the first run: mlflow and its stores'
modules are imported and the SQLite store is created (setup.mlflow_import_s, sqlite_store_create_s:
what a process's first logger, and a user's first run, pay once), and the cohort cache is prepared.

Timed: every call into the MLflow logger (its construction, log_hyperparams, log_metrics,
after_save_checkpoint, finalize, and medweave's reopen/record_run_id/mark_preempted) and every
MlflowClient method called from anywhere in the process (log_run_config's artifact upload, the
logger's run creation). Nested calls count once, under the outermost. logging_share is the time in
those calls over the wall time of the whole train() call; the logger's construction is apart
(logger_init_s, and in logging_share_with_init). With asynchronous logging the writes run on
MLflow's writer thread: the share is what the training thread waits for, and background_write_s is
the writer's time in the store's log_batch (it shares the CPU, not the training thread's time).
Each run reads back how many train/loss_step points reached the store (expected: steps //
log_every_n_steps) and the run's status. Prints one JSON line (each run also to stderr as it ends).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = ROOT / "scripts" / "mlflow-server.sh"
LOGGER_METHODS = (
    "log_hyperparams",
    "log_metrics",
    "after_save_checkpoint",
    "finalize",
    "reopen",
    "record_run_id",
    "mark_preempted",
)


class CallTimer:
    """Accumulates perf_counter time spent in patched callables. A call made inside another timed
    call (log_metrics -> MlflowClient.log_batch) counts once, under the outer one; a call on any
    thread but the main one (MLflow's asynchronous writer) counts under "background.<label>"."""

    def __init__(self):
        self._local = threading.local()
        self._lock = threading.Lock()
        self._undo: list[tuple[object, str, object]] = []
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def _timed(self, original, label: str):
        @functools.wraps(original)
        def timed(*args, **kwargs):
            if getattr(self._local, "depth", 0):
                return original(*args, **kwargs)
            self._local.depth = 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self._local.depth = 0
                on_main = threading.current_thread() is threading.main_thread()
                key = label if on_main else f"background.{label}"
                with self._lock:
                    self.seconds[key] += elapsed
                    self.calls[key] += 1

        return timed

    def patch(self, owner, name: str, label: str) -> None:
        # None: the attribute was inherited, and restoring removes the override.
        self._undo.append((owner, name, vars(owner).get(name)))
        setattr(owner, name, self._timed(getattr(owner, name), label))

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._undo.clear()

    def reset(self) -> None:
        with self._lock:
            self.seconds.clear()
            self.calls.clear()


def import_mlflow() -> float:
    """Import what the first logger of a process imports (mlflow, its SQL and REST stores), once,
    before any timed run: each run's logger_init then is the logger's own work."""
    start = time.perf_counter()
    import mlflow  # noqa: F401
    import mlflow.store.tracking.rest_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    from lightning.pytorch.loggers import MLFlowLogger  # noqa: F401

    return time.perf_counter() - start


def patch_mlflow(timer: CallTimer, made: list) -> None:
    """Time the logger factory, the logger's methods, every public MlflowClient method, and the
    stores' log_batch (on the main thread it is inside one of those; elsewhere it is the writer)."""
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient

    import medweave.tracking.mlflow as tracking
    from medweave.tracking.run_logger import ResumableMLFlowLogger

    factory = tracking.make_mlflow_logger

    @functools.wraps(factory)
    def make_and_keep(*args, **kwargs):
        logger = factory(*args, **kwargs)
        made.append(logger)
        return logger

    tracking.make_mlflow_logger = make_and_keep  # Hydra's _target_ looks it up on the module
    timer._undo.append((tracking, "make_mlflow_logger", factory))
    timer.patch(tracking, "make_mlflow_logger", "logger_init")
    for name in LOGGER_METHODS:
        if hasattr(ResumableMLFlowLogger, name):
            timer.patch(ResumableMLFlowLogger, name, name)
    for name, value in list(vars(MlflowClient).items()):
        if (
            not name.startswith("_")
            and callable(value)
            and not isinstance(value, (staticmethod, classmethod))
        ):
            timer.patch(MlflowClient, name, f"client.{name}")
    for store in (SqlAlchemyStore, RestStore):
        timer.patch(store, "log_batch", "store.log_batch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    # As tests/services.py: no GenAI job runner, so the same server comes up in about half the time.
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.run(
        ["bash", str(SERVER_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def compose_config(root: Path, work: Path, run_dir: Path, args, store: str, synchronous: str, uri):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from medweave.cli.hydra_main import config_dir

    overrides = [
        "debug=smoke" if args.smoke else "experiment=quickstart",
        f"data.root={root}",
        f"data.batch_size={args.batch}" if args.batch else None,
        f"paths.log_dir={work / 'logs'}",
        "trainer.max_epochs=-1",
        f"++trainer.max_steps={args.steps}",
        "++trainer.limit_train_batches=null",
        "trainer.enable_progress_bar=false",
        "~callbacks.early_stopping",  # the run takes exactly --steps steps
        "test=false",
        "evaluation.enabled=false",
    ]
    if store == "server":
        overrides += ["logger=mlflow_server", f"logger.mlflow.tracking_uri={uri}"]
    if synchronous != "config":
        overrides.append(f"++logger.mlflow.synchronous={synchronous}")
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[o for o in overrides if o])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


def prepare_cache(cfg) -> None:
    """The cohort cache is built once, before any timed run (every run then reuses it)."""
    from hydra.utils import instantiate

    instantiate(cfg.data).encoder_inputs()


def one_run(cfg, timer: CallTimer, made: list) -> dict:
    from medweave.cli.train import train

    timer.reset()
    made.clear()
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout: the JSON line only
        train(cfg)
    wall = time.perf_counter() - start
    seconds, calls = dict(timer.seconds), dict(timer.calls)  # before the read-back below
    [logger] = made
    client = logger.experiment
    points = client.get_metric_history(logger.run_id, "train/loss_step")
    status = client.get_run(logger.run_id).info.status
    init_s = seconds.get("logger_init", 0.0)
    background_s = sum(v for k, v in seconds.items() if k.startswith("background."))
    logging_s = sum(seconds.values()) - init_s - background_s
    return {
        "synchronous": cfg.logger.mlflow.get("synchronous"),
        "train_wall_s": wall,
        "logging_s": logging_s,
        "logging_share": logging_s / wall,
        "logger_init_s": init_s,
        "logging_share_with_init": (logging_s + init_s) / wall,
        "background_write_s": background_s,
        "calls": {
            label: {"n": calls[label], "s": round(seconds[label], 6)}
            for label in sorted(seconds, key=seconds.get, reverse=True)
        },
        "train_loss_step_points_in_store": len(points),
        "expected_train_loss_step_points": int(cfg.trainer.max_steps) // int(cfg.trainer.log_every_n_steps),
        "run_status": status,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per training run")
    parser.add_argument("--batch", type=int, default=None, help="data.batch_size (default: the config's)")
    parser.add_argument("--smoke", action="store_true", help="debug=smoke model instead of quickstart")
    parser.add_argument(
        "--stores", default="sqlite,server", help="comma-separated: sqlite (logger=mlflow), server"
    )
    parser.add_argument(
        "--synchronous",
        nargs="+",
        default=["true", "false"],
        choices=["config", "true", "false"],
        help="logger.mlflow.synchronous, one run per value and store (config: the config's own value)",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="a running server to use instead of starting one"
    )
    args = parser.parse_args()
    stores = [s for s in args.stores.split(",") if s]
    if not stores or not set(stores) <= {"sqlite", "server"}:
        parser.error(f"--stores takes sqlite and/or server, not {args.stores!r}")

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the embedded store must be the run's own
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # SIGTERM unwinds like an error, so the server started here is always stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import torch

    from medweave.sandbox.generate import SandboxConfig, generate_cohort
    from medweave.tracking.mlflow import resolve_tracking_uri

    import_s = import_mlflow()
    timer, made, runs, setup = CallTimer(), [], [], {"mlflow_import_s": import_s}
    patch_mlflow(timer, made)
    home = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            uri = args.tracking_uri
            if "server" in stores and not uri:
                # PostgreSQL runs as an unprivileged user when we are root: a short, traversable home.
                home = Path(tempfile.mkdtemp(prefix="mw-bench-mlflow-"))
                home.chmod(0o755)
                start = time.perf_counter()
                started = server_script(
                    "start", "--home", str(home), "--port", str(free_port()), "--workers", "2", timeout=240
                )
                if started.returncode != 0:
                    sys.exit(f"mlflow-server.sh start failed:\n{started.stderr[-3000:]}")
                uri = started.stdout.strip().splitlines()[-1]
                setup["server_start_s"] = time.perf_counter() - start
                setup["server_home"] = str(home)  # removed once the server is stopped
            root = generate_cohort(work / "cohort", SandboxConfig(n_subjects=args.subjects, seed=0))
            plan = [(store, synchronous) for store in stores for synchronous in args.synchronous]
            for i, (store, synchronous) in enumerate(plan):
                cfg = compose_config(root, work, work / f"run{i}", args, store, synchronous, uri)
                if i == 0:
                    prepare_cache(cfg)
                if store == "sqlite" and "sqlite_store_create_s" not in setup:
                    # A user's first run creates the store (its schema); later runs open it.
                    from mlflow.tracking import MlflowClient

                    start = time.perf_counter()
                    MlflowClient(resolve_tracking_uri(cfg.logger.mlflow.store_dir)).search_experiments()
                    setup["sqlite_store_create_s"] = time.perf_counter() - start
                runs.append({"store": store, **one_run(cfg, timer, made)})
                print(json.dumps(runs[-1]), file=sys.stderr)
    finally:
        timer.restore()
        if home is not None:
            stopped = server_script("stop", "--home", str(home), timeout=120)
            if stopped.returncode != 0:
                print(f"mlflow-server.sh stop failed, left {home}:\n{stopped.stderr}", file=sys.stderr)
            else:
                shutil.rmtree(home, ignore_errors=True)

    result = {
        "benchmark": "logging_overhead",
        "model": "debug=smoke" if args.smoke else "experiment=quickstart",
        "subjects": args.subjects,
        "steps": args.steps,
        "log_every_n_steps": int(cfg.trainer.log_every_n_steps),
        "batch_size": int(cfg.data.batch_size),
        "setup": setup,
        "runs": runs,
        "max_logging_share": max(r["logging_share"] for r in runs),
        "max_logging_share_with_init": max(r["logging_share_with_init"] for r in runs),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

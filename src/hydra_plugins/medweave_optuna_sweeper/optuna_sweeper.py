"""Hyperparameter search as a Hydra sweeper on a maintained Optuna.

Hydra's own Optuna sweeper pins optuna<3, whose database storage does not run on SQLAlchemy 2
(which MLflow needs), so a study could not be kept in a database. This sweeper keeps the same
search-space syntax (choice, range, interval, tag(log, ...)) on current Optuna:

- the study lives in a database (``storage``), so a search that is interrupted resumes where it
  stopped: finished trials count toward ``n_trials``, and a trial left running by the interruption
  is marked failed and tried again with the same parameters;
- each trial is a job of the configured launcher and its own MLflow run, nested under one parent
  run per study (the parent's id is kept in the study).
"""

# No "from __future__ import annotations": Hydra imports plugins outside sys.modules, where
# dataclasses cannot resolve string annotations; OmegaConf needs the real types too.
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035 (OmegaConf reads these in the config)

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("medweave")


@dataclass
class MedweaveOptunaSweeperConf:
    _target_: str = "hydra_plugins.medweave_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    direction: str = "maximize"
    study_name: str = "medweave"
    storage: Optional[str] = None  # noqa: UP045  sqlite:///logs/optuna.db; None: in memory
    n_trials: int = 10
    seed: int = 0
    params: Dict[str, str] = field(default_factory=dict)  # noqa: UP006


ConfigStore.instance().store(
    group="hydra/sweeper", name="medweave_optuna", node=MedweaveOptunaSweeperConf, provider="medweave"
)


def distribution(override: Override):
    """The Optuna distribution for one search-space entry."""
    import optuna.distributions as d

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return d.CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return d.IntDistribution(start, stop - step, step=step)
        return d.FloatDistribution(start, stop - step, step=step)
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:
            return d.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return d.FloatDistribution(value.start, value.end, log=log_scale)
    raise ValueError(
        f"{override.input_line}: expected choice(...), range(...) or interval(...) for a search space"
    )


class OptunaSweeper(Sweeper):
    def __init__(self, direction, study_name, storage, n_trials, seed, params) -> None:
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.seed, self.params = n_trials, seed, dict(params or {})
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _storage_url(self) -> str | None:
        if not self.storage or not self.storage.startswith("sqlite:///"):
            return self.storage
        path = Path(self.storage.removeprefix("sqlite:///")).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"

    def sweep(self, arguments: list[str]) -> Any:
        import optuna
        from optuna.trial import TrialState

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space = {
            o.get_key_element(): distribution(o)
            for o in parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()])
        }
        fixed = [o.input_line for o in parser.parse_overrides(arguments)]
        for o in parser.parse_overrides(arguments):
            if o.is_sweep_override():
                raise ValueError(
                    f"{o.input_line}: put search spaces in hydra.sweeper.params, not on the command line"
                )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        study = optuna.create_study(
            study_name=self.study_name,
            storage=self._storage_url(),
            sampler=optuna.samplers.TPESampler(seed=self.seed),
            direction=self.direction,
            load_if_exists=True,
        )
        for trial in study.get_trials(states=(TrialState.RUNNING,)):  # cut off by an interruption
            study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params, skip_if_exists=False)
            log.info("Trial %d was interrupted: it runs again with the same parameters", trial.number)
        parent = self._parent_run(study)

        def finished() -> int:
            states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
            return sum(1 for t in study.get_trials(states=states) if not t.user_attrs.get("interrupted"))

        returns = []
        while finished() < self.n_trials:
            trial = study.ask(space)
            overrides = fixed + [f"{k}={v}" for k, v in trial.params.items()]
            if parent:
                overrides.append(f"logger.mlflow.parent_run_id={parent}")
            [result] = self.launcher.launch([overrides], initial_job_idx=trial.number)
            try:
                value = float(result.return_value)
            except Exception as err:  # the job raised, or returned no metric
                log.error("Trial %d failed: %s", trial.number, err)
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, value)
            returns.append([result])
        self._write_best(study, sweep_dir)
        return returns

    def _parent_run(self, study) -> str | None:
        """One MLflow parent run per study, reused when the search resumes."""
        settings = (self.config.get("logger") or {}).get("mlflow")
        if not settings:
            return None
        if "mlflow_parent_run_id" in study.user_attrs:
            return study.user_attrs["mlflow_parent_run_id"]
        import mlflow

        from medweave.tracking.mlflow import resolve_tracking_uri

        client = mlflow.MlflowClient(resolve_tracking_uri(settings.store_dir, settings.get("tracking_uri")))
        experiment = client.get_experiment_by_name(settings.experiment_name)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(settings.experiment_name)
        )
        run = client.create_run(experiment_id, run_name=f"{self.study_name} (search)")
        client.set_tag(run.info.run_id, "optuna.study", self.study_name)
        study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
        return run.info.run_id

    def _write_best(self, study, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        if not study.get_trials(states=(TrialState.COMPLETE,)):
            log.error("No trial of study %s completed", self.study_name)
            return
        best = {"name": self.study_name, "best_value": study.best_value, "best_params": study.best_params}
        OmegaConf.save(OmegaConf.create(best), sweep_dir / "optimization_results.yaml")
        log.info("Best of %d trials: %s = %s", len(study.trials), study.best_params, study.best_value)

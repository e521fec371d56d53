from omegaconf import OmegaConf

from medweave.tracking.mlflow import flat_params, resolve_tracking_uri


def test_uri_precedence(tmp_path, monkeypatch):
    from medweave.tracking import mlflow as tracking

    monkeypatch.setattr(tracking, "USER_TRACKING_URI", None)
    assert resolve_tracking_uri(tmp_path / "s") == f"sqlite:///{(tmp_path / 's' / 'mlflow.db').resolve()}"
    monkeypatch.setattr(tracking, "USER_TRACKING_URI", "http://127.0.0.1:5000")  # set before start
    assert resolve_tracking_uri(tmp_path / "s") == "http://127.0.0.1:5000"
    assert resolve_tracking_uri(tmp_path / "s", "sqlite:///x.db") == "sqlite:///x.db"


def test_a_previous_run_in_the_process_does_not_redirect_the_next(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI in-process; the next run (a Hydra
    multirun job, the next test) must still go to its own store."""
    import mlflow

    from medweave.tracking import mlflow as tracking

    monkeypatch.setattr(tracking, "USER_TRACKING_URI", None)
    first = resolve_tracking_uri(tmp_path / "first")
    mlflow.set_tracking_uri(first)
    try:
        assert resolve_tracking_uri(tmp_path / "second").endswith("second/mlflow.db")
    finally:
        mlflow.set_tracking_uri(None)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_flat_params_are_dotted_and_resolved():
    cfg = OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": "${a.b}", "data": {"vocab": {"x": 1}}})
    assert flat_params(cfg) == {"a.b": "1", "a.c": "[1, 2]", "d": "1"}

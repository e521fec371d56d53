from omegaconf import OmegaConf

from medweave.tracking.mlflow import flat_params, resolve_tracking_uri


def test_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(tmp_path / "s") == f"sqlite:///{(tmp_path / 's' / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(tmp_path / "s") == "http://127.0.0.1:5000"
    assert resolve_tracking_uri(tmp_path / "s", "sqlite:///x.db") == "sqlite:///x.db"


def test_flat_params_are_dotted_and_resolved():
    cfg = OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": "${a.b}", "data": {"vocab": {"x": 1}}})
    assert flat_params(cfg) == {"a.b": "1", "a.c": "[1, 2]", "d": "1"}

"""The registry mirrored to a real MLflow (sqlite backend, in-process): runs, model versions, the champion alias."""
import glob
import os

import pytest

from ringtrain.config import TrackingConfig
from ringtrain.registry import Registry
from ringtrain.jobs.tracking import VERSION_TAG, mirror_event

from test_registry import register

mlflow = pytest.importorskip("mlflow")  # pinned in requirements.lock: installed by `make setup`


def champion_tag(client, name):
    return client.get_model_version_by_alias(name, "champion").tags[VERSION_TAG]


def test_decisions_promotions_and_rollbacks_are_mirrored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow would put artifacts in ./mlruns by default
    cfg = TrackingConfig(mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="retrain-test")
    reg = Registry(str(tmp_path / "store"), "churn")
    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow_uri, registry_uri=cfg.mlflow_uri)

    for marker, promoted in (("d1", True), ("d2", False), ("d3", True)):
        event = register(reg, tmp_path, marker, promoted)
        event["challenger"] = {"overall": {"auc": 0.8, "rows": 100}}
        assert mirror_event(cfg, reg, event).startswith("model churn version ")
    versions = {v.tags[VERSION_TAG]: v for v in client.search_model_versions("name='churn'")}
    assert sorted(versions) == ["v000001", "v000002", "v000003"]
    assert champion_tag(client, "churn") == "v000003"
    run = client.get_run(versions["v000002"].run_id)
    assert run.data.tags["promoted"] == "False" and run.data.tags["reason"] == "test d2"
    assert run.data.metrics["challenger_auc"] == 0.8 and run.data.params["ringtrain_version"] == "v000002"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.pt2", "model/state_dict.pt", "model/features.json", "model/version.json"} <= artifacts
    # The files went under the store (not into ./mlruns of whatever directory the job ran in).
    assert len(glob.glob(str(tmp_path / "store" / "mlflow-artifacts" / "**" / "model.pt2"), recursive=True)) == 3
    assert not os.path.exists(tmp_path / "mlruns")

    mirror_event(cfg, reg, reg.rollback(reason="bad"))
    assert champion_tag(client, "churn") == "v000001"
    mirror_event(cfg, reg, reg.promote("v000002"))
    assert champion_tag(client, "churn") == "v000002"

    # Mirroring the same event again changes nothing (a retrain that mirrors after a rerun).
    mirror_event(cfg, reg, reg.events()[0])
    assert len(client.search_model_versions("name='churn'")) == 3 and champion_tag(client, "churn") == "v000002"

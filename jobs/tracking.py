"""A mirror of the registry in MLflow, when `tracking.mlflow_uri` is set (e.g. sqlite:///runs/mlflow.db).

The registry on the store stays the truth (its events are atomic; MLflow calls are not). Each registry
event is mirrored after it was committed:
  decide    an MLflow run `<model> <date>` (params: run id, dataset version, gate; metrics: both models'
            holdout metrics; tags: decision and reason; artifacts: the version's files), a model version
            of the registered model `<model>` tagged with the ringtrain version, and the `champion`
            alias moved when the challenger was promoted
  promote   the alias set on the mirrored version
  rollback  the alias set back on the mirrored version
Mirroring is idempotent: a version already mirrored (found by its `ringtrain_version` tag) is reused.
A new experiment keeps its files under tracking.artifact_location (default <store.root>/mlflow-artifacts),
not in MLflow's default ./mlruns of whatever directory the job happens to run in.
"""
from __future__ import annotations

import os
import tempfile

from ringtrain.config import TrackingConfig
from ringtrain.registry import Registry
from ringtrain.store import join, listdir, read_bytes, read_json

VERSION_TAG = "ringtrain_version"


def mirror_event(cfg: TrackingConfig, registry: Registry, event: dict) -> str:
    """Mirror one registry event; returns what was done, for the retrain record."""
    import mlflow
    from mlflow import MlflowClient
    mlflow.set_tracking_uri(cfg.mlflow_uri)
    mlflow.set_registry_uri(cfg.mlflow_uri)
    client = MlflowClient()
    if event.get("registers"):
        mirrored = mirror_version(client, cfg, registry, event)
    else:
        mirrored = find_version(client, registry.name, event["version"])
    for alias, version in _alias_moves(registry, event).items():
        client.set_registered_model_alias(registry.name, alias, find_version(client, registry.name, version))
    return f"model {registry.name} version {mirrored}"


def _alias_moves(registry: Registry, event: dict) -> dict[str, str]:
    """The aliases this event moved, and where they point now: mirroring an old event again (after a
    rerun) must not move an alias back."""
    moved = list(event.get("pushes") or {}) + list(event.get("pops") or [])
    aliases = registry.state().aliases()
    return {a: aliases[a] for a in moved if a in aliases}


def find_version(client, name: str, version: str) -> str:
    found = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get(VERSION_TAG) == version]
    if not found:
        raise LookupError(f"{name} {version} was never mirrored to MLflow")
    return found[0].version


def mirror_version(client, cfg: TrackingConfig, registry: Registry, event: dict) -> str:
    import mlflow
    version = event["registers"]
    try:
        return find_version(client, registry.name, version)
    except LookupError:
        pass
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        location = cfg.artifact_location or join(registry.store_root, "mlflow-artifacts")
        client.create_experiment(cfg.experiment, artifact_location=location)
        experiment = client.get_experiment_by_name(cfg.experiment)
    folder = registry.version_dir(version)
    with mlflow.start_run(experiment_id=experiment.experiment_id,
                          run_name=f"{registry.name} {event.get('date') or version}") as run:
        info = read_json(join(folder, "version.json"))
        mlflow.log_params({"ringtrain_version": version, "run_id": info.get("run_id"), "date": event.get("date"),
                           "dataset_version": info.get("dataset_version"), "metric": event.get("metric")})
        for who in ("challenger", "champion"):
            overall = (event.get(who) or {}).get("overall") or {}
            mlflow.log_metrics({f"{who}_{k}": float(v) for k, v in overall.items() if isinstance(v, (int, float))})
        mlflow.set_tags({"promoted": str(event.get("promoted")), "reason": event.get("reason", "")[:5000]})
        with tempfile.TemporaryDirectory() as tmp:  # the store may be remote: copy through its functions
            local = os.path.join(tmp, "model")
            os.makedirs(local)
            for name in listdir(folder):
                with open(os.path.join(local, name), "wb") as f:
                    f.write(read_bytes(join(folder, name)))
            mlflow.log_artifacts(local, artifact_path="model")
        source = f"{run.info.artifact_uri}/model"
    if not client.search_registered_models(f"name='{registry.name}'"):
        client.create_registered_model(registry.name)
    mirrored = client.create_model_version(registry.name, source, run_id=run.info.run_id,
                                           tags={VERSION_TAG: version}, description=event.get("reason"))
    return mirrored.version

"""Scheduled retraining on real Spark, real Horovod rings and real files: three dates with drift and a
day of corrupted labels, then evaluate and predict with the registered models."""
import glob
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import ROOT, read_json
from ringtrain.config import load_config
from ringtrain.etl.sample_data import generate_churn, write_daily_churn
from ringtrain.manifest import load_manifest, shard_paths
from ringtrain.registry import Registry
from ringtrain.jobs.retrain import Records, decide, retrain
from ringtrain.training.scoring import evaluate, resolve_model
from ringtrain.training.data import Columns
from ringtrain.training.models import build_model

pytestmark = [pytest.mark.spark, pytest.mark.slow]
D1, D2, D3 = "2026-01-01", "2026-01-02", "2026-01-03"
DAYS = [dict(date=D1, rows=6000),
        dict(date=D2, rows=6000, label_noise=1.0),  # every label a coin flip: heavily corrupted
        dict(date=D3, rows=8000, drift=1.0)]        # a churn pattern the first model cannot know


def retrain_config(root, extra=()):
    return load_config(os.path.join(ROOT, "conf", "retrain.yaml"), [
        f"store.root={root}", f"etl.source.path={root}/raw/dt={{partition}}", "etl.shards.rows_per_shard=1000",
        "etl.shards.row_group_rows=256", "train.batch_size=128", "retrain.promote.min_improvement=0.01",
        "retrain.promote.max_partition_drop=0.1", *extra])


@pytest.fixture(scope="module")
def three_dates(spark, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("retrain"))
    write_daily_churn(os.path.join(root, "raw"), DAYS)
    cfg = retrain_config(root)
    summary = retrain(spark, cfg, [D1, D2, D3])
    return cfg, summary


def test_corrupted_day_is_not_promoted_and_drifted_day_is(three_dates):
    cfg, summary = three_dates
    registry = Registry(cfg.store.root, "churn")
    events = registry.events()
    assert [(e["action"], e["date"], e["registers"], e["promoted"]) for e in events] == [
        ("decide", D1, "v000001", True), ("decide", D2, "v000002", False), ("decide", D3, "v000003", True)]
    assert [(e["champion_before"], e["champion_after"]) for e in events] == [
        (None, "v000001"), ("v000001", "v000001"), ("v000001", "v000003")]
    assert events[0]["reason"].startswith("first model: auc") and "beats the baseline" in events[0]["reason"]
    assert events[1]["reason"].startswith("champion kept: ")
    assert events[2]["reason"].startswith("auc ") and "vs champion" in events[2]["reason"]
    for e in events:
        # Champion and challenger were measured on exactly the same rows, and the recorded decision is the gate's.
        if e["champion"]:
            assert e["champion"]["overall"]["rows"] == e["challenger"]["overall"]["rows"]
            assert e["champion"]["partitions"].keys() == e["challenger"]["partitions"].keys()
        assert decide(cfg.retrain.promote, e["challenger"], e["champion"]) == (e["promoted"], e["reason"])
    assert list(events[2]["challenger"]["partitions"]) == [D1, D2, D3]
    assert registry.state().aliases() == {"champion": "v000003"}
    assert summary["champion"] == "v000003"

    records = {r["date"]: r for r in Records(registry).all()}
    assert {d: (r["state"], r["decision"]["outcome"], r["decision"]["event"]) for d, r in records.items()} == {
        D1: ("done", "promoted", 1), D2: ("done", "kept", 2), D3: ("done", "promoted", 3)}
    assert [records[d]["dataset_version"] for d in (D1, D2, D3)] == ["v000001", "v000002", "v000003"]
    assert os.path.getsize(Records(registry).plot_path) > 1000


def test_a_finished_date_is_not_redone(spark, three_dates):
    cfg, _ = three_dates
    again = retrain(spark, cfg, [D2])
    assert again["dates"][0]["skipped"] is True and again["dates"][0]["decision"]["outcome"] == "kept"
    assert len(Registry(cfg.store.root, "churn").events()) == 3


def test_evaluate_reproduces_the_metrics_training_reported(three_dates):
    cfg, _ = three_dates
    model = resolve_model("champion", store_root=cfg.store.root, registry_name="churn")
    reported = model.artifact["metrics"]  # the last epoch's validation metrics, computed by the two ranks
    dataset_dir = read_json(os.path.join(model.folder, "version.json"))["dataset_dir"]
    measured = evaluate(model, dataset_dir, "val", by_partition=False)["overall"]
    assert measured["rows"] == reported["rows"]
    for key in ("loss", "accuracy", "auc", "baseline_accuracy", "baseline_loss"):
        assert measured[key] == pytest.approx(reported[key], abs=1e-6), key


def eager_scores(model, dataset_dir):
    """key -> P(churn) from the eager model (state_dict) on the ETL's own encoded rows, all splits."""
    manifest = load_manifest(dataset_dir)
    cols = Columns.from_manifest(manifest, with_key=True)
    cards = list(manifest.features.categorical_cardinalities.values())
    eager = build_model(model.artifact["train_config"]["model"], len(cols.numeric), cards)
    eager.load_state_dict(torch.load(os.path.join(model.folder, "state_dict.pt")))
    eager.eval()
    out = {}
    for split in ("train", "val", "test"):
        for path in shard_paths(dataset_dir, manifest, split):
            t = pq.read_table(path)
            num = torch.from_numpy(np.stack([t.column(c).to_numpy() for c in cols.numeric], 1).astype(np.float32))
            cat = torch.from_numpy(np.stack([t.column(c).to_numpy() for c in cols.categorical], 1).astype(np.int64))
            with torch.no_grad():
                probs = torch.sigmoid(eager(num, cat).reshape(-1)).double().numpy()
            out.update(zip(t.column(cols.key).to_pylist(), probs))
    return out


def read_parts(pattern):
    return pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(pattern))])


def test_predict_scores_or_quarantines_every_row_like_the_eager_model(spark, three_dates, tmp_path):
    from ringtrain.jobs.predict import predict
    cfg, _ = three_dates
    model = resolve_model("champion", store_root=cfg.store.root, registry_name="churn")
    # Day 3's rows (as write_daily_churn made them; without their label, as rows to score come) plus rows
    # that fail validation.
    frame, _ = generate_churn(8000, 11 + 2, drift=1.0, first_id=12000)
    bad, _ = generate_churn(30, 99, first_id=90000)
    bad = bad.astype(object)
    bad.loc[0:9, "age"] = "forty"              # wrong_type:age
    bad.loc[10:19, "monthly_charges"] = None   # null:monthly_charges (declared not nullable)
    bad.loc[20:29, "customer_id"] = None       # null:customer_id (the key)
    rows = pd.concat([frame, bad]).drop(columns=["churned"])
    os.makedirs(tmp_path / "in")
    rows.to_csv(tmp_path / "in" / "rows.csv", index=False)
    source = cfg.etl.source.__class__(format="csv", path=str(tmp_path / "in"))

    out = str(tmp_path / "scores")
    summary = predict(spark, model, source, out)
    assert summary["rows_scored"] == 8000 and summary["rows_quarantined"] == 30
    assert summary["quarantine_reasons"] == {"wrong_type:age": 10, "null:monthly_charges": 10,
                                             "null:customer_id": 10}
    assert os.path.exists(os.path.join(out, "_SUCCESS"))
    scored = read_parts(os.path.join(out, "part-*.parquet"))
    # What a user joins on and trusts: the key, the score, the version that scored and the partition (here the
    # input path itself: it has no name=value folder).
    assert scored.column_names == ["customer_id", "score", "model_version", "partition"]
    assert set(scored.column("model_version").to_pylist()) == {"v000003"}
    assert set(scored.column("partition").to_pylist()) == {str(tmp_path / "in")}
    quarantined = read_parts(os.path.join(out, "quarantine", "part-*.parquet"))
    keys = scored.column("customer_id").to_pylist()
    assert sorted(keys) == sorted(frame["customer_id"])
    assert sorted(k for k in quarantined.column("customer_id").to_pylist() if k) == sorted(bad["customer_id"].dropna())

    # The same rows, encoded by the ETL into day 3's shards, through the eager model: the same scores.
    expected = eager_scores(model, read_json(os.path.join(model.folder, "version.json"))["dataset_dir"])
    got = dict(zip(keys, scored.column("score").to_pylist()))
    assert max(abs(got[k] - expected[k]) for k in got) < 1e-6

    manifest = read_json(os.path.join(out, "_manifest.json"))
    again = predict(spark, model, source, out)
    assert again["rows_scored"] == 8000
    rerun = read_json(os.path.join(out, "_manifest.json"))
    assert rerun["files"] == manifest["files"] and rerun["quarantine_files"] == manifest["quarantine_files"]


def test_force_redoes_a_date_and_warm_start_begins_from_the_champion(spark, three_dates):
    """--force: a new run and a new decision for the date. warm_start: the challenger starts from the
    champion's weights (with a learning rate of 1e-9 it ends where the champion is)."""
    cfg, _ = three_dates
    warm = retrain_config(cfg.store.root, ["retrain.warm_start=true", "train.epochs=1", "train.lr=1.0e-9"])
    (done,) = retrain(spark, warm, [D3], force=True)["dates"]
    assert done["run_id"] == f"churn-{D3}-a2" and done["warm_start_from"] == "v000003"
    registry = Registry(cfg.store.root, "churn")
    events = registry.events()
    assert [(e["date"], e["registers"]) for e in events] == [(D1, "v000001"), (D2, "v000002"), (D3, "v000003"),
                                                             (D3, "v000004")]
    champion = torch.load(os.path.join(registry.version_dir("v000003"), "state_dict.pt"))
    challenger = torch.load(os.path.join(registry.version_dir("v000004"), "state_dict.pt"))
    for name in champion:
        assert torch.allclose(champion[name], challenger[name], atol=1e-5), name


class Killed(Exception):
    """Stands for a kill: the retrain stops where it is, leaving its record as it was."""


def test_a_rerun_never_repeats_a_finished_step_and_decides_as_the_uninterrupted_run(spark, tmp_path, monkeypatch):
    """A retrain killed during evaluation reruns without training (no barrier stage, the run's checkpoints and
    model untouched); killed again before its registry event, the rerun neither trains nor evaluates. The
    decision and the registry are the uninterrupted retrain's."""
    import ringtrain.training.launcher
    import ringtrain.training.scoring
    fast = ["train.epochs=1"]
    roots = {name: str(tmp_path / name) for name in ("clean", "killed")}
    for root in roots.values():
        write_daily_churn(os.path.join(root, "raw"), [dict(date=D1, rows=3000)])
    retrain(spark, retrain_config(roots["clean"], fast), [D1])

    cfg = retrain_config(roots["killed"], fast)
    registry = Registry(roots["killed"], "churn")
    records = Records(registry)
    real = {"run_training": ringtrain.training.launcher.run_training, "evaluate": ringtrain.training.scoring.evaluate,
            "commit": Registry.commit}
    calls = {"run_training": 0, "evaluate": 0}

    def counted(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return real[name](*args, **kwargs)
        return call

    def killed(*args, **kwargs):
        raise Killed()

    monkeypatch.setattr(ringtrain.training.scoring, "evaluate", killed)
    with pytest.raises(Killed):
        retrain(spark, cfg, [D1])
    assert records.load(D1)["state"] == "evaluate" and registry.events() == []
    run_dir = os.path.join(roots["killed"], "runs", f"churn-{D1}-a1")
    run_files = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(run_dir, "*", "*"))
                 if "/logs/" not in p}
    assert any("/checkpoints/ckpt-" in p for p in run_files) and any(p.endswith("artifact.json") for p in run_files)

    monkeypatch.setattr(ringtrain.training.launcher, "run_training", counted("run_training"))
    monkeypatch.setattr(ringtrain.training.scoring, "evaluate", counted("evaluate"))
    monkeypatch.setattr(Registry, "commit", killed)
    with pytest.raises(Killed):
        retrain(spark, cfg, [D1])
    assert calls == {"run_training": 0, "evaluate": 1}  # evaluated (no champion yet), not trained
    assert records.load(D1)["state"] == "decide" and registry.events() == []

    monkeypatch.setattr(Registry, "commit", real["commit"])
    (done,) = retrain(spark, cfg, [D1])["dates"]
    assert calls == {"run_training": 0, "evaluate": 1}  # decided on the recorded evaluation
    assert done["resumed"] and done["run_id"] == f"churn-{D1}-a1" and done["state"] == "done"
    assert {p: os.stat(p).st_mtime_ns for p in run_files} == run_files  # the run's files untouched

    clean = Registry(roots["clean"], "churn")
    same = ("action", "date", "registers", "promoted", "reason", "pushes", "champion_before", "champion_after",
            "metric", "holdout", "challenger", "champion")

    def where_clean(value, root):  # the two stores' paths differ; everything else must not
        return json.loads(json.dumps(value).replace(root, roots["clean"]))

    assert where_clean([{k: e[k] for k in same} for e in registry.events()], roots["killed"]) == \
        [{k: e[k] for k in same} for e in clean.events()]
    assert registry.state().aliases() == clean.state().aliases() == {"champion": "v000001"}
    ours, theirs = (torch.load(os.path.join(r.version_dir("v000001"), "state_dict.pt")) for r in (registry, clean))
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    assert where_clean(records.load(D1)["decision"], roots["killed"]) == Records(clean).load(D1)["decision"]

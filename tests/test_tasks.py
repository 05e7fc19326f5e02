"""Tasks (binary, multiclass, regression), the best epoch, array features: pure logic first, then real runs."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, demo_config
from ringtrain.config import Config, MonitorConfig
from ringtrain.errors import ConfigError
from ringtrain.schema import build
from ringtrain.training.loop import is_better
from ringtrain.training.models import TabularMLP, build_model, model_inputs
from ringtrain.training.tasks import MulticlassTask, RegressionTask, balanced_weights


def split_sums(task, outputs, label, parts=2):
    """Metric sums computed on `parts` slices (as ranks would) and added: must equal one pass."""
    total = task.zero_sums()
    for out, lab in zip(torch.tensor_split(outputs, parts), torch.tensor_split(label, parts)):
        total += task.metric_sums(out, lab)
    return total


def test_multiclass_metrics_are_exact_and_additive_across_ranks():
    task = MulticlassTask(classes=["a", "b", "c"])
    label = torch.tensor([0, 0, 0, 1, 1, 2], dtype=torch.float32)
    predicted = [0, 0, 1, 1, 2, 2]  # per class: a tp 2 of 3 (pred 2); b tp 1 of 2 (pred 2); c tp 1 of 1 (pred 2)
    outputs = torch.nn.functional.one_hot(torch.tensor(predicted), 3).float() * 5
    m = task.finalize(split_sums(task, outputs, label))
    assert m["accuracy"] == 4 / 6 and m["rows"] == 6
    f1 = [2 * 2 / (3 + 2), 2 * 1 / (2 + 2), 2 * 1 / (1 + 2)]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3, abs=1e-12)
    assert m["baseline_accuracy"] == 3 / 6
    assert m["baseline_macro_f1"] == pytest.approx((2 * 3 / (3 + 6)) / 3, abs=1e-12)
    prior = [3 / 6, 2 / 6, 1 / 6]
    assert m["baseline_loss"] == pytest.approx(-sum(p * math.log(p) for p in prior), abs=1e-12)
    expected_loss = torch.nn.functional.cross_entropy(outputs, label.long()).item()
    assert m["loss"] == pytest.approx(expected_loss, abs=1e-6)
    three = task.finalize(split_sums(task, outputs, label, parts=3))
    assert three.pop("loss") == pytest.approx(m.pop("loss"), rel=1e-6)  # float32 losses, summed differently
    assert three == m  # counts: exact


def test_regression_metrics_are_in_label_units_against_the_train_mean():
    task = RegressionTask(mean=10.0, std=2.0, standardized=True)
    y = torch.tensor([8.0, 10.0, 12.0, 14.0])
    pred = torch.tensor([9.0, 10.0, 12.0, 12.0])
    m = task.finalize(split_sums(task, ((pred - 10) / 2).reshape(-1, 1), (y - 10) / 2))
    sse, sae = 1 + 0 + 0 + 4, 1 + 0 + 0 + 2
    base_sse, base_sae = 4 + 0 + 4 + 16, 2 + 0 + 2 + 4
    assert m["rmse"] == pytest.approx(math.sqrt(sse / 4)) and m["mae"] == pytest.approx(sae / 4)
    assert m["baseline_rmse"] == pytest.approx(math.sqrt(base_sse / 4))
    assert m["baseline_mae"] == pytest.approx(base_sae / 4)
    assert m["r2"] == pytest.approx(1 - sse / base_sse)
    assert m["loss"] == pytest.approx(sse / 4 / 4)  # MSE in standard units (std 2)


def test_balanced_class_weights():
    assert balanced_weights([30, 10, 0]) == [40 / 90, 40 / 30, 0.0]


@pytest.mark.parametrize("value, best, direction, better", [
    (0.5, None, "min", True), (0.4, 0.5, "min", True), (0.5, 0.5, "min", False), (0.6, 0.5, "max", True),
    (0.5, 0.6, "max", False), (float("nan"), None, "max", False)])
def test_is_better(value, best, direction, better):
    assert is_better(value, best, direction) is better


def test_monitor_direction_defaults():
    assert MonitorConfig().direction() == "min"
    assert MonitorConfig(metric="r2").direction() == "max"
    assert MonitorConfig(metric="auc", mode="min").direction() == "min"


def test_builtin_model_predictions_change_when_only_an_array_feature_changes():
    torch.manual_seed(0)
    model = build_model({"name": "tabular_mlp", "hidden": [16]}, 3, [4], array_width=5).eval()
    batch = {"num": torch.randn(6, 3), "cat": torch.randint(0, 4, (6, 1)), "arr": torch.randn(6, 5)}
    before = model(*model_inputs(batch))
    batch["arr"] = batch["arr"].clone()
    batch["arr"][2, 4] += 1.0  # one element of one row's array
    after = model(*model_inputs(batch))
    changed = (before != after).tolist()
    assert changed == [False, False, True, False, False, False]


def test_multiclass_model_has_one_output_per_class():
    model = TabularMLP(3, [4], hidden=[8], num_outputs=5)
    assert model(torch.randn(2, 3), torch.zeros(2, 1, dtype=torch.long)).shape == (2, 5)


def config(**etl_changes):
    etl = {"dataset": "d", "source": {"format": "csv", "path": "x"},
           "columns": [{"name": "id", "type": "string", "role": "key"},
                       {"name": "x", "type": "double", "role": "numeric"},
                       {"name": "y", "type": "double", "role": "label"}],
           "label": {"column": "y", "task": "regression"}, "split": {"key": "id"}}
    return {"etl": {**etl, **etl_changes}}


@pytest.mark.parametrize("data, message", [
    (config(derived=[{"name": "z", "expr": "x * 2", "type": "double"}]),
     "etl.derived[0]: 'z' is not declared in etl.columns"),
    (config(label={"column": "y", "task": "regression", "values": ["0", "1"]}),
     "etl.label.values: task 'regression' takes no values"),
    ({**config(), "train": {"monitor": {"metric": "auc"}}},
     "train.monitor.metric: 'auc' is not a metric of task 'regression'; use one of loss, rmse, mae, r2"),
    ({**config(), "train": {"class_weight": "balanced"}}, "train.class_weight: only for classification"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build(Config, data)


# ---------------------------------------------------------------------------------------------------------
# Real runs: Spark ETL, the CLI, the launcher.

BIN = os.path.dirname(sys.executable)
COLORS = ["red", "green", "blue", "black"]


def write_tabular(folder: str, rows: int, seed: int) -> None:
    """Numeric, categorical and array features with a known signal in both labels:
    cls (3 classes, argmax of noisy linear scores) and target (linear plus noise of std 0.3)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    emb = rng.normal(size=(rows, 4)).round(4)
    color = rng.choice(COLORS, rows)
    effect = pd.Series(color).map(dict(zip(COLORS, [1.0, -1.0, 0.5, 0.0]))).to_numpy()
    scores = np.stack([2 * x[:, 0] + 1.5 * emb[:, 0], 2 * x[:, 1] - x[:, 0], effect + 1.5 * emb[:, 1]], 1)
    cls = np.array(["low", "mid", "top"])[np.argmax(scores + rng.normal(scale=0.3, size=scores.shape), 1)]
    target = 3 * x[:, 0] - 2 * x[:, 1] + 2 * emb[:, 2] + effect + rng.normal(scale=0.3, size=rows)
    os.makedirs(folder, exist_ok=True)
    pd.DataFrame({"id": [f"r{i:06d}" for i in range(rows)], "x1": x[:, 0].round(5), "x2": x[:, 1].round(5),
                  "x3": x[:, 2].round(5), "color": color, "emb": [json.dumps(list(v)) for v in emb],
                  "cls": cls, "target": target.round(5)}).to_csv(os.path.join(folder, "data.csv"), index=False)


def tabular_config(root: str, task: str) -> str:
    label_column = "cls" if task == "multiclass" else "target"
    label = {"column": label_column, "task": task}
    if task == "regression":
        label["standardize"] = True
    cfg = {
        "store": {"root": root},
        "spark": {"master": "local[2]", "conf": {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4",
                                                 "spark.ui.showConsoleProgress": "false"}},
        "etl": {"dataset": task, "source": {"format": "csv", "path": f"{root}/raw"},
                "columns": [{"name": "id", "type": "string", "role": "key", "nullable": False},
                            *[{"name": n, "type": "double", "role": "numeric"} for n in ("x1", "x2", "x3")],
                            {"name": "color", "type": "string", "role": "categorical"},
                            {"name": "emb", "type": "array<float>", "role": "array", "array_length": 4},
                            {"name": "cls", "type": "string", "role": "label" if task == "multiclass" else "ignore"},
                            {"name": "target", "type": "double", "role": "label" if task == "regression" else "ignore"}],
                "label": label, "split": {"key": "id"},
                "shards": {"rows_per_shard": 2000, "row_group_rows": 512, "max_world_size": 2}},
        "train": {"engine": "auto", "num_workers": 2, "epochs": 4, "batch_size": 64, "lr": 0.003,
                  "model": {"hidden": [32, 16]}},
    }
    path = os.path.join(root, f"{task}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def cli(*args) -> dict:
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "PYSPARK_PYTHON": sys.executable}
    out = subprocess.run([f"{BIN}/ringtrain", *args, "--json"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout[out.stdout.index("{"):])


def cli_run(tmp_path, task):
    write_tabular(str(tmp_path / "raw"), 8000, seed=11)
    path = tabular_config(str(tmp_path), task)
    etl = cli("etl", "--config", path)
    train = cli("train", "--config", path, "--set", "store.run_id=run")
    ranks = train["ranks"]
    assert len(ranks) == 2 and ranks[0]["param_sha256"] == ranks[1]["param_sha256"]
    with open(os.path.join(train["model_dir"], "artifact.json")) as f:
        artifact = json.load(f)
    assert artifact["inputs"]["arr"] == {"columns": ["emb"], "lengths": [4], "dtype": "float32"}
    print(task, "validation metrics:", ranks[0]["metrics"])  # shown by pytest -rA
    return etl, ranks[0]["metrics"], artifact, train


@pytest.mark.spark
@pytest.mark.slow
def test_multiclass_run_through_the_cli_beats_its_baselines(tmp_path):
    etl, m, artifact, _ = cli_run(tmp_path, "multiclass")
    assert etl["rows_good"] == 8000 and not etl["quarantined"]
    assert m["task"] == "multiclass"
    assert m["accuracy"] > m["baseline_accuracy"] + 0.3, m
    assert m["macro_f1"] > m["baseline_macro_f1"] + 0.4, m
    assert m["loss"] < m["baseline_loss"] - 0.4, m
    assert artifact["output"]["classes"] == ["low", "mid", "top"]  # fitted on the train split, sorted
    assert artifact["output"]["shape"] == ["batch", 3]


@pytest.mark.spark
@pytest.mark.slow
def test_regression_run_through_the_cli_beats_the_train_mean_and_uses_the_array_feature(tmp_path):
    _, m, artifact, train = cli_run(tmp_path, "regression")
    assert m["task"] == "regression"
    assert m["r2"] > 0.8, m
    assert m["rmse"] < 0.5 * m["baseline_rmse"] and m["mae"] < 0.5 * m["baseline_mae"], m
    assert artifact["output"]["standardized"] is True
    # The array feature reached the model: changing only it changes the exported model's predictions.
    program = torch.export.load(os.path.join(train["model_dir"], "model.pt2")).module()
    num = torch.zeros(4, len(artifact["inputs"]["num"]["columns"]))  # x1..x3 and their __missing flags
    cat = torch.full((4, 1), 2, dtype=torch.long)
    arr = torch.zeros(4, 4)
    shifted = arr.clone()
    shifted[:, 2] = 1.0  # emb[2] carries 2 * label units of signal
    before, after = program(num, cat, arr), program(num, cat, shifted)
    assert torch.all(after - before > 0.5 / artifact["output"]["label_std"]), (before, after)


def churn_frame(rows=3000):
    from ringtrain.etl.sample_data import generate_churn
    frame, _ = generate_churn(rows, seed=5)
    return frame


def etl_config(root, *, columns_changes=None, extra_columns=(), derived=(), label=None):
    from ringtrain.config import ColumnSpec, DerivedColumn, LabelConfig
    cfg = demo_config(root, ["etl.shards.rows_per_shard=500", "etl.shards.row_group_rows=256"])
    columns = [dataclasses.replace(c, **(columns_changes or {}).get(c.name, {})) for c in cfg.etl.columns]
    columns += [build(ColumnSpec, c) for c in extra_columns]
    etl = dataclasses.replace(cfg.etl, columns=columns, derived=[build(DerivedColumn, d) for d in derived],
                              label=build(LabelConfig, label) if label else cfg.etl.label)
    return dataclasses.replace(cfg, etl=etl)


def run_etl_at(spark, root, cfg):
    from ringtrain.etl.pipeline import run_etl
    from ringtrain.layout import RunStore
    from ringtrain.manifest import load_manifest
    summary = run_etl(spark, cfg.etl, RunStore.create(root).dataset(cfg.etl.dataset))
    return summary, load_manifest(summary["dataset_dir"])


HIGH = {"name": "high_charges", "type": "int", "role": "label", "nullable": False}
HIGH_LABEL = {"column": "high_charges", "task": "binary", "values": ["0", "1"]}


@pytest.mark.spark
def test_a_derived_label_gives_byte_identical_shards_to_the_same_label_computed_outside(spark, tmp_path):
    frame = churn_frame()
    outside, inside = str(tmp_path / "outside"), str(tmp_path / "inside")
    for root, with_label in ((outside, True), (inside, False)):
        os.makedirs(f"{root}/raw")
        table = frame.assign(high_charges=(frame.monthly_charges > 50).astype(int)) if with_label else frame
        table.to_csv(f"{root}/raw/data.csv", index=False)
    ignore_churned = {"churned": {"role": "ignore"}}
    _, computed = run_etl_at(spark, outside, etl_config(outside, columns_changes=ignore_churned,
                                                        extra_columns=[HIGH], label=HIGH_LABEL))
    _, derived = run_etl_at(spark, inside, etl_config(
        inside, columns_changes=ignore_churned, extra_columns=[HIGH], label=HIGH_LABEL,
        derived=[{"name": "high_charges", "expr": "IF(monthly_charges > 50, 1, 0)", "type": "int"}]))
    shards = {s: [(x.file, x.rows, x.sha256) for x in derived.splits[s].shards]
              for s in derived.splits}
    assert shards == {s: [(x.file, x.rows, x.sha256) for x in computed.splits[s].shards]
                      for s in computed.splits}
    assert derived.splits["train"].rows + derived.splits["val"].rows + \
        derived.splits["test"].rows == 3000


@pytest.mark.spark
def test_derived_rows_that_fail_are_quarantined_and_an_unknown_column_fails_naming_the_expression(spark, tmp_path):
    frame = churn_frame()
    frame.loc[::50, "tenure_months"] = 0  # income / tenure_months: division by zero gives null
    root = str(tmp_path)
    os.makedirs(f"{root}/raw")
    frame.to_csv(f"{root}/raw/data.csv", index=False)
    ratio = {"name": "income_per_month", "type": "double", "role": "numeric", "nullable": False}
    cfg = etl_config(root, extra_columns=[ratio], derived=[
        {"name": "income_per_month", "expr": "income / tenure_months", "type": "double"}])
    cfg = dataclasses.replace(cfg, etl=dataclasses.replace(cfg.etl, max_bad_fraction=0.2))
    summary, manifest = run_etl_at(spark, root, cfg)
    expected = int((frame.income.isna() | (frame.tenure_months == 0)).sum())
    assert summary["quarantined"] == {"derived:income_per_month": expected}
    assert "income_per_month" in manifest.features.numeric_columns

    typo = etl_config(root, extra_columns=[ratio], derived=[
        {"name": "income_per_month", "expr": "income / tenure_month", "type": "double"}])
    with pytest.raises(ConfigError, match=r"etl.derived\[0\] \(income_per_month\): expression "
                                          r"'income / tenure_month' does not work on the source"):
        run_etl_at(spark, root, typo)


def test_incremental_mode_freezes_derived_columns(tmp_path):
    from ringtrain.etl.incremental import frozen_settings
    derived = [{"name": "high_charges", "expr": "IF(monthly_charges > 50, 1, 0)", "type": "int"}]
    cfg = etl_config(str(tmp_path), extra_columns=[HIGH], label=HIGH_LABEL, derived=derived)
    assert frozen_settings(cfg.etl)["etl.derived"] == derived
    assert "etl.derived" not in frozen_settings(etl_config(str(tmp_path)).etl)


@pytest.mark.spark
@pytest.mark.slow
def test_early_stopped_run_keeps_the_best_epoch(spark, small_dataset, tmp_path):
    from ringtrain.jobs.commands import format_summary
    from ringtrain.layout import RunStore
    from ringtrain.training.checkpoint import list_checkpoints
    from ringtrain.training.launcher import launch
    from ringtrain.training.spec import WorkerSpec
    cfg, dataset_dir = small_dataset
    # A learning rate high enough that validation loss gets worse after a few epochs; patience 1.
    cfg = demo_config(cfg.store.root, ["train.epochs=8", "train.lr=0.03", "train.early_stopping_patience=1",
                                       "train.checkpoint_every_steps=0", "train.num_workers=2",
                                       "train.max_attempts=1"])
    store = RunStore.create(str(tmp_path), "early").prepare()
    spec = WorkerSpec(config=cfg, dataset_dir=dataset_dir, paths=store.paths(), run_id=store.run_id)
    results = launch(spark.sparkContext, spec)
    r0 = results[0]
    assert r0.stopped_early and r0.epochs_run == r0.best_epoch + 2  # patience 1: one worse epoch
    with open(os.path.join(store.model_dir, "artifact.json")) as f:
        artifact = json.load(f)
    history = artifact["history"]
    best = min(range(len(history)), key=lambda e: history[e]["loss"])
    assert r0.best_epoch == artifact["best_epoch"] == best and history[-1]["loss"] > history[best]["loss"]
    assert r0.metrics == artifact["metrics"] == history[best]
    # The artifact's weights are the checkpoint written at the end of the best epoch, not the last one.
    checkpoints = {torch.load(p, weights_only=False)["epoch"]: p for p in list_checkpoints(store.checkpoint_dir)}
    best_ckpt = torch.load(checkpoints[best + 1], weights_only=False)["model"]
    last_ckpt = torch.load(checkpoints[r0.epochs_run], weights_only=False)["model"]
    published = torch.load(os.path.join(store.model_dir, "state_dict.pt"))
    assert published.keys() == best_ckpt.keys()
    assert all(torch.equal(published[k], best_ckpt[k]) for k in published)
    assert not all(torch.equal(published[k], last_ckpt[k]) for k in published)
    summary = format_summary("train", {"ranks": results, "train_wall_s": 1.0, "spark_startup_s": 1.0,
                                       "model_dir": store.model_dir, "run_dir": store.run_dir})
    assert (f"best epoch {best + 1} of {r0.epochs_run} by validation loss (lower is better), stopped early: "
            f"the model is that epoch's") in summary

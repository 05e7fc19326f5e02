"""Retrain and predict for every task (binary, multiclass, regression): pure logic first (the gate's metric,
direction and baseline per task, score columns, un-standardized predictions, the output's partition and kept
columns), then the real `ringtrain` CLI on Spark local mode: three dates, the second corrupted, then predict."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import ROOT
from ringtrain.config import Config, PromoteConfig
from ringtrain.errors import ConfigError
from ringtrain.jobs.commands import format_evaluate, format_retrain
from ringtrain.jobs.predict import output_columns, partition_of
from ringtrain.jobs.retrain import baseline, decide, improvement
from ringtrain.registry import Registry
from ringtrain.schema import build
from ringtrain.training.scoring import score_arrays, task_scores, to_label_units
from ringtrain.training.tasks import MulticlassTask, RegressionTask


def config(task: str, promote: dict | None = None) -> dict:
    label = {"binary": {"column": "y", "task": "binary", "values": ["0", "1"]},
             "multiclass": {"column": "y", "task": "multiclass"},
             "regression": {"column": "y", "task": "regression"}}[task]
    return {"etl": {"dataset": "d", "mode": "incremental", "source": {"format": "csv", "path": "x/dt={partition}"},
                    "columns": [{"name": "id", "type": "string", "role": "key"},
                                {"name": "x", "type": "double", "role": "numeric"},
                                {"name": "y", "type": "string" if task != "regression" else "double",
                                 "role": "label"}],
                    "label": label, "split": {"key": "id"}},
            "retrain": {"model": "m", **({"promote": promote} if promote else {})}}


# ---------------------------------------------------------------------------------------------------------
# The gate per task (pure)

@pytest.mark.parametrize("task, metric", [("binary", "auc"), ("multiclass", "macro_f1"), ("regression", "rmse")])
def test_the_gate_metric_defaults_to_the_tasks_own(task, metric):
    assert build(Config, config(task)).retrain.promote.metric == metric


@pytest.mark.parametrize("task, metric", [("binary", "loss"), ("multiclass", "accuracy"), ("regression", "mae"),
                                          ("regression", "r2")])
def test_a_configured_gate_metric_of_the_task_is_kept(task, metric):
    assert build(Config, config(task, {"metric": metric})).retrain.promote.metric == metric


@pytest.mark.parametrize("task, metric, message", [
    ("regression", "auc", "retrain.promote.metric: 'auc' is not a metric of task 'regression' (etl.label.task); the "
                          "regression metrics are loss, rmse, mae, r2: use one of them, or leave the key out for "
                          "the default 'rmse'"),
    ("multiclass", "auc", "retrain.promote.metric: 'auc' is not a metric of task 'multiclass' (etl.label.task); the "
                          "multiclass metrics are loss, accuracy, macro_f1: use one of them, or leave the key out "
                          "for the default 'macro_f1'"),
    ("binary", "rmse", "retrain.promote.metric: 'rmse' is not a metric of task 'binary' (etl.label.task); the "
                       "binary metrics are loss, accuracy, auc: use one of them, or leave the key out for the "
                       "default 'auc'"),
])
def test_a_gate_metric_the_task_lacks_fails_at_load(task, metric, message):
    with pytest.raises(ConfigError) as err:
        build(Config, config(task, {"metric": metric}))
    assert str(err.value) == message


def test_a_gate_metric_the_task_lacks_fails_through_load_config(tmp_path):
    from ringtrain.config import load_config
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config("multiclass")))
    assert load_config(str(path)).retrain.promote.metric == "macro_f1"
    with pytest.raises(ConfigError, match=r"c.yaml: retrain.promote.metric: 'rmse' is not a metric of task "
                                          r"'multiclass'"):
        load_config(str(path), ["retrain.promote.metric=rmse"])


@pytest.mark.parametrize("metric, new, old, gain", [
    ("auc", 0.8, 0.7, 0.1), ("accuracy", 0.6, 0.7, -0.1), ("macro_f1", 0.5, 0.25, 0.25), ("r2", 0.9, 0.5, 0.4),
    ("loss", 0.4, 0.5, 0.1), ("rmse", 2.0, 3.0, 1.0), ("rmse", 3.0, 2.0, -1.0), ("mae", 1.0, 1.5, 0.5),
])
def test_improvement_has_the_direction_of_the_metric(metric, new, old, gain):
    assert improvement(metric, new, old) == pytest.approx(gain)


def multiclass_metrics(outputs, labels):
    task = MulticlassTask(classes=["a", "b", "c"])
    return task.finalize(task.metric_sums(torch.tensor(outputs, dtype=torch.float32),
                                          torch.tensor(labels, dtype=torch.float32)))


def regression_metrics(outputs, labels, mean):
    task = RegressionTask(mean=mean, std=1.0, standardized=False)
    return task.finalize(task.metric_sums(torch.tensor(outputs, dtype=torch.float64),
                                          torch.tensor(labels, dtype=torch.float64)))


def test_baselines_are_the_majority_class_and_the_train_mean():
    labels = [0, 0, 0, 1, 2, 0]  # class a is the majority: 4 of 6 rows
    m = multiclass_metrics(torch.eye(3)[[0, 1, 2, 1, 2, 0]].tolist(), labels)
    # Always predicting a: accuracy 4/6; F1 of a 2*4/(4+6), 0 for b and c, averaged over the 3 classes present.
    assert baseline("accuracy", m) == (pytest.approx(4 / 6), "always the majority class")
    assert baseline("macro_f1", m) == (pytest.approx(0.8 / 3), "always the majority class")
    assert baseline("loss", m) == (m["baseline_loss"], "the class prior")
    r = regression_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 5.0], mean=2.0)  # train mean 2: errors 1, 1, 3
    assert baseline("rmse", r) == (pytest.approx((11 / 3) ** 0.5), "always the train mean")
    assert baseline("mae", r) == (pytest.approx(5 / 3), "always the train mean")
    assert baseline("loss", r) == (pytest.approx(11 / 3), "always the train mean")
    assert baseline("r2", r) == (0.0, "always the train mean")
    assert baseline("auc", {"auc": 0.7}) == (0.5, "a random ranking")


def overall(task, value, base, metric, **parts):
    row = lambda v: {"task": task, metric: v, f"baseline_{metric}": base, "rows": 100}
    return {"overall": row(value), "partitions": {k: row(v) for k, v in parts.items()}, "split": "test"}


def test_the_regression_gate_takes_lower_rmse_as_better():
    gate = PromoteConfig(metric="rmse", min_improvement=0.1, max_partition_drop=0.5)
    first = overall("regression", 2.0, 4.0, "rmse", a=2.0)
    assert decide(gate, first, None) == (True, "first model: rmse 2.0000 beats the baseline 4.0000")
    assert decide(gate, overall("regression", 4.5, 4.0, "rmse", a=4.5), None) == (
        False, "no champion yet, and the challenger's rmse 4.5000 does not beat the baseline 4.0000: not promoted")
    better = overall("regression", 1.5, 4.0, "rmse", a=1.5)
    assert decide(gate, better, first)[0] is True
    assert decide(gate, first, better) == (
        False, "champion kept: rmse 2.0000 vs champion 1.5000: improvement -0.5000 is not above "
               "retrain.promote.min_improvement=0.1")
    dropped = overall("regression", 1.5, 4.0, "rmse", a=2.6, b=0.5)  # better overall, worse on a by 0.6
    assert decide(gate, dropped, overall("regression", 2.0, 4.0, "rmse", a=2.0, b=2.0)) == (
        False, "champion kept: on partition a rmse drops 0.6000 (2.0000 -> 2.6000), more than "
               "retrain.promote.max_partition_drop=0.5")


def test_the_multiclass_gate_must_beat_the_majority_class():
    gate = PromoteConfig(metric="macro_f1", min_improvement=0.0, max_partition_drop=None)
    assert decide(gate, overall("multiclass", 0.2, 0.25, "macro_f1"), None)[0] is False
    assert decide(gate, overall("multiclass", 0.6, 0.25, "macro_f1"), None) == (
        True, "first model: macro_f1 0.6000 beats the baseline 0.2500")


def retrain_summary(metric, task, challenger, base):
    decision = {"outcome": "promoted", "version": "v000001", "champion_before": None, "champion_after": "v000001",
                "metric": metric, "reason": "first model", "champion": None,
                "challenger": {"split": "test", "overall": {"task": task, "rows": 10, metric: challenger,
                                                            f"baseline_{metric}": base}}}
    return {"model": "m", "champion": "v000001", "plot": "p.png", "wall_s": 1.0,
            "dates": [{"date": "2026-01-01", "dataset_version": "v000001", "decision": decision,
                       "timings_s": {"etl": 1.0, "train": 2.0, "evaluate": 3.0}}]}


@pytest.mark.parametrize("metric, task, line", [
    ("rmse", "regression", "gate metric rmse (lower is better); baseline 4.0000 (always the train mean)"),
    ("macro_f1", "multiclass", "gate metric macro_f1 (higher is better); baseline 4.0000 (always the majority class)"),
    ("auc", "binary", "gate metric auc (higher is better); baseline 0.5000 (a random ranking)"),
])
def test_the_retrain_summary_names_the_gate_metric_its_direction_and_baseline(metric, task, line):
    lines = format_retrain(retrain_summary(metric, task, 2.0, 4.0)).splitlines()
    assert lines[2] == "          " + line


def test_evaluate_prints_the_metrics_of_every_task():
    mc = multiclass_metrics(torch.eye(3)[[0, 1, 2, 1, 2, 0]].tolist(), [0, 0, 0, 1, 2, 0])
    rg = regression_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 5.0], mean=2.0)
    for m, expected in [
        (mc, f"accuracy {mc['accuracy']:.4f} (majority class 0.6667), macro-F1 {mc['macro_f1']:.4f} (majority class "
             f"0.2667), log-loss {mc['loss']:.4f} (prior {mc['baseline_loss']:.4f})"),
        (rg, f"RMSE {rg['rmse']:.4f} (train mean 1.9149), MAE 1.0000 (train mean 1.6667), R^2 {rg['r2']:.4f}")]:
        text = format_evaluate({"version": "v000002", "model": "f", "split": "test", "dataset_dir": "d",
                                "overall": m, "partitions": {"p1": m}})
        assert text.splitlines() == ["EVALUATE  v000002 on test of d", f"          {m['rows']:,} rows: {expected}",
                                     f"          partition p1: {m['rows']:,} rows, {expected}"]


# ---------------------------------------------------------------------------------------------------------
# Score columns per task (pure)

class Fixed(torch.nn.Module):
    """A 'model' that returns fixed outputs, whatever its inputs."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = torch.nn.Parameter(torch.tensor(outputs, dtype=torch.float32), requires_grad=False)

    def forward(self, num, cat):
        return self.outputs


def run_scores(task, features, outputs):
    inputs = [np.zeros((len(outputs), 1), np.float32), np.zeros((len(outputs), 1), np.int64)]
    return task_scores(task, features), score_arrays(Fixed(outputs), task_scores(task, features), inputs)


def test_multiclass_scores_are_the_class_value_and_one_probability_per_class():
    scores, out = run_scores("multiclass", {"label_values": ["low", "mid", "top"]},
                             [[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.5, 1.0]])
    assert scores.columns == [("prediction", "string"), ("prob_low", "double"), ("prob_mid", "double"),
                              ("prob_top", "double")]
    assert list(out) == ["prediction", "prob_low", "prob_mid", "prob_top"]
    assert out["prediction"].tolist() == ["low", "top", "mid"]
    probs = np.stack([out["prob_low"], out["prob_mid"], out["prob_top"]], 1)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-12) and probs.dtype == np.float64
    e = np.exp(2.0)
    assert probs[0].tolist() == pytest.approx([e / (e + 2), 1 / (e + 2), 1 / (e + 2)], abs=1e-7)


def test_regression_predictions_are_in_the_labels_units():
    stats = {"mean": 50.0, "std": 4.0, "standardized": True}
    scores, out = run_scores("regression", {"label_stats": stats}, [[0.5], [-1.0], [0.0]])
    assert scores.columns == [("prediction", "double")]
    assert out["prediction"].tolist() == pytest.approx([52.0, 46.0, 50.0], abs=1e-6)
    raw = {"mean": 50.0, "std": 4.0, "standardized": False}  # trained on the label itself: nothing to undo
    assert run_scores("regression", {"label_stats": raw}, [[0.5], [7.0]])[1]["prediction"].tolist() == \
        pytest.approx([0.5, 7.0])
    assert to_label_units(np.array([1.0, -2.0]), stats).tolist() == [54.0, 42.0]


def test_binary_scores_stay_the_probability():
    scores, out = run_scores("binary", {"label_values": ["0", "1"]}, [[0.0], [2.0]])
    assert scores.columns == [("score", "double")]
    assert out["score"].tolist() == pytest.approx([0.5, 1 / (1 + np.exp(-2.0))], abs=1e-7)


# ---------------------------------------------------------------------------------------------------------
# predict's output: partition and kept columns (pure)

@pytest.mark.parametrize("explicit, path, partition", [
    ("day3", "raw/dt=2026-01-03", "day3"),
    (None, "raw/dt=2026-01-03", "2026-01-03"),
    (None, "s3a://bucket/raw/region=eu/dt=2026-01-03/", "2026-01-03"),
    (None, "/data/dt=2026-01-03/part-0.csv", "2026-01-03"),
    (None, "/data/scores/in", "/data/scores/in"),
    (None, "db.rows_to_score", "db.rows_to_score"),  # a table name
])
def test_the_partition_is_given_or_the_last_name_value_folder_or_the_input(explicit, path, partition):
    assert partition_of(explicit, path) == partition


PRESENT = ["id", "x", "y", "note"]


def test_output_columns_are_key_scores_version_partition_then_kept_ones():
    assert output_columns("id", ["score"], [], PRESENT) == ["id", "score", "model_version", "partition"]
    assert output_columns("id", ["prediction", "prob_a"], ["note", "y"], PRESENT) == [
        "id", "prediction", "prob_a", "model_version", "partition", "note", "y"]


@pytest.mark.parametrize("keep, message", [
    (["nope"], "--keep nope: the input has no column 'nope'; its columns are id, x, y, note"),
    (["id"], "--keep id: the output already has a column 'id' (it has id, score, model_version, partition); "
             "drop this --keep"),
    (["note", "note"], "--keep note is given twice; give it once"),
])
def test_a_bad_keep_is_a_config_error_naming_it(keep, message):
    with pytest.raises(ConfigError) as err:
        output_columns("id", ["score"], keep, PRESENT)
    assert str(err.value) == message


def test_a_kept_column_may_not_have_the_name_of_a_score_column():
    with pytest.raises(ConfigError, match=r"^--keep prediction: the output already has a column 'prediction'"):
        output_columns("id", ["prediction"], ["prediction"], PRESENT + ["prediction"])
    with pytest.raises(ConfigError, match=r"^the model's key column 'partition' has the name of an output column"):
        output_columns("partition", ["score"], [], ["partition"])


# ---------------------------------------------------------------------------------------------------------
# Through the real CLI on Spark local mode: three dates, the second corrupted, then predict.

BIN = os.path.dirname(sys.executable)
D1, D2, D3 = "2026-01-01", "2026-01-02", "2026-01-03"
COLORS = ["red", "green", "blue"]
EFFECT = {"red": 1.0, "green": -1.0, "blue": 0.0, "black": 0.0}
CLASSES = ["low", "mid", "top"]


def day(n, seed, first_id, *, corrupted=False, drift=False):
    """One day of rows with a known signal in both labels: cls (3 classes: argmax of noisy linear scores) and
    target (50 + linear + noise of std 0.3, so its units are far from standard ones).
    corrupted: cls is 'low' on every row (a stuck feed) and target is shuffled across rows (a broken join).
    drift: half the rows have a color the first day never saw (black, outside the frozen vocabulary) and a large
    x1, which makes cls 'top' (where x1 alone says 'low') and adds 6 to target: a pattern the first model cannot
    know, and gets confidently wrong."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    color = rng.choice(COLORS, n)
    if drift:
        color = np.where(rng.random(n) < 0.5, "black", color)
    black = color == "black"
    x[black, 0] = rng.normal(2.0, 0.5, black.sum())
    effect = pd.Series(color).map(EFFECT).to_numpy()
    scores = np.stack([2 * x[:, 0], 2 * x[:, 1] - x[:, 0], 1.5 * effect], 1)
    cls = np.array(CLASSES)[np.argmax(scores + rng.normal(scale=0.3, size=scores.shape), 1)]
    cls = np.where(black, "top", cls)
    target = 50 + 3 * x[:, 0] - 2 * x[:, 1] + 2 * effect + 6 * black + rng.normal(scale=0.3, size=n)
    if corrupted:
        cls = np.full(n, "low")
        target = rng.permutation(target)
    return pd.DataFrame({"id": [f"r{i:06d}" for i in range(first_id, first_id + n)], "x1": x[:, 0].round(5),
                         "x2": x[:, 1].round(5), "color": color, "cls": cls, "target": target.round(5)})


def write_days(raw):
    first_id = 0
    # The corrupted day is small next to the drifted one: every later challenger still trains on it too.
    for date, rows, seed, kind in [(D1, 1500, 1, {}), (D2, 1000, 2, {"corrupted": True}), (D3, 8000, 3, {"drift": True})]:
        os.makedirs(os.path.join(raw, f"dt={date}"))
        day(rows, seed, first_id, **kind).to_csv(os.path.join(raw, f"dt={date}", "data.csv"), index=False)
        first_id += rows


def retrain_config(root, task, promote):
    label = {"column": "cls" if task == "multiclass" else "target", "task": task}
    if task == "regression":
        label["standardize"] = True
    cfg = {
        "store": {"root": root},
        "spark": {"master": "local[2]", "conf": {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2",
                                                 "spark.ui.showConsoleProgress": "false"}},
        "retrain": {"model": task, "promote": promote},
        "etl": {"dataset": task, "mode": "incremental",
                "source": {"format": "csv", "path": f"{root}/raw/dt={{partition}}"},
                "columns": [{"name": "id", "type": "string", "role": "key", "nullable": False},
                            {"name": "x1", "type": "double", "role": "numeric", "nullable": False},
                            {"name": "x2", "type": "double", "role": "numeric", "nullable": False},
                            {"name": "color", "type": "string", "role": "categorical"},
                            {"name": "cls", "type": "string", "role": "label" if task == "multiclass" else "ignore"},
                            {"name": "target", "type": "double",
                             "role": "label" if task == "regression" else "ignore"}],
                "label": label, "split": {"key": "id", "train": 0.6, "val": 0.2, "test": 0.2},
                "shards": {"rows_per_shard": 4000, "row_group_rows": 256, "max_world_size": 1}},
        "train": {"num_workers": 1, "epochs": 4, "batch_size": 64, "lr": 0.01, "warmup_steps": 5,
                  "model": {"hidden": [32, 16], "embedding_dim": 4}},
    }
    path = os.path.join(root, f"{task}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def ringtrain(*args, timeout=600):
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "PYSPARK_PYTHON": sys.executable}
    return subprocess.run([f"{BIN}/ringtrain", *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def retrain_three_dates(tmp_path, task, promote):
    root = str(tmp_path)
    write_days(os.path.join(root, "raw"))
    path = retrain_config(root, task, promote)
    done = ringtrain("retrain", "--config", path, "--from", D1, "--to", D3)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)  # shown by pytest -rA
    events = Registry(root, task).events()
    for e in events:  # per partition, shown by pytest -rA: how far each decision was from the gate's thresholds
        print(e["date"], {who: {k: round(v[e["metric"]], 4) for k, v in e[who]["partitions"].items()}
                          for who in ("challenger", "champion") if e[who]})
    assert [(e["date"], e["registers"], e["promoted"], e["metric"]) for e in events] == [
        (D1, "v000001", True, promote["metric"]), (D2, "v000002", False, promote["metric"]),
        (D3, "v000003", True, promote["metric"])]
    lines = done.stdout.strip().splitlines()
    heads = [line for line in lines if line.startswith("RETRAIN")]
    assert heads == [f"RETRAIN   {task} {D1}: PROMOTED v000001 to champion",
                     f"RETRAIN   {task} {D2}: champion kept (v000001); v000002 registered",
                     f"RETRAIN   {task} {D3}: PROMOTED v000003 to champion"]
    # The corrupted day's challenger is much worse on the first day's rows: the per-partition guardrail says so.
    assert events[1]["reason"].startswith("champion kept: ")
    assert f"on partition {D1} {promote['metric']} drops " in events[1]["reason"]
    return root, path, events, lines


def read_output(folder):
    return pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(os.path.join(folder, "part-*.parquet")))])


@pytest.mark.spark
@pytest.mark.slow
def test_multiclass_retrain_and_predict_through_the_cli(tmp_path):
    gate = {"metric": "macro_f1", "min_improvement": 0.02, "max_partition_drop": 0.15}
    root, path, events, lines = retrain_three_dates(tmp_path, "multiclass", gate)
    first = events[0]["challenger"]["overall"]
    assert lines.count(f"          gate metric macro_f1 (higher is better); baseline "
                       f"{first['baseline_macro_f1']:.4f} (always the majority class)") == 1

    # Score day 3's rows with the champion, keeping the true class beside the prediction.
    out = str(tmp_path / "scores")
    scored = ringtrain("predict", "--config", path, "--input", f"{root}/raw/dt={D3}", "--output", out,
                       "--keep", "cls", "--keep", "color")
    assert scored.returncode == 0, scored.stderr[-3000:]
    t = read_output(out)
    assert t.column_names == ["id", "prediction", "prob_low", "prob_mid", "prob_top", "model_version", "partition",
                              "cls", "color"]
    assert t.num_rows == 8000 and set(t.column("model_version").to_pylist()) == {"v000003"}
    assert set(t.column("partition").to_pylist()) == {D3}  # from the input's dt= folder
    probs = np.stack([t.column(f"prob_{c}").to_numpy() for c in CLASSES], 1)
    assert np.abs(probs.sum(1) - 1).max() < 1e-9
    assert t.column("prediction").to_pylist() == [CLASSES[i] for i in probs.argmax(1)]
    truth = pd.read_csv(os.path.join(root, "raw", f"dt={D3}", "data.csv")).set_index("id")
    rows = truth.loc[t.column("id").to_pylist()]
    assert t.column("cls").to_pylist() == rows["cls"].tolist()
    # A kept feature is the input's value, not its encoding (black is not in the frozen vocabulary at all).
    assert t.column("color").to_pylist() == rows["color"].tolist() and "black" in t.column("color").to_pylist()
    accuracy = np.mean(np.array(t.column("prediction").to_pylist()) == np.array(t.column("cls").to_pylist()))
    majority = truth["cls"].value_counts(normalize=True).max()
    assert accuracy > majority + 0.2, (accuracy, majority)
    manifest = json.load(open(os.path.join(out, "_manifest.json")))
    assert manifest["columns"] == t.column_names and manifest["model_version"] == "v000003"

    # A --keep that the input lacks: exit 2 (a config error) naming it, and the published output stays.
    bad = ringtrain("predict", "--config", path, "--input", f"{root}/raw/dt={D3}", "--output", out,
                    "--keep", "clss")
    assert bad.returncode == 2
    assert ("ringtrain predict: error: --keep clss: the input has no column 'clss'; its columns are id, x1, x2, "
            "color, cls, target") in bad.stderr
    assert os.path.exists(os.path.join(out, "_SUCCESS"))


@pytest.mark.spark
@pytest.mark.slow
def test_regression_retrain_and_predict_through_the_cli(tmp_path):
    gate = {"metric": "rmse", "min_improvement": 0.0, "max_partition_drop": 0.6}
    root, path, events, lines = retrain_three_dates(tmp_path, "regression", gate)
    first = events[0]["challenger"]["overall"]
    assert lines.count(f"          gate metric rmse (lower is better); baseline {first['baseline_rmse']:.4f} "
                       f"(always the train mean)") == 1

    out = str(tmp_path / "scores")
    scored = ringtrain("predict", "--config", path, "--input", f"{root}/raw/dt={D3}", "--output", out,
                       "--partition", "day-3", "--keep", "target")
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "columns id, prediction, model_version, partition, target; partition day-3" in scored.stdout
    t = read_output(out)
    assert t.column_names == ["id", "prediction", "model_version", "partition", "target"]
    assert t.num_rows == 8000 and set(t.column("partition").to_pylist()) == {"day-3"}
    prediction, target = t.column("prediction").to_numpy(), t.column("target").to_numpy()
    # In the label's units: the mean prediction is within the champion's holdout RMSE of the mean label (a mean
    # error is at most the RMSE; the label mean is about 50 and its std about 4, far from standard units).
    champion = events[2]["challenger"]["overall"]
    assert abs(prediction.mean() - target.mean()) < champion["rmse"], (prediction.mean(), target.mean(), champion)
    rmse = float(np.sqrt(np.mean((prediction - target) ** 2)))
    assert rmse < 0.5 * champion["baseline_rmse"], (rmse, champion)

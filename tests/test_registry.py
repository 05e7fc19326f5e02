"""The registry, the store lock and the promotion gate: pure logic on real files, no Spark."""
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from ringtrain.config import PromoteConfig
from ringtrain.errors import ModelLocked, ModelNotFound
from ringtrain.lock import FileLock
from ringtrain.registry import Registry
from ringtrain.jobs.retrain import date_range, decide


def fake_model_dir(folder, marker):
    os.makedirs(folder, exist_ok=True)
    for name, data in (("model.pt2", marker), ("state_dict.pt", marker), ("artifact.json", '{"program": "model.pt2"}')):
        with open(os.path.join(folder, name), "w") as f:
            f.write(data)
    features = os.path.join(folder, "features.json")
    with open(features, "w") as f:
        f.write("{}")
    return features


def register(registry, tmp_path, marker, promoted):
    features = fake_model_dir(str(tmp_path / marker), marker)
    version = registry.stage_version(str(tmp_path / marker), features, {"run_id": marker})
    return registry.commit({"action": "decide", "date": marker, "registers": version, "promoted": promoted,
                            "pushes": {"champion": version} if promoted else {}, "reason": f"test {marker}"})


def test_versions_and_aliases_are_the_replay_of_the_history(tmp_path):
    reg = Registry(str(tmp_path / "store"), "churn")
    register(reg, tmp_path, "d1", True)
    register(reg, tmp_path, "d2", False)
    register(reg, tmp_path, "d3", True)
    state = reg.state()
    assert sorted(state.versions) == ["v000001", "v000002", "v000003"]
    assert state.aliases() == {"champion": "v000003"}
    assert [e["seq"] for e in state.events] == [1, 2, 3]
    with open(os.path.join(reg.resolve("champion"), "model.pt2")) as f:
        assert f.read() == "d3"  # the version holds its own copy of the artifact

    reg.rollback(reason="bad model")
    assert reg.state().alias("champion") == "v000001"
    reg.promote("v000002", reason="the user says so")
    assert reg.state().alias("champion") == "v000002"
    reg.rollback()
    assert reg.state().alias("champion") == "v000001"
    with pytest.raises(ModelNotFound, match="no earlier version to roll back to"):
        reg.rollback()
    with pytest.raises(ModelNotFound, match="has no version 'v000009'"):
        reg.promote("v000009")
    with pytest.raises(ModelNotFound, match="no version or alias 'staging'"):
        reg.resolve("staging")
    assert [e["action"] for e in reg.events()] == ["decide"] * 3 + ["rollback", "promote", "rollback"]
    assert [e["reason"] for e in reg.events()][3:5] == ["bad model", "the user says so"]


def test_an_unregistered_version_folder_is_invisible_and_replaced(tmp_path):
    reg = Registry(str(tmp_path / "store"), "churn")
    features = fake_model_dir(str(tmp_path / "killed"), "killed")
    assert reg.stage_version(str(tmp_path / "killed"), features, {}) == "v000001"  # then the run dies
    assert reg.state().versions == {} and reg.state().alias("champion") is None
    event = register(reg, tmp_path, "rerun", True)
    assert event["registers"] == "v000001"
    with open(os.path.join(reg.version_dir("v000001"), "model.pt2")) as f:
        assert f.read() == "rerun"


def test_racing_writers_get_distinct_event_numbers(tmp_path):
    """Writers in parallel append without losing or overwriting an event (exclusive creation)."""
    from concurrent.futures import ThreadPoolExecutor
    reg = Registry(str(tmp_path), "m")
    register(reg, tmp_path, "x", True)

    def writer(i):
        return [Registry(str(tmp_path), "m").commit({"action": "promote", "pushes": {"shadow": "v000001"},
                                                      "reason": f"{i}-{j}"})["seq"] for j in range(5)]
    with ThreadPoolExecutor(8) as pool:
        seqs = sorted(s for got in pool.map(writer, range(8)) for s in got)
    assert seqs == list(range(2, 42))
    assert sorted(e["reason"] for e in reg.events()[1:]) == sorted(f"{i}-{j}" for i in range(8) for j in range(5))


def test_a_held_lock_refuses_a_second_owner(tmp_path):
    path = str(tmp_path / "LOCK")
    with FileLock(path, 60, "model 'm'"):
        with pytest.raises(ModelLocked, match=f"locked by pid {os.getpid()}"):
            FileLock(path, 60, "model 'm'").acquire()
    assert not os.path.exists(path)  # released


def test_a_lock_whose_owner_died_is_taken_over_and_logged(tmp_path, caplog):
    path = str(tmp_path / "LOCK")
    child = subprocess.run([sys.executable, "-c", f"from ringtrain.lock import FileLock\n"
                            f"FileLock({path!r}, 3600, 'm').acquire()\nimport os; os._exit(0)"], timeout=60)
    assert child.returncode == 0 and os.path.exists(path)  # the owner exited without releasing
    with caplog.at_level(logging.WARNING, logger="ringtrain.lock"):
        with FileLock(path, 60, "model 'm'"):
            with open(path) as f:
                assert json.load(f)["pid"] == os.getpid()
    assert "taking over the stale lock" in caplog.text and "no longer runs" in caplog.text


def test_an_expired_lock_is_taken_over(tmp_path, caplog):
    path = str(tmp_path / "LOCK")
    with open(path, "w") as f:
        json.dump({"host": "elsewhere", "pid": 1, "taken_utc": "then", "expires": time.time() - 5, "token": "x"}, f)
    with caplog.at_level(logging.WARNING, logger="ringtrain.lock"):
        with FileLock(path, 60, "model 'm'"):
            pass
    assert "expired" in caplog.text


def metrics(auc, **parts):
    row = lambda a: {"auc": a, "accuracy": 0.7, "loss": 0.5, "baseline_accuracy": 0.7, "baseline_loss": 0.6}
    return {"overall": row(auc), "partitions": {k: row(v) for k, v in parts.items()}}


GATE = PromoteConfig(metric="auc", min_improvement=0.01, max_partition_drop=0.05)


@pytest.mark.parametrize("challenger, champion, promoted, reason", [
    (metrics(0.80, a=0.80), None, True, "first model: auc 0.8000 beats the baseline 0.5000"),
    (metrics(0.48, a=0.48), None, False, "no champion yet, and the challenger's auc 0.4800 does not beat the baseline"),
    (metrics(0.85, a=0.85), metrics(0.80, a=0.80), True, "auc 0.8500 vs champion 0.8000 (+0.0500 > 0.01)"),
    (metrics(0.805, a=0.805), metrics(0.80, a=0.80), False, "improvement +0.0050 is not above retrain.promote.min_improvement=0.01"),
    (metrics(0.85, a=0.70, b=0.95), metrics(0.80, a=0.80, b=0.80), False,
     "on partition a auc drops 0.1000 (0.8000 -> 0.7000), more than retrain.promote.max_partition_drop=0.05"),
])
def test_the_gate_decides_and_says_why(challenger, champion, promoted, reason):
    outcome, why = decide(GATE, challenger, champion)
    assert outcome is promoted and reason in why


def test_loss_is_better_when_lower():
    gate = PromoteConfig(metric="loss", min_improvement=0.0, max_partition_drop=None)
    new, old = metrics(0.8), metrics(0.8)
    new["overall"]["loss"], old["overall"]["loss"] = 0.40, 0.45
    assert decide(gate, new, old)[0] is True and decide(gate, old, new)[0] is False


def test_backfill_dates_are_every_day_in_order():
    assert date_range("2026-02-27", "2026-03-02") == ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]


def test_a_finished_training_is_trusted_only_with_a_complete_model_artifact(tmp_path):
    from ringtrain.jobs.retrain import model_problem
    folder = str(tmp_path / "model")
    assert "artifact" in model_problem(folder) and "missing" in model_problem(folder)
    fake_model_dir(folder, "weights")
    assert model_problem(folder) is None
    os.remove(os.path.join(folder, "model.pt2"))
    assert model_problem(folder) == f"folder {folder} lacks model.pt2"
    with open(os.path.join(folder, "artifact.json"), "w") as f:
        f.write('{"program": "mod')  # cut short
    assert "is not readable (JSONDecodeError" in model_problem(folder)


def test_a_recorded_evaluation_is_trusted_only_while_it_still_holds(tmp_path):
    from ringtrain.jobs.retrain import evaluation_problem
    registry = Registry(str(tmp_path), "m")
    fake_model_dir(str(tmp_path / "run"), "weights")
    (tmp_path / "features.json").write_text("{}")
    version = registry.stage_version(str(tmp_path / "run"), str(tmp_path / "features.json"), {"run_id": "r1"})
    result = {"overall": {"auc": 0.7}, "partitions": {}}
    evaluation = {"version": version, "run_id": "r1", "champion_version": None, "split": "test",
                  "challenger": result, "champion": None}
    assert evaluation_problem(evaluation, registry, None, "test", "auc") is None
    assert "the champion is v000009" in evaluation_problem(evaluation, registry, "v000009", "test", "auc")
    assert "incomplete (no overall loss" in evaluation_problem(evaluation, registry, None, "test", "loss")
    assert evaluation_problem(None, registry, None, "test", "auc") == "is missing"
    assert "holds run r1" in evaluation_problem({**evaluation, "run_id": "r0"}, registry, None, "test", "auc")
    os.remove(os.path.join(registry.version_dir(version), "version.json"))
    assert "the copy did not finish" in evaluation_problem(evaluation, registry, None, "test", "auc")

"""Chaos: a schedule of dates retrained by `ringtrain retrain` (as a scheduler runs it) while kills land at seeded
random points, on the local store and on the S3-compatible server. Every date must end decided exactly once, the
registry and its aliases consistent, every registered version and decision those of the same schedule retrained
without kills, no dataset or model version half-visible, and no process or port left behind.

The kills (a seeded plan: each kind at least once per store, spread over the dates, each after a seeded delay;
see `kill_plan`):
- `etl`: SIGKILL the retrain (driver, JVM, Spark workers: its whole session) during the ETL, after a seeded delay
  of up to 6 s from its start (a date's ETL takes about 10 s here; the files it had staged are recorded);
- `driver`: SIGKILL it during training, once this run has written a checkpoint;
- `rank`: SIGKILL one rank's Python training worker while both train (the retrain itself must finish the date);
- `lock holder`: SIGKILL it after training, while it evaluates and decides, holding the model's lock.
After a kill of the retrain, the scheduler's next run (the next kill's, or a clean one) continues the date.

In CI: 3 dates on the local store, 2 on the S3 server (about 4 minutes in all). Bigger, by hand (each date adds
about half a minute to the reference and a minute per store; the S3 schedule is the first RINGTRAIN_CHAOS_S3_DATES
dates of the same schedule):
    RINGTRAIN_CHAOS_DATES=8 RINGTRAIN_CHAOS_S3_DATES=4 RINGTRAIN_CHAOS_SEED=5 \
        .venv/bin/python -m pytest tests/test_chaos.py -s
The figures (dates, kills tried and landed by kind, decisions) are printed and kept in <tmp>/chaos-<store>.json.
"""
import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, listening_ports, own_tree, ports_left, worker_processes
from ringtrain import store
from ringtrain.config import load_config
from ringtrain.etl.sample_data import write_daily_churn
from ringtrain.layout import DatasetStore, RunStore
from ringtrain.manifest import load_manifest, shard_paths
from ringtrain.registry import VERSION_MARKER, Registry
from ringtrain.jobs.retrain import Records, retrain

pytestmark = [pytest.mark.spark, pytest.mark.slow]
BIN = os.path.dirname(sys.executable)
SEED = int(os.environ.get("RINGTRAIN_CHAOS_SEED", "3"))
KINDS = ("etl", "driver", "rank", "lock holder")
DELAY_S = {"etl": 6.0, "driver": 1.5, "rank": 1.5, "lock holder": 1.5}  # a kill's delay: uniform in [0, this]
STAGE = {"etl": ("etl",), "driver": ("train",), "lock holder": ("evaluate", "decide")}  # where a kill must land
SETTINGS = ["etl.shards.rows_per_shard=1000", "etl.shards.row_group_rows=256", "train.batch_size=64",
            "train.epochs=3", "train.checkpoint_every_steps=5", "retrain.promote.min_improvement=0.01",
            "retrain.promote.max_partition_drop=0.1",
            "spark.conf={spark.ui.enabled: 'false', spark.sql.shuffle.partitions: '4'}"]


def schedule(count: int) -> list[dict]:
    """`count` days of churn data; every third one with noisy labels (a challenger the gate must turn down)."""
    return [dict(date=f"2026-02-{i + 1:02d}", rows=2500, label_noise=0.6 if i % 3 == 1 else 0.0,
                 drift=0.5 if i % 3 == 2 else 0.0) for i in range(count)]


def kill_plan(dates: list[str], rng: random.Random) -> dict[str, list[tuple[str, float]]]:
    """date -> the kills aimed at its runs, in order: (kind, delay after the kill point in seconds). Every kind
    once in a seeded order, spread over the dates; more dates draw more kills. A date's kills go in the order of
    its steps (a rerun continues where the killed run stopped, so a later step's kill cannot precede an earlier
    one's), and no date gets both a rank kill and a lock holder kill: the retrain survives the first and finishes
    the date, and a rerun after the second does not train again."""
    extra = [rng.choice(KINDS) for _ in range(max(0, len(dates) - len(KINDS)))]
    while True:
        kinds = list(KINDS) + extra
        rng.shuffle(kinds)
        plan = {d: [] for d in dates}
        for i, kind in enumerate(kinds):
            plan[dates[i % len(dates)]].append((kind, round(rng.uniform(0.0, DELAY_S[kind]), 2)))
        if all(sum(k in ("rank", "lock holder") for k, _ in kills) <= 1 for kills in plan.values()):
            return {d: sorted(kills, key=lambda kill: KINDS.index(kill[0])) for d, kills in plan.items()}


def command(root: str, raw: str, date: str, *extra: str) -> list[str]:
    sets = [f"store.root={root}", f"etl.source.path={raw}/dt={{partition}}", *SETTINGS]
    return [f"{BIN}/ringtrain", "retrain", "--config", os.path.join(ROOT, "conf", "retrain.yaml"), "--date", date,
            *[x for s in sets for x in ("--set", s)], *extra]


class Chaos:
    """Runs one store's schedule through the CLI, aiming the planned kills, and keeps the figures."""

    def __init__(self, root: str, raw: str, logs: str):
        self.root, self.raw, self.logs = root, raw, logs
        self.registry = Registry(RunStore.create(root).root, "churn")
        self.records = Records(self.registry)
        self.dataset_dir = store.join(RunStore.create(root).root, "datasets", "churn_daily")
        self.tried = {k: 0 for k in KINDS}
        self.landed = {k: 0 for k in KINDS}
        self.runs = 0
        self.landings = []

    def start(self, date: str) -> subprocess.Popen:
        self.runs += 1
        env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "PYSPARK_PYTHON": sys.executable}
        log = open(os.path.join(self.logs, f"run{self.runs:02d}-{date}.log"), "w")
        return subprocess.Popen(command(self.root, self.raw, date), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_of(self) -> str:
        return open(os.path.join(self.logs, sorted(os.listdir(self.logs))[-1])).read()[-4000:]

    def state(self, date: str) -> str | None:
        record = self.records.load(date)
        return record["state"] if record else None

    def dataset_files(self) -> set[str]:
        return set(store.list_files(self.dataset_dir))

    def wait(self, proc, ready, timeout: float = 600.0):
        """Poll until `ready()` gives something (returned), or None when the run ended first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = ready()
            if found:
                return found
            if proc.poll() is not None:
                return None
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for a kill point; the run's log:\n{self.log_of()}")

    def run_date(self, date: str, kills: list[tuple[str, float]]) -> None:
        for kind, delay in kills:
            self.tried[kind] += 1
            proc = self.start(date)
            try:
                landed = self.aim(proc, date, kind, delay)
            finally:
                if proc.poll() is None and kind != "rank":
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=900)
            if landed:
                self.landed[kind] += 1
                self.landings.append({"date": date, "kind": kind, "delay_s": delay, "at": landed})
            if kind == "rank":  # the retrain survives a rank's death by itself: it must have finished the date
                assert proc.returncode == 0, f"a killed rank failed the retrain:\n{self.log_of()}"
            else:
                assert proc.returncode in (0, -signal.SIGKILL), self.log_of()
            # A killed retrain's workers die with their Spark tasks, its JVM with its session.
            deadline = time.time() + 60
            while worker_processes() and time.time() < deadline:
                time.sleep(0.5)
        if self.state(date) != "done":
            proc = self.start(date)
            assert proc.wait(timeout=900) == 0, f"the clean rerun of {date} failed:\n{self.log_of()}"
        assert self.state(date) == "done"

    def aim(self, proc, date: str, kind: str, delay: float) -> str | None:
        """Wait for the kind's kill point, then `delay` more, and kill; what the record said when the kill landed
        (None: the run finished first)."""
        if kind == "etl":  # the ETL under way (its shards reach staging in its last tenth of a second or so)
            before = self.dataset_files()
            point = lambda: self.state(date) == "etl"  # noqa: E731
        elif kind == "driver":  # a checkpoint this run wrote
            before = set(self.checkpoints(date))
            point = lambda: self.state(date) == "train" and set(self.checkpoints(date)) - before  # noqa: E731
        elif kind == "rank":  # both ranks training
            point = lambda: self.state(date) == "train" and len(worker_processes()) >= 2  # noqa: E731
        else:
            point = lambda: self.state(date) in ("evaluate", "decide")  # noqa: E731
        if not self.wait(proc, point):
            return None
        time.sleep(delay)
        if kind == "rank":
            ranks = worker_processes()
            if not ranks or proc.poll() is not None:
                return None
            victim = random.Random(f"{SEED}-{date}").choice(ranks)
            try:
                victim.send_signal(signal.SIGKILL)
            except Exception:  # noqa: BLE001 - it ended on its own in the meantime: the kill missed
                return None
            return "training (a rank)"
        if proc.poll() is not None:
            return None
        at = self.state(date)
        os.killpg(proc.pid, signal.SIGKILL)
        if kind == "etl" and at == "etl":
            return f"state etl, {len(self.dataset_files() - before)} files staged"
        # Too late for its step (the run had moved on): the kill landed, but not where it was aimed.
        return f"state {at}" if at in STAGE[kind] else None

    def checkpoints(self, date: str) -> list[str]:
        runs = store.join(RunStore.create(self.root).root, "runs")
        return [p for p in store.list_files(runs) if p.startswith(f"churn-{date}-") and "/checkpoints/ckpt-" in p]


def reference(spark, root: str, raw: str, dates: list[str]) -> Registry:
    """The same schedule retrained without kills (in this process's Spark)."""
    cfg = load_config(os.path.join(ROOT, "conf", "retrain.yaml"),
                      [f"store.root={root}", f"etl.source.path={raw}/dt={{partition}}", *SETTINGS])
    retrain(spark, cfg, dates)
    return Registry(root, "churn")


SAME = ("action", "date", "registers", "promoted", "reason", "pushes", "champion_before", "champion_after", "metric",
        "holdout", "challenger", "champion")


def comparable(registry: Registry, root: str) -> list[dict]:
    """The history's decisions with the store's root written as <root>: two stores' paths differ, nothing else."""
    return json.loads(json.dumps([{k: e.get(k) for k in SAME} for e in registry.events()]).replace(root, "<root>"))


def assert_consistent(chaos: Chaos, ref: Registry, ref_root: str, dates: list[str]) -> None:
    registry, root = chaos.registry, RunStore.create(chaos.root).root
    events = registry.events()
    # Every date decided exactly once, in order, each decision the uninterrupted schedule's.
    assert [e["date"] for e in events if e["action"] == "decide"] == dates
    assert [e["action"] for e in events] == ["decide"] * len(dates)
    ref_events = comparable(ref, ref_root)[:len(dates)]
    assert comparable(registry, root) == ref_events
    for date in dates:
        assert chaos.records.load(date)["state"] == "done"
    # The registry: every registered version complete and bit for bit the reference's; the aliases the replay of
    # the history, and the reference's after the same dates.
    state = registry.state()
    assert sorted(state.versions) == [e["registers"] for e in events]
    for version in state.versions:
        marker = store.read_json(store.join(registry.version_dir(version), VERSION_MARKER))
        for name in marker["files"]:
            assert store.exists(store.join(registry.version_dir(version), name)), (version, name)
        ours = torch.load(io.BytesIO(store.read_bytes(store.join(registry.version_dir(version), "state_dict.pt"))))
        theirs = torch.load(os.path.join(ref.version_dir(version), "state_dict.pt"))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs), version
    assert state.aliases() == {"champion": events[-1]["champion_after"]}
    assert events[-1]["champion_after"] == ref_events[-1]["champion_after"]
    # No dataset version half-visible: each published version has its manifest, and every shard it names is there
    # with the size it records.
    datasets = DatasetStore(chaos.dataset_dir)
    versions = [store.join(chaos.dataset_dir, name) for name in datasets.versions()]
    assert len(versions) >= len(dates) and datasets.latest() == versions[-1]
    for version in versions:
        manifest = load_manifest(version)
        for split, info in manifest.splits.items():
            for path, shard in zip(shard_paths(version, manifest, split), info.shards):
                assert store.exists(path), path
                with store.open_input(path) as f:
                    assert f.size() == shard.bytes, path


def report(chaos: Chaos, name: str, dates: list[str], tmp: str) -> dict:
    figures = {"store": name, "seed": SEED, "dates": len(dates), "retrain_runs": chaos.runs,
               "kills_tried": chaos.tried, "kills_landed": chaos.landed, "landings": chaos.landings,
               "decisions": [(e["date"], e["registers"], e["promoted"]) for e in chaos.registry.events()]}
    with open(os.path.join(tmp, f"chaos-{name}.json"), "w") as f:
        json.dump(figures, f, indent=2)
    print(f"\n[chaos] {json.dumps(figures)}")
    return figures


@pytest.fixture(scope="module")
def uninterrupted(spark, tmp_path_factory):
    """The schedule's raw days and its reference retrain (the longest schedule any store's run uses)."""
    count = int(os.environ.get("RINGTRAIN_CHAOS_DATES", "3"))
    base = str(tmp_path_factory.mktemp("chaos"))
    raw = os.path.join(base, "raw")
    dates = write_daily_churn(raw, schedule(count))
    ref_root = os.path.join(base, "reference")
    return raw, dates, reference(spark, ref_root, raw, dates), ref_root


def run_chaos(name: str, root: str, uninterrupted, tmp: str, dates_used: int) -> dict:
    raw, dates, ref, ref_root = uninterrupted
    dates = dates[:dates_used]
    ports, tree = listening_ports(), {p.pid for p in own_tree()}
    logs = os.path.join(tmp, f"logs-{name}")
    os.makedirs(logs)
    chaos = Chaos(root, raw, logs)
    plan = kill_plan(dates, random.Random(f"{SEED}-{name}"))
    for date in dates:
        chaos.run_date(date, plan[date])
    figures = report(chaos, name, dates, tmp)
    assert_consistent(chaos, ref, ref_root, dates)
    # Every kind was aimed, and every kind landed at least once (a kill point the run passed before the kill
    # came counts as tried, not landed).
    assert all(chaos.tried[k] >= 1 and chaos.landed[k] >= 1 for k in KINDS), figures
    # Nothing left behind: no retrain, JVM or worker process, no port.
    deadline = time.time() + 60
    while (left := [p for p in own_tree() if p.pid not in tree]) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, [" ".join(p.cmdline())[:200] for p in left]
    assert ports_left(ports) == {}
    assert not store.exists(chaos.records.lock_path)
    return figures


def test_chaos_schedule_on_the_local_store(uninterrupted, tmp_path):
    run_chaos("local", str(tmp_path / "store"), uninterrupted, str(tmp_path), len(uninterrupted[1]))


def test_chaos_schedule_on_the_s3_server(uninterrupted, s3_server, tmp_path):
    dates = min(int(os.environ.get("RINGTRAIN_CHAOS_S3_DATES", "2")), len(uninterrupted[1]))
    run_chaos("s3", s3_server.fresh_uri("chaos"), uninterrupted, str(tmp_path), dates)

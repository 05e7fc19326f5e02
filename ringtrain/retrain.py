"""Scheduled retraining, one run per date: `ringtrain retrain --config F --date D` (or --from D1 --to D2).

Per date, under the model's lock (`ringtrain.lock`, exit 75 while another retrain holds it):

    etl       incremental ETL of partition D: a new dataset version (a no-op when already published)
    train     a challenger, from scratch or from the champion's weights (retrain.warm_start), in the
              run `<model>-<date>-a<N>`; a rerun after a crash resumes that run from its checkpoints
    evaluate  challenger (copied into the registry as the next, still unregistered, version) and
              champion, from their artifacts alone, on the same holdout: the new version's
              retrain.holdout_split, overall and per partition
    decide    the gate (retrain.promote) gives promote or keep, with its reason
    publish   ONE registry event registers the version, records the decision and, when promoted,
              moves `champion`; then the per-date record says done (and the MLflow mirror follows)

The per-date record (`models/<model>/retrain/dates/<D>.json`, replaced atomically) holds the state,
the dataset version, the run id, both models' metrics and the decision. The registry changes only in
the publish step, by one atomic event: a retrain killed before it leaves the registry as it was,
and the rerun redoes or resumes the date; killed after it, the rerun finds the date's decision in
the history and only completes the record. A date that is done is skipped (exit 0, the summary
says so); --force redoes it (a new run, a new decision).
"""
from __future__ import annotations

import datetime as dt
import io
import logging
import math
import time

from ringtrain.config import Config, PromoteConfig
from ringtrain.errors import ConfigError
from ringtrain.lock import FileLock
from ringtrain.registry import CHAMPION, Registry
from ringtrain.store import RunStore, atomic_write_bytes, atomic_write_json, exists, join, listdir, read_json

log = logging.getLogger("ringtrain.retrain")
BASELINES = {"auc": lambda m: 0.5, "accuracy": lambda m: m["baseline_accuracy"], "loss": lambda m: m["baseline_loss"]}


# ----------------------------------------------------------------------------- the gate (pure)

def improvement(metric: str, new: float, old: float) -> float:
    """How much better `new` is than `old` (positive: better); loss is better when lower."""
    return old - new if metric == "loss" else new - old


def decide(gate: PromoteConfig, challenger: dict, champion: dict | None) -> tuple[bool, str]:
    """Promote or keep, and why. `challenger`/`champion`: `scoring.evaluate` results on the same holdout."""
    m = gate.metric
    new = challenger["overall"]
    baseline = BASELINES[m](new)
    refusals = []
    if not improvement(m, new[m], baseline) > 0:
        refusals.append(f"the challenger's {m} {new[m]:.4f} does not beat the baseline {baseline:.4f}")
    if champion is None:
        if refusals:
            return False, f"no champion yet, and {refusals[0]}: not promoted"
        return True, f"first model: {m} {new[m]:.4f} beats the baseline {baseline:.4f}"
    old = champion["overall"]
    gain = improvement(m, new[m], old[m])
    if not gain > gate.min_improvement:
        refusals.append(f"{m} {new[m]:.4f} vs champion {old[m]:.4f}: improvement {gain:+.4f} is not above "
                        f"retrain.promote.min_improvement={gate.min_improvement:g}")
    if gate.max_partition_drop is not None:
        for name, part in sorted(challenger["partitions"].items()):
            ref = champion["partitions"].get(name)
            if ref is None or math.isnan(part[m]) or math.isnan(ref[m]):
                continue
            drop = -improvement(m, part[m], ref[m])
            if drop > gate.max_partition_drop:
                refusals.append(f"on partition {name} {m} drops {drop:.4f} ({ref[m]:.4f} -> {part[m]:.4f}), more "
                                f"than retrain.promote.max_partition_drop={gate.max_partition_drop:g}")
    if refusals:
        return False, "champion kept: " + "; ".join(refusals)
    return True, (f"{m} {new[m]:.4f} vs champion {old[m]:.4f} ({gain:+.4f} > {gate.min_improvement:g}), "
                  f"beats the baseline {baseline:.4f}, no partition drops more than {gate.max_partition_drop}")


# ----------------------------------------------------------------------------- dates and records

def date_range(first: str, last: str) -> list[str]:
    """Every day from `first` to `last` inclusive (ISO dates)."""
    try:
        start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    except ValueError as exc:
        raise ConfigError(f"--from/--to must be ISO dates (YYYY-MM-DD): {exc}") from None
    if end < start:
        raise ConfigError(f"--from {first} is after --to {last}")
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


class Records:
    """The per-date records of one model's retrains."""

    def __init__(self, registry: Registry):
        self.root = join(registry.root, "retrain")

    def path(self, date: str) -> str:
        return join(self.root, "dates", f"{date}.json")

    def load(self, date: str) -> dict | None:
        return read_json(self.path(date)) if exists(self.path(date)) else None

    def save(self, record: dict) -> dict:
        record = {**record, "updated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_json(self.path(record["date"]), record)
        return record

    def all(self) -> list[dict]:
        folder = join(self.root, "dates")
        return [read_json(join(folder, n)) for n in listdir(folder) if n.endswith(".json")]

    @property
    def lock_path(self) -> str:
        return join(self.root, "LOCK")

    @property
    def plot_path(self) -> str:
        return join(self.root, "champion.png")


# ----------------------------------------------------------------------------- the job

def model_lock(cfg: Config) -> FileLock:
    """The lock that one retrain of `retrain.model` holds from before Spark starts until it ends."""
    registry = Registry(RunStore.create(cfg.store.root).root, cfg.retrain.model)
    return FileLock(Records(registry).lock_path, cfg.retrain.lock_ttl_s, f"model {cfg.retrain.model!r}")


def retrain(spark, cfg: Config, dates: list[str], *, force: bool = False) -> dict:
    """Retrain every date in order; a summary per date. The caller holds `model_lock(cfg)`."""
    registry = Registry(RunStore.create(cfg.store.root).root, cfg.retrain.model)
    records = Records(registry)
    started = time.time()
    done = [retrain_date(spark, cfg, registry, records, date, force=force) for date in dates]
    plot_champion(records)
    return {"model": cfg.retrain.model, "dates": done, "champion": registry.state().alias(CHAMPION),
            "plot": records.plot_path, "wall_s": round(time.time() - started, 1)}


def retrain_date(spark, cfg: Config, registry: Registry, records: Records, date: str, *, force: bool) -> dict:
    previous = records.load(date)
    if previous and previous["state"] == "done" and not force:
        log.info("date %s is already done (%s): nothing to do", date, previous["decision"]["outcome"])
        return {**previous, "skipped": True}
    earlier = registry.state().decisions(date)
    if previous is not None and earlier and not force:
        # Killed between the registry event and the record: the decision stands; complete the record.
        log.info("date %s: the registry already holds its decision (event %d); completing the record",
                 date, earlier[-1]["seq"])
        return {**records.save(finished_record(previous, earlier[-1])), "skipped": False}
    resume = previous is not None and previous["state"] != "done" and not force
    attempt = (previous["attempt"] + (0 if resume else 1)) if previous else 1
    record = {"date": date, "model": cfg.retrain.model, "attempt": attempt, "state": "etl",
              "run_id": f"{cfg.retrain.model}-{date}-a{attempt}", "timings_s": {}, "resumed": resume,
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if resume:
        log.info("date %s: resuming run %s, which stopped in state %r", date, record["run_id"], previous["state"])
    records.save(record)
    return {**run_phases(spark, cfg, registry, records, record, force=force), "skipped": False}


def run_phases(spark, cfg: Config, registry: Registry, records: Records, record: dict, *, force: bool) -> dict:
    from ringtrain.etl.pipeline import run_etl
    from ringtrain.jobs import run_training
    from ringtrain.scoring import evaluate, resolve_model

    date, store = record["date"], RunStore.create(cfg.store.root, record["run_id"])
    timings = record["timings_s"]
    clock = time.time()
    log.info("date %s [1/4] ETL of partition %s", date, date)
    etl = run_etl(spark, cfg.etl, store.dataset(cfg.etl.dataset), partition=date, force=force)
    timings["etl"] = round(time.time() - clock, 1)
    record = records.save({**record, "state": "train", "dataset_dir": etl["dataset_dir"],
                           "dataset_version": etl["version"], "partition_rows": etl["partition_rows"]})

    champion = registry.state().alias(CHAMPION)
    clock = time.time()
    init = join(registry.version_dir(champion), "state_dict.pt") if champion and cfg.retrain.warm_start else None
    log.info("date %s [2/4] training the challenger (run %s, %s)", date, record["run_id"],
             f"warm start from {champion}" if init else "from scratch")
    ranks = run_training(spark, cfg, store, etl["dataset_dir"], init_weights=init)
    timings["train"] = round(time.time() - clock, 1)
    record = records.save({**record, "state": "evaluate", "warm_start_from": champion if init else None,
                           "training": {k: ranks[0][k] for k in ("epochs_run", "batches_run", "steps_per_epoch",
                                                                 "metrics")}})

    clock = time.time()
    log.info("date %s [3/4] evaluating challenger and champion (%s) on %s of %s", date, champion or "none",
             cfg.retrain.holdout_split, etl["version"])
    manifest = read_json(join(etl["dataset_dir"], "manifest.json"))
    version = registry.stage_version(store.model_dir, join(etl["dataset_dir"], manifest["features"]["path"]), {
        "model": cfg.retrain.model, "date": date, "run_id": record["run_id"], "run_dir": store.run_dir,
        "dataset_dir": etl["dataset_dir"], "dataset_version": etl["version"]})
    split = cfg.retrain.holdout_split
    # Both from their registry folders (the challenger's is staged, not yet registered): artifacts alone.
    challenger = evaluate(resolve_model(registry.version_dir(version), store_root=store.root, registry_name=None),
                          etl["dataset_dir"], split)
    incumbent = (evaluate(resolve_model(registry.version_dir(champion), store_root=store.root, registry_name=None),
                          etl["dataset_dir"], split) if champion else None)
    timings["evaluate"] = round(time.time() - clock, 1)
    promoted, reason = decide(cfg.retrain.promote, challenger, incumbent)
    log.info("date %s [4/4] %s: %s", date, "PROMOTED" if promoted else "champion kept", reason)

    event = registry.commit({
        "action": "decide", "date": date, "registers": version, "promoted": promoted, "reason": reason,
        "pushes": {CHAMPION: version} if promoted else {}, "champion_before": champion,
        "champion_after": version if promoted else champion, "metric": cfg.retrain.promote.metric,
        "holdout": {"split": split, "dataset_version": etl["version"]},
        "challenger": challenger, "champion": incumbent, "run_id": record["run_id"],
        "version_info": {"date": date, "run_id": record["run_id"], "dataset_version": etl["version"],
                         "metrics": challenger["overall"]},
    })
    mirrored = mirror(cfg, registry, event)
    timings["total"] = round(sum(timings[k] for k in ("etl", "train", "evaluate")), 1)
    return records.save({**finished_record(record, event), "mlflow": mirrored})


def finished_record(record: dict, event: dict) -> dict:
    return {**record, "state": "done", "decision": {
        "outcome": "promoted" if event["promoted"] else "kept", "reason": event["reason"],
        "event": event["seq"], "version": event["registers"], "champion_before": event["champion_before"],
        "champion_after": event["champion_after"], "metric": event["metric"],
        "challenger": event["challenger"], "champion": event["champion"]}}


def mirror(cfg: Config, registry: Registry, event: dict) -> str | None:
    """Mirror one registry event to MLflow when tracking.mlflow_uri is set. The registry on the store
    is the truth: a mirror that fails is logged and recorded, never fails the retrain."""
    if not cfg.tracking.mlflow_uri:
        return None
    try:
        from ringtrain.tracking import mirror_event
        return mirror_event(cfg.tracking, registry, event)
    except Exception as exc:
        log.warning("MLflow mirror of event %d failed: %s", event["seq"], exc)
        return f"failed: {exc}"


def plot_champion(records: Records) -> None:
    """The champion's holdout metric at every done date (and the challenger's), as a PNG on the store."""
    done = sorted((r for r in records.all() if r["state"] == "done"), key=lambda r: r["date"])
    if not done:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        metric = done[-1]["decision"]["metric"]
        dates = [r["date"] for r in done]
        champ = [(r["decision"]["challenger"] if r["decision"]["outcome"] == "promoted"
                  else r["decision"]["champion"] or {}).get("overall", {}).get(metric, float("nan")) for r in done]
        chall = [r["decision"]["challenger"]["overall"][metric] for r in done]
        fig, ax = plt.subplots(figsize=(7, 3.4))
        x = list(range(len(dates)))  # dates are partition names: plotted as labels, in order
        ax.plot(x, champ, "o-", label="champion (after the decision)")
        ax.plot(x, chall, "x--", label="challenger")
        for i, c, r in zip(x, champ, done):
            if r["decision"]["outcome"] == "promoted":
                ax.annotate("promoted", (i, c), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
        ax.set_xticks(x, dates, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"holdout {metric}"), ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        atomic_write_bytes(records.plot_path, buffer.getvalue())
    except Exception as exc:  # a plot is a convenience; never fail a retrain over it
        log.warning("could not draw %s: %s", records.plot_path, exc)

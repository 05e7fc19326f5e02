"""Scheduled retraining, one run per date: `ringtrain retrain --config F --date D` (or --from D1 --to D2).

Per date, under the model's lock (`ringtrain.lock`, exit 75 while another retrain holds it):

    etl       incremental ETL of partition D: a new dataset version (a no-op when already published)
    train     a challenger, from scratch or from the champion's weights (retrain.warm_start), in the
              run `<model>-<date>-a<N>`; a rerun after a crash resumes that run from its checkpoints
    evaluate  challenger (copied into the registry as the next, still unregistered, version) and
              champion, from their artifacts alone, on the same holdout: the new version's
              retrain.holdout_split, overall and per partition
    decide    the gate (retrain.promote) gives promote or keep, with its reason, on the task's gate metric
              (binary auc, multiclass macro_f1, regression rmse by default; `baseline` says what to beat)
    publish   ONE registry event registers the version, records the decision and, when promoted,
              moves `champion`; then the per-date record says done (and the MLflow mirror follows)

The per-date record (`models/<model>/retrain/dates/<D>.json`, replaced atomically) holds the state,
the dataset version, the run id, both models' metrics and the decision. Its state is the next step to
run: etl, train, evaluate, decide (evaluation done: the gate and publish next), done. The registry
changes only in the publish step, by one atomic event: a retrain killed before it leaves the registry
as it was, and the rerun continues the date from the record's state, never repeating a finished step:
after training it evaluates, after evaluation it decides. Each finished step's outputs are checked
before they are trusted (the published dataset's manifest, the run's complete model artifact, the
evaluation results and the staged version); a step whose outputs fail the check runs again (training
then resumes from the run's checkpoints). Killed after the publish step, the rerun finds the date's
decision in the history and only completes the record. A date that is done is skipped (exit 0, the
summary says so); --force redoes it (a new run, a new decision).
"""
from __future__ import annotations

import datetime as dt
import io
import logging
import math
import time

from ringtrain.config import Config, PromoteConfig, lower_is_better
from ringtrain.errors import ConfigError
from ringtrain.lock import FileLock
from ringtrain.manifest import load_manifest
from ringtrain.registry import CHAMPION, VERSION_MARKER, Registry
from ringtrain.layout import RunStore
from ringtrain.publish import atomic_write_bytes, atomic_write_json
from ringtrain.store import exists, join, listdir, read_json

# The states of a date's record, in order: each names the next step to run.
STATES = ("etl", "train", "evaluate", "decide", "done")
# What a resumed record keeps of the stopped one: the outputs of its finished steps (checked before use).
_CARRIED = ("dataset_dir", "dataset_version", "partition_rows", "warm_start_from", "training", "evaluation")

log = logging.getLogger("ringtrain.jobs.retrain")


# ----------------------------------------------------------------------------- the gate (pure)

def baseline(metric: str, metrics: dict) -> tuple[float, str]:
    """The value a model must beat on `metric`, and what predicts it, from one model's holdout metrics (the
    training loop's, which measure the baselines on the same rows): AUC 0.5; the majority class for accuracy and
    macro-F1; the class prior's log-loss; for regression, always predicting the train split's mean."""
    task = metrics.get("task", "binary")
    if metric == "auc":
        return 0.5, "a random ranking"
    if metric in ("accuracy", "macro_f1"):
        return metrics[f"baseline_{metric}"], "always the majority class"
    if metric == "loss" and task != "regression":
        return metrics["baseline_loss"], "the class prior"
    if metric == "r2":
        return 0.0, "always the train mean"
    return metrics[f"baseline_{metric}"], "always the train mean"  # regression loss, rmse, mae


def improvement(metric: str, new: float, old: float) -> float:
    """How much better `new` is than `old` (positive: better); loss, rmse and mae are better when lower."""
    return old - new if lower_is_better(metric) else new - old


def decide(gate: PromoteConfig, challenger: dict, champion: dict | None) -> tuple[bool, str]:
    """Promote or keep, and why. `challenger`/`champion`: `scoring.evaluate` results on the same holdout.
    `gate.metric` is resolved (the config does it when it loads)."""
    m = gate.metric
    new = challenger["overall"]
    floor, _ = baseline(m, new)
    refusals = []
    if not improvement(m, new[m], floor) > 0:
        refusals.append(f"the challenger's {m} {new[m]:.4f} does not beat the baseline {floor:.4f}")
    if champion is None:
        if refusals:
            return False, f"no champion yet, and {refusals[0]}: not promoted"
        return True, f"first model: {m} {new[m]:.4f} beats the baseline {floor:.4f}"
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
                  f"beats the baseline {floor:.4f}, no partition drops more than {gate.max_partition_drop}")


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
        # The record keeps its state and the outputs of its finished steps: run_phases continues from there.
        record.update({k: previous[k] for k in _CARRIED if k in previous}, state=previous["state"],
                      timings_s=dict(previous.get("timings_s") or {}))
    records.save(record)
    return {**run_phases(spark, cfg, registry, records, record, force=force), "skipped": False}


def run_phases(spark, cfg: Config, registry: Registry, records: Records, record: dict, *, force: bool) -> dict:
    """Run the date's steps from the record's state on. A step the record says is finished is skipped when
    its outputs pass their check, and run again when they do not (the log says which)."""
    date, store = record["date"], RunStore.create(cfg.store.root, record["run_id"])
    record = _etl_step(spark, cfg, records, record, force=force)
    record = _train_step(spark, cfg, registry, records, record, store)
    record = _evaluate_step(cfg, registry, records, record, store)
    evaluation = record["evaluation"]
    champion, version = evaluation["champion_version"], evaluation["version"]
    challenger, incumbent = evaluation["challenger"], evaluation["champion"]
    promoted, reason = decide(cfg.retrain.promote, challenger, incumbent)
    log.info("date %s [4/4] %s: %s", date, "PROMOTED" if promoted else "champion kept", reason)

    event = registry.commit({
        "action": "decide", "date": date, "registers": version, "promoted": promoted, "reason": reason,
        "pushes": {CHAMPION: version} if promoted else {}, "champion_before": champion,
        "champion_after": version if promoted else champion, "metric": cfg.retrain.promote.metric,
        "holdout": {"split": evaluation["split"], "dataset_version": record["dataset_version"]},
        "challenger": challenger, "champion": incumbent, "run_id": record["run_id"],
        "version_info": {"date": date, "run_id": record["run_id"], "dataset_version": record["dataset_version"],
                         "metrics": challenger["overall"]},
    })
    mirrored = mirror(cfg, registry, event)
    timings = record["timings_s"]
    timings["total"] = round(sum(timings.get(k, 0.0) for k in ("etl", "train", "evaluate")), 1)
    return records.save({**finished_record(record, event), "mlflow": mirrored})


def _finished(record: dict, step: str) -> bool:
    """Whether the record's state is past `step` (its outputs are then in the record)."""
    return STATES.index(record["state"]) > STATES.index(step)


def _etl_step(spark, cfg: Config, records: Records, record: dict, *, force: bool) -> dict:
    from ringtrain.etl.pipeline import run_etl
    date = record["date"]
    if _finished(record, "etl"):
        problem = dataset_problem(record.get("dataset_dir"))
        if problem is None:
            log.info("date %s [1/4] ETL: done before (%s)", date, record["dataset_version"])
            return record
        log.warning("date %s [1/4] ETL again: the record's dataset %s", date, problem)
    clock = time.time()
    log.info("date %s [1/4] ETL of partition %s", date, date)
    etl = run_etl(spark, cfg.etl, RunStore.create(cfg.store.root).dataset(cfg.etl.dataset), partition=date,
                  force=force)
    timings = {**record["timings_s"], "etl": round(time.time() - clock, 1)}
    return records.save({**_before(record, "train"), "state": "train", "timings_s": timings,
                         "dataset_dir": etl["dataset_dir"], "dataset_version": etl["version"],
                         "partition_rows": etl["partition_rows"]})


def _train_step(spark, cfg: Config, registry: Registry, records: Records, record: dict, store: RunStore) -> dict:
    from ringtrain.training.launcher import run_training
    date = record["date"]
    if _finished(record, "train"):
        problem = model_problem(store.model_dir) or (None if record.get("training") else "has no training summary")
        if problem is None:
            log.info("date %s [2/4] training: done before (run %s, its model artifact is complete): not trained "
                     "again", date, record["run_id"])
            return record
        log.warning("date %s [2/4] training again (resuming run %s from its checkpoints): its model %s", date,
                    record["run_id"], problem)
    champion = registry.state().alias(CHAMPION)
    clock = time.time()
    init = join(registry.version_dir(champion), "state_dict.pt") if champion and cfg.retrain.warm_start else None
    log.info("date %s [2/4] training the challenger (run %s, %s)", date, record["run_id"],
             f"warm start from {champion}" if init else "from scratch")
    ranks = run_training(spark, cfg, store, record["dataset_dir"], init_weights=init)
    timings = {**record["timings_s"], "train": round(time.time() - clock, 1)}
    return records.save({**_before(record, "evaluate"), "state": "evaluate", "timings_s": timings,
                         "warm_start_from": champion if init else None,
                         "training": {"epochs_run": ranks[0].epochs_run, "batches_run": ranks[0].batches_run,
                                      "steps_per_epoch": ranks[0].steps_per_epoch, "metrics": ranks[0].metrics}})


def _evaluate_step(cfg: Config, registry: Registry, records: Records, record: dict, store: RunStore) -> dict:
    from ringtrain.training.scoring import evaluate, resolve_model
    date, dataset_dir = record["date"], record["dataset_dir"]
    champion = registry.state().alias(CHAMPION)
    split = cfg.retrain.holdout_split
    if _finished(record, "evaluate"):
        problem = evaluation_problem(record.get("evaluation"), registry, champion, split, cfg.retrain.promote.metric)
        if problem is None:
            log.info("date %s [3/4] evaluation: done before (%s staged): not evaluated again", date,
                     record["evaluation"]["version"])
            return record
        log.warning("date %s [3/4] evaluating again: the record's evaluation %s", date, problem)
    clock = time.time()
    log.info("date %s [3/4] evaluating challenger and champion (%s) on %s of %s", date, champion or "none",
             split, record["dataset_version"])
    features = join(dataset_dir, load_manifest(dataset_dir).features.path)
    version = registry.stage_version(store.model_dir, features, {
        "model": cfg.retrain.model, "date": date, "run_id": record["run_id"], "run_dir": store.run_dir,
        "dataset_dir": dataset_dir, "dataset_version": record["dataset_version"]})
    # Both from their registry folders (the challenger's is staged, not yet registered): artifacts alone.
    challenger = evaluate(resolve_model(registry.version_dir(version), store_root=store.root, registry_name=None),
                          dataset_dir, split)
    incumbent = (evaluate(resolve_model(registry.version_dir(champion), store_root=store.root, registry_name=None),
                          dataset_dir, split) if champion else None)
    timings = {**record["timings_s"], "evaluate": round(time.time() - clock, 1)}
    return records.save({**record, "state": "decide", "timings_s": timings, "evaluation": {
        "version": version, "run_id": record["run_id"], "champion_version": champion, "split": split,
        "challenger": challenger, "champion": incumbent}})


def _before(record: dict, state: str) -> dict:
    """`record` without the outputs of `state` and the steps after it: a step run again invalidates them."""
    later = {"train": ("warm_start_from", "training", "evaluation"), "evaluate": ("evaluation",)}[state]
    return {k: v for k, v in record.items() if k not in later}


# ----------------------------------------------------------------------------- checks of finished steps

def dataset_problem(dataset_dir: str | None) -> str | None:
    """None when `dataset_dir` is a published dataset version; else what is wrong with it."""
    if not dataset_dir:
        return "is not named"
    if not exists(join(dataset_dir, "manifest.json")):
        return f"{dataset_dir} has no manifest.json (not published)"
    return None


def model_problem(model_dir: str) -> str | None:
    """None when the run's model artifact is complete: artifact.json (written last) present and readable,
    the program it names and the weights beside it; else what is missing."""
    path = join(model_dir, "artifact.json")
    if not exists(path):
        return f"artifact {path} is missing (the model was never published)"
    try:
        program = read_json(path)["program"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"artifact {path} is not readable ({type(exc).__name__}: {exc})"
    missing = [name for name in (program, "state_dict.pt") if not exists(join(model_dir, name))]
    if missing:
        return f"folder {model_dir} lacks {', '.join(missing)}"
    return None


def evaluation_problem(evaluation: dict | None, registry: Registry, champion: str | None, split: str,
                       metric: str) -> str | None:
    """None when the recorded evaluation can be decided on now; else why it cannot."""
    if not evaluation:
        return "is missing"
    if evaluation.get("champion_version") != champion or evaluation.get("split") != split:
        return (f"measured champion {evaluation.get('champion_version')} on {evaluation.get('split')}, but now "
                f"the champion is {champion} and the split {split}")
    for who in ("challenger", "champion"):
        result = evaluation.get(who)
        if who == "champion" and champion is None:
            continue
        if not isinstance(result, dict) or not isinstance(result.get("overall"), dict) \
                or metric not in result["overall"] or not isinstance(result.get("partitions"), dict):
            return f"of the {who} is incomplete (no overall {metric} or no partitions)"
    version = evaluation.get("version")
    state = registry.state()
    expected = f"v{max((int(v[1:]) for v in state.versions), default=0) + 1:06d}"
    if version != expected:
        return f"staged {version}, but the next version is now {expected}"
    marker = join(registry.version_dir(version), VERSION_MARKER)
    if not exists(marker):  # written last by stage_version: the copy did not finish
        return f"staged {version}, but {marker} is missing (the copy did not finish)"
    try:
        staged = read_json(marker)
    except ValueError as exc:
        return f"staged {version}, whose {marker} is not readable ({type(exc).__name__}: {exc})"
    if staged.get("run_id") != evaluation.get("run_id"):
        return f"staged {version} from run {evaluation.get('run_id')}, but it now holds run {staged.get('run_id')}"
    return None


def finished_record(record: dict, event: dict) -> dict:
    # The evaluation's results move into the decision (kept there once, as the event has them).
    record = {k: v for k, v in record.items() if k != "evaluation"}
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
        from ringtrain.jobs.tracking import mirror_event
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

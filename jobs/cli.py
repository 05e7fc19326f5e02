"""`ringtrain etl|train|demo|doctor|retrain|evaluate|predict|models --config FILE [--set key=value ...]`,
`ringtrain pack [--output F]`.

One table, `COMMANDS`, holds every verb: its arguments, the job it runs and how its summary prints; the parser,
the dispatch and the spark-submit scripts (jobs/*_job.py, `spark_submit_main`) are made from it. This is the door
for local use and schedulers; spark-submit runs the same jobs through those scripts.
Exit codes: 0 done, 2 bad configuration, model or input (the message says what to fix), 75 the model is
locked by another retrain (retry later; nothing changed), 130 interrupted by the user (Ctrl-C, or the job
cancelled in the Spark UI; the message says how to resume), 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable

from ringtrain.config import Config, load_config
from ringtrain.errors import ConfigError, ModelLocked, TrainingFailed, TrainingInterrupted, UserError
from ringtrain.schema import to_dict


@dataclass(frozen=True)
class Command:
    """One verb of `ringtrain` and of its spark-submit script: the parser and the dispatch are made from these."""
    name: str
    help: str
    run: Callable[[Config | None, argparse.Namespace], dict]
    """Runs the job (it imports its module when called: `ringtrain --help` loads no Spark or torch)."""
    format: Callable[[dict], str]
    """The summary as printed without --json."""
    arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None
    """The verb's own arguments, besides --config, --set and --json."""
    needs_config: bool = True


def _jobs():
    from ringtrain.jobs import commands
    return commands


def add_etl_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--partition", help="value for {partition} in etl.source.path (incremental runs)")
    c.add_argument("--force", action="store_true", help="publish a new version even if nothing changed")


def add_train_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--dataset", help="a published dataset version folder (default: the latest)")


def add_doctor_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up on executors and the barrier stage after this long (default: %(default)s)")


def add_retrain_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--date", help="the date (source partition) to retrain on, e.g. 2026-11-22")
    c.add_argument("--from", dest="date_from", help="backfill: first date (ISO), with --to")
    c.add_argument("--to", dest="date_to", help="backfill: last date (ISO), inclusive")
    c.add_argument("--force", action="store_true", help="redo dates that are already done")


def add_evaluate_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--model", required=True, help="alias (champion), version (v000003) or a model folder")
    c.add_argument("--dataset", help="a published dataset version folder (default: the latest)")
    c.add_argument("--split", default="test", choices=["train", "val", "test"])


def add_predict_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--model", default="champion", help="alias, version or model folder (default: champion)")
    c.add_argument("--input", required=True, help="rows to score: a path (or a table name with --format table)")
    c.add_argument("--output", required=True, help="output folder (published with _SUCCESS last)")
    c.add_argument("--format", dest="input_format", help="input format (default: etl.source.format)")
    c.add_argument("--partition", help="the output's partition value (default: the value of the input path's last "
                                       "name=value folder, else the input path)")
    c.add_argument("--keep", action="append", default=[], metavar="COL",
                   help="carry this input column into the output as it is (repeatable)")


def add_models_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("action", choices=["list", "show", "promote", "rollback"])
    c.add_argument("ref", nargs="?", help="show: version or alias; promote: the version")
    c.add_argument("--alias", default="champion", help="the alias to move or show (default: champion)")
    c.add_argument("--reason", help="recorded in the history with the change")


def add_pack_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--output", default="ringtrain-env.tar.gz", help="archive to write (default: %(default)s)")
    c.add_argument("--env-dir", help="where to copy the environment to (replaced; default: build/pack-env in the checkout; "
                                     "build/pack-env-spark4 from the Spark 4 stack, "
                                     "build/pack-env-gpu and build/pack-env-spark4-gpu from the GPU stacks)")


def _doctor(cfg: Config, args: argparse.Namespace) -> dict:
    from ringtrain.jobs.doctor import doctor
    return doctor(cfg, timeout_s=args.timeout)


def _format_doctor(summary: dict) -> str:
    from ringtrain.jobs.doctor import format_report
    return format_report(summary)


def _pack(cfg: None, args: argparse.Namespace) -> dict:
    from ringtrain.jobs.pack import pack
    return pack(args.output, env_dir=args.env_dir)


def _format_pack(summary: dict) -> str:
    from ringtrain.jobs.pack import format_report
    return format_report(summary)


def _models(cfg: Config, args: argparse.Namespace) -> dict:
    if args.action == "promote" and not args.ref:
        raise ConfigError("ringtrain models promote needs the VERSION to promote, e.g. v000003")
    return _jobs().models_job(cfg, action=args.action, ref=args.ref, alias=args.alias, reason=args.reason)


def _summary_of(kind: str) -> Callable[[dict], str]:
    if kind in ("etl", "train", "demo"):
        return lambda summary: _jobs().format_summary(kind, summary)
    return lambda summary: getattr(_jobs(), f"format_{kind}")(summary)


COMMANDS = {c.name: c for c in (
    Command("etl", "source -> validated, balanced, published Parquet shards",
            lambda cfg, a: _jobs().etl_job(cfg, partition=a.partition, force=a.force), _summary_of("etl"),
            add_etl_args),
    Command("train", "data-parallel training in Spark barrier tasks",
            lambda cfg, a: _jobs().train_job(cfg, dataset_dir=a.dataset), _summary_of("train"), add_train_args),
    Command("demo", "generate the embedded dataset, then etl and train",
            lambda cfg, a: _jobs().demo_job(cfg), _summary_of("demo")),
    Command("doctor", "check driver, executors, store, slots and GPUs before a long run",
            _doctor, _format_doctor, add_doctor_args),
    Command("retrain", "per date: incremental ETL, challenger, evaluation, promotion gate",
            lambda cfg, a: _jobs().retrain_job(cfg, dates=retrain_dates(a), force=a.force), _summary_of("retrain"),
            add_retrain_args),
    Command("evaluate", "metrics of a model artifact on one split of a published dataset",
            lambda cfg, a: _jobs().evaluate_job(cfg, model_ref=a.model, dataset_dir=a.dataset, split=a.split),
            _summary_of("evaluate"), add_evaluate_args),
    Command("predict", "batch scoring on Spark executors with a model artifact",
            lambda cfg, a: _jobs().predict_job(cfg, model_ref=a.model, input_path=a.input, output_dir=a.output,
                                               input_format=a.input_format, partition=a.partition, keep=a.keep),
            _summary_of("predict"), add_predict_args),
    Command("models", "the registry: list | show [REF] | promote VERSION | rollback",
            _models, _summary_of("models"), add_models_args),
    Command("pack", "build the environment archive for spark-submit --archives",
            _pack, _format_pack, add_pack_args, needs_config=False),
)}


def add_arguments(p: argparse.ArgumentParser, command: Command) -> None:
    if command.needs_config:
        p.add_argument("--config", required=True, help="YAML config (see conf/)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    command.arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ringtrain", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        add_arguments(sub.add_parser(command.name, help=command.help), command)
    return p


def run(name: str, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    command = COMMANDS[name]
    try:
        cfg = load_config(args.config, args.overrides) if command.needs_config else None
        summary = command.run(cfg, args)
    except (UserError, ModelLocked) as exc:
        print(f"ringtrain {name}: {'error: ' if isinstance(exc, UserError) else ''}{exc}", file=sys.stderr)
        return exc.exit_code
    except TrainingInterrupted as exc:
        print(f"ringtrain {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # before training started (Spark start-up, ETL): nothing to resume
        print(f"ringtrain {name}: interrupted", file=sys.stderr)
        return TrainingInterrupted.exit_code
    except TrainingFailed as exc:
        print(f"ringtrain {name}: {exc}", file=sys.stderr)
        return 1
    # to_dict: a train summary's ranks are RankResults
    print(json.dumps(to_dict(summary), indent=2) if args.json else "\n" + command.format(summary))
    return 0


def retrain_dates(args: argparse.Namespace) -> list[str]:
    from ringtrain.jobs.retrain import date_range
    if args.date and not (args.date_from or args.date_to):
        return [args.date]
    if args.date_from and args.date_to and not args.date:
        return date_range(args.date_from, args.date_to)
    raise ConfigError("ringtrain retrain needs either --date D, or --from D1 --to D2 (a backfill)")


def spark_submit_main(name: str, doc: str) -> None:
    """The body of a spark-submit script (jobs/*_job.py): the verb's arguments, its run, its exit code."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    add_arguments(p, COMMANDS[name])
    exit_spark_submit(run(name, p.parse_args()))


def exit_spark_submit(code: int) -> None:
    """End a spark-submit job with `code`, JVM included.

    In local mode the executors live in the driver JVM, and Spark's BarrierTaskContext leaves a
    non-daemon "Barrier task timer for barrier() calls" thread behind (seen in a jstack), which
    keeps spark-submit alive after the job is done. Outside spark-submit the JVM dies with Python.
    """
    from pyspark import SparkContext
    if "PYSPARK_GATEWAY_PORT" in os.environ and SparkContext._gateway is not None:
        sys.stdout.flush(), sys.stderr.flush()
        try:
            SparkContext._gateway.jvm.java.lang.System.exit(code)
        except Exception:  # the JVM is gone before it can answer: that is the point
            pass
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(args.command, args)


if __name__ == "__main__":
    sys.exit(main())

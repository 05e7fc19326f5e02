"""`ringtrain etl|train|demo|doctor|retrain|evaluate|predict|models --config FILE [--set key=value ...]`,
`ringtrain pack [--output F]`.

The same jobs run under spark-submit through jobs/*.py; this is the door for local use and schedulers.
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

from ringtrain.config import load_config
from ringtrain.errors import ConfigError, ModelLocked, TrainingFailed, TrainingInterrupted, UserError
from ringtrain.schema import to_dict


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ringtrain", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("etl", "source -> validated, balanced, published Parquet shards"),
                       ("train", "data-parallel training in Spark barrier tasks"),
                       ("demo", "generate the embedded dataset, then etl and train"),
                       ("doctor", "check driver, executors, store, slots and GPUs before a long run")):
        c = sub.add_parser(name, help=text)
        add_common(c)
        if name == "etl":
            c.add_argument("--partition", help="value for {partition} in etl.source.path (incremental runs)")
            c.add_argument("--force", action="store_true", help="publish a new version even if nothing changed")
        if name == "train":
            c.add_argument("--dataset", help="a published dataset version folder (default: the latest)")
        if name == "doctor":
            add_doctor(c)
    add_scheduled(sub)
    c = sub.add_parser("pack", help="build the environment archive for spark-submit --archives")
    c.add_argument("--output", default="ringtrain-env.tar.gz", help="archive to write (default: %(default)s)")
    c.add_argument("--env-dir", help="where to build the environment (default: build/pack-env in the checkout; "
                                     "build/pack-env-spark4 from the Spark 4 stack, "
                                     "build/pack-env-gpu and build/pack-env-spark4-gpu from the GPU stacks)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def add_doctor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up on executors and the barrier stage after this long (default: %(default)s)")


def add_scheduled(sub) -> None:
    """The scheduled-retraining commands (README "Scheduled retraining")."""
    for name, text, add in (
            ("retrain", "per date: incremental ETL, challenger, evaluation, promotion gate", add_retrain_args),
            ("evaluate", "metrics of a model artifact on one split of a published dataset", add_evaluate_args),
            ("predict", "batch scoring on Spark executors with a model artifact", add_predict_args),
            ("models", "the registry: list | show [REF] | promote VERSION | rollback", add_models_args)):
        c = sub.add_parser(name, help=text)
        add_common(c)
        add(c)


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


def add_models_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("action", choices=["list", "show", "promote", "rollback"])
    c.add_argument("ref", nargs="?", help="show: version or alias; promote: the version")
    c.add_argument("--alias", default="champion", help="the alias to move or show (default: champion)")
    c.add_argument("--reason", help="recorded in the history with the change")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (see conf/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(command: str, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        if command == "pack":
            return report(command, args, pack_command(args))
        cfg = load_config(args.config, args.overrides)
        if command == "doctor":
            from ringtrain.doctor import doctor
            summary = doctor(cfg, timeout_s=args.timeout)
        else:
            from ringtrain import jobs  # after argument parsing: --help stays fast
            summary = dispatch(jobs, command, cfg, args)
    except (UserError, ModelLocked) as exc:
        print(f"ringtrain {command}: {'error: ' if isinstance(exc, UserError) else ''}{exc}", file=sys.stderr)
        return exc.exit_code
    except TrainingInterrupted as exc:
        print(f"ringtrain {command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # before training started (Spark start-up, ETL): nothing to resume
        print(f"ringtrain {command}: interrupted", file=sys.stderr)
        return TrainingInterrupted.exit_code
    except TrainingFailed as exc:
        print(f"ringtrain {command}: {exc}", file=sys.stderr)
        return 1
    return report(command, args, summary)


def pack_command(args: argparse.Namespace) -> dict:
    from ringtrain.pack import pack
    return pack(args.output, env_dir=args.env_dir)


def report(command: str, args: argparse.Namespace, summary: dict) -> int:
    if args.json:
        print(json.dumps(to_dict(summary), indent=2))  # a train summary's ranks are RankResults
    elif command == "pack":
        from ringtrain.pack import format_report
        print("\n" + format_report(summary))
    elif command == "doctor":
        from ringtrain.doctor import format_report
        print("\n" + format_report(summary))
    else:
        from ringtrain import jobs
        print("\n" + jobs.format_summary(command, summary))
    return 0


def dispatch(jobs, command: str, cfg, args: argparse.Namespace) -> dict:
    if command == "etl":
        return jobs.etl_job(cfg, partition=args.partition, force=args.force)
    if command == "train":
        return jobs.train_job(cfg, dataset_dir=args.dataset)
    if command == "retrain":
        return jobs.retrain_job(cfg, dates=retrain_dates(args), force=args.force)
    if command == "evaluate":
        return jobs.evaluate_job(cfg, model_ref=args.model, dataset_dir=args.dataset, split=args.split)
    if command == "predict":
        return jobs.predict_job(cfg, model_ref=args.model, input_path=args.input, output_dir=args.output,
                                input_format=args.input_format)
    if command == "models":
        if args.action == "promote" and not args.ref:
            raise ConfigError("ringtrain models promote needs the VERSION to promote, e.g. v000003")
        return jobs.models_job(cfg, action=args.action, ref=args.ref, alias=args.alias, reason=args.reason)
    return jobs.demo_job(cfg)


def retrain_dates(args: argparse.Namespace) -> list[str]:
    from ringtrain.retrain import date_range
    if args.date and not (args.date_from or args.date_to):
        return [args.date]
    if args.date_from and args.date_to and not args.date:
        return date_range(args.date_from, args.date_to)
    raise ConfigError("ringtrain retrain needs either --date D, or --from D1 --to D2 (a backfill)")


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

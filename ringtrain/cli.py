"""`ringtrain etl|train|demo|doctor --config FILE [--set key=value ...]`, `ringtrain pack [--output F]`.

The same jobs run under spark-submit through jobs/*.py; this is the door for local use and schedulers.
Exit codes: 0 done, 2 bad configuration or input (the message says what to fix), 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ringtrain.config import load_config
from ringtrain.errors import TrainingFailed, UserError


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
    c = sub.add_parser("pack", help="build the environment archive for spark-submit --archives")
    c.add_argument("--output", default="ringtrain-env.tar.gz", help="archive to write (default: %(default)s)")
    c.add_argument("--env-dir", help="where to build the environment (default: build/pack-env in the checkout)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def add_doctor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up on executors and the barrier stage after this long (default: %(default)s)")


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
            summary = run_job(command, cfg, args)
    except UserError as exc:
        print(f"ringtrain {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except TrainingFailed as exc:
        print(f"ringtrain {command}: {exc}", file=sys.stderr)
        return 1
    return report(command, args, summary)


def run_job(command: str, cfg, args: argparse.Namespace) -> dict:
    from ringtrain import jobs  # after argument parsing: --help stays fast
    if command == "etl":
        return jobs.etl_job(cfg, partition=args.partition, force=args.force)
    if command == "train":
        return jobs.train_job(cfg, dataset_dir=args.dataset)
    return jobs.demo_job(cfg)


def pack_command(args: argparse.Namespace) -> dict:
    from ringtrain.pack import pack
    return pack(args.output, env_dir=args.env_dir)


def report(command: str, args: argparse.Namespace, summary: dict) -> int:
    if args.json:
        print(json.dumps(summary, indent=2))
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

"""`ringtrain etl|train|demo --config FILE [--set key=value ...]`.

The same jobs run under spark-submit through jobs/*.py; this is the door for local use and schedulers.
Exit codes: 0 done, 2 bad configuration, model or input (the message says what to fix), 130 interrupted
by the user (Ctrl-C, or the job cancelled in the Spark UI; the message says how to resume), 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ringtrain.config import load_config
from ringtrain.errors import TrainingFailed, TrainingInterrupted, UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ringtrain", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("etl", "source -> validated, balanced, published Parquet shards"),
                       ("train", "data-parallel training in Spark barrier tasks"),
                       ("demo", "generate the embedded dataset, then etl and train")):
        c = sub.add_parser(name, help=text)
        add_common(c)
        if name == "etl":
            c.add_argument("--partition", help="value for {partition} in etl.source.path (incremental runs)")
            c.add_argument("--force", action="store_true", help="publish a new version even if nothing changed")
        if name == "train":
            c.add_argument("--dataset", help="a published dataset version folder (default: the latest)")
    return p


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (see conf/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(command: str, args: argparse.Namespace) -> int:
    from ringtrain import jobs  # after argument parsing: --help stays fast
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config, args.overrides)
        if command == "etl":
            summary = jobs.etl_job(cfg, partition=args.partition, force=args.force)
        elif command == "train":
            summary = jobs.train_job(cfg, dataset_dir=args.dataset)
        else:
            summary = jobs.demo_job(cfg)
    except UserError as exc:
        print(f"ringtrain {command}: error: {exc}", file=sys.stderr)
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
    print(json.dumps(summary, indent=2) if args.json else "\n" + jobs.format_summary(command, summary))
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

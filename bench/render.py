"""Markdown tables from the training benchmarks' results JSON (bench/results/*.json).

    .venv/bin/python bench/render.py                      # print the tables of every result found
    .venv/bin/python bench/render.py --suffix=-spark4     # the same for the Spark 4 stack's results (<name>-spark4.json)
    .venv/bin/python bench/render.py --suffix=-spark4 --write BENCHMARKS.md
        # fills the `RESULTS: pending-spark4` lines of the side-by-side section instead
    .venv/bin/python bench/render.py --write BENCHMARKS.md
        # also put each table in place of the `RESULTS: pending` line of its section
        # (## ETL, ## Training: scaling / where a step's time goes / feed / all-reduce bandwidth / pipeline, ## Store); other sections are left alone
    .venv/bin/python bench/render.py --stacks [--write BENCHMARKS.md]
        # the two stacks side by side from `make bench-stacks`' stacks-<bench>-<stack>-r<round>.json
        # (its `RESULTS: pending-stacks` line)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PLACEHOLDER = "RESULTS: pending"
# Where another stack's results go (--suffix): one placeholder per benchmark, in SECTIONS' order.
OTHER_STACKS = "## Spark 3.5 stack vs Spark 4 stack, side by side"


def _machine(result: dict) -> str:
    m = result.get("machine", {})
    load = m.get("loadavg_at_start", ["?"])[0], m.get("loadavg_at_end", ["?"])[0]
    v = m.get("versions", {})
    stack = ", ".join(f"{name} {v[name]}" for name in ("pyspark", "pyarrow", "numpy", "horovod", "petastorm")
                      if name in v)
    return (f"Measured {result.get('finished_utc', '?')} on {m.get('cores', '?')} cores ({m.get('cpu', '?')}), "
            f"Python {m.get('python', '?')}, torch {v.get('torch', '?')}{'; ' + stack if stack else ''}; "
            f"1-minute load average {load[0]} before, {load[1]} after.")


def _rate(x: float) -> str:
    return f"{x:,.0f}"


def _bytes(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def _gbs(x: float) -> str:
    return f"{x / 1e9:.3g}"


def render_scaling(result: dict) -> str:
    p = result["params"]
    lines = ["| engine | 1 worker (samples/s) | 2 workers (samples/s) | speed-up | efficiency sps(2) / (2 × sps(1)) "
             "| per repeat |",
             "|---|---|---|---|---|---|"]
    for engine, s in result["summary"].items():
        per = ", ".join(f"{x:.2f}" for x in s["efficiency_per_repeat"])
        lines.append(f"| {engine} | {_rate(s['sps_1_median'])} | {_rate(s['sps_2_median'])} | {s['speedup']:.2f}× "
                     f"| **{s['efficiency']:.2f}** | {per} |")
    d = result.get("dataset", {})
    train_rows = (d.get("split_rows") or {}).get("train", "?")
    lines += ["", f"Medians of {p['repeats']} interleaved launches per configuration; {train_rows} train rows, "
              f"{p['epochs']} epoch(s) per launch, batch {p['batch_size']} per rank, reader {p['reader']}, one thread per worker"
              f"{_pinning(p.get('pin_cores', 'off'))}.",
              _machine(result)]
    return "\n".join(lines)


def _pinning(pin_cores: str) -> str:
    return {"both": ", ranks pinned to their own cores unless marked unpinned", "on": ", ranks pinned to their own cores",
            "auto": ", train.pin_cores auto (Horovod's ranks pinned to their own cores, DDP's not)"}.get(pin_cores, "")


def render_feed(result: dict) -> str:
    s = result["summary"]
    lines = ["| | samples/s | ÷ training |", "|---|---|---|",
             f"| training, 1 thread, data in memory | {_rate(s['train_sps_median'])} | 1 |"]
    for kind in ("petastorm", "arrow"):
        if kind in s:
            lines.append(f"| loader: {kind} reader + prefetch | {_rate(s[kind]['loader_sps_median'])} "
                         f"| **{s[kind]['ratio']:.2f}** |")
    p = result["params"]
    d = result.get("dataset", {})
    train_rows = (d.get("split_rows") or {}).get("train", "?")
    extra = (f" The arrow reader reads {s['arrow_over_petastorm']:.2f}× as fast as petastorm."
             if "arrow_over_petastorm" in s else "")
    lines += ["", f"Medians of {p['repeats']} interleaved repeats. Per measurement the loader reads "
              f"{p.get('loader_epochs', 1)} epochs of {train_rows} train rows, and training makes "
              f"{p.get('train_passes', 1)} passes over one epoch held in memory; batch {p['batch_size']}, model "
              f"{result['model']['name']}, optimizer {result['optimizer']}.{extra}", _machine(result)]
    return "\n".join(lines)


def render_allreduce(result: dict) -> str:
    lines = ["| size | Horovod busbw (GB/s) | DDP busbw (GB/s) | TCP exchange (GB/s) | memcpy (GB/s) "
             "| Horovod ÷ memcpy | DDP ÷ memcpy | TCP ÷ memcpy | DDP ÷ TCP | Horovod ÷ DDP |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["sizes"]:
        lines.append(f"| {_bytes(r['bytes'])} | {_gbs(r['busbw_horovod'])} | {_gbs(r['busbw_ddp'])} "
                     f"| {_gbs(r['tcp_bw'])} | {_gbs(r['memcpy_bw'])} | {r['horovod_over_memcpy']:.3g} "
                     f"| {r['ddp_over_memcpy']:.3g} | {r['tcp_over_memcpy']:.3g} | {r['ddp_over_tcp']:.2f} "
                     f"| **{r['horovod_over_ddp']:.2f}** |")
    p = result["params"]
    pinned = "not pinned" if p.get("unpinned") else "each pinned to its own core"
    lines += ["", f"{result['ranks']} ranks ({pinned}), float32, one thread per rank; medians of {p['repeats']} interleaved "
              f"repeats. GB = 10^9 bytes.", _machine(result)]
    return "\n".join(lines)


def render_step(result: dict) -> str:
    """One row per configuration: the step and its phases (ms, slower rank), efficiency against 1 rank."""
    lines = ["| configuration | ranks | step (ms) | forward+backward | synchronize | update | efficiency "
             "| per repeat (ms) |", "|---|---|---|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        ph = s["phases_ms"]
        eff = f"**{s['efficiency']:.2f}**" if s.get("efficiency") is not None else ""
        per = ", ".join(f"{x:.2f}" for x in s["step_ms_per_repeat"])
        lines.append(f"| `{name}`: {s['what']} | {s['ranks']} | {s['step_ms']:.2f} | {ph['forward_backward']:.2f} "
                     f"| {ph['synchronize']:.2f} | {ph['update']:.2f} | {eff} | {per} |")
    p = result["params"]
    lines += ["", f"Medians of {p['repeats']} repeats of {p['steps']} timed steps ({p['warmup']} warm-up), batch "
              f"{p['batch_size']} per rank; efficiency = step(1 rank) ÷ step(2 ranks) of the same engine.",
              _machine(result)]
    return "\n".join(lines)


def render_pipeline(result: dict) -> str:
    """Per (K, M): the measured idle fraction, the replayed one and GPipe's bound; split ÷ unsplit speed."""
    lines = ["| K stages | M micro-batches | layers per stage | idle measured | idle replayed (op times, instant "
             "hand-offs) | (K−1)/(M+K−1) | measured ÷ bound | busy per stage | split ÷ unsplit speed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['stages']} | {r['micro_batches']} | {r['layers_per_stage']} | {r['idle_measured']:.3f} "
                     f"| {r['idle_replayed']:.3f} | {r['idle_gpipe']:.3f} | **{r['idle_measured'] / r['idle_gpipe']:.2f}** "
                     f"| {r['stage_busy']} | {r['speed_split_over_plain']:.2f} |")
    p = result.get("params", {})
    lines += ["", f"`residual_mlp`, width {p.get('width', '?')}, {p.get('blocks', '?')} residual blocks, batch "
              f"{p.get('batch', '?')}, one intra-op thread per stage, all stages on the CPU; medians over "
              f"{p.get('steps', '?')} steps after 2 warm-up steps.", _machine(result)]
    return "\n".join(lines)


def render_store(r: dict) -> str:
    lines = [f"Store on moto's S3-compatible server vs a local store, {r['rows']:,} churn rows on {r['master']} "
             f"({r['machine']['cores']} cores), medians of {r['repeats']} alternated runs:", "",
             "| | local rows/s | S3 rows/s | S3 ÷ local |", "|---|---:|---:|---:|"]
    for name, m in r["measured"].items():
        lines.append(f"| {name} | {m['local']['rows_per_s']:,.0f} | {m['s3']['rows_per_s']:,.0f} | "
                     f"**{m['ratio']:.3f}** |")
    return "\n".join(lines)


ETL_STEPS = ["read, validate, count", "counts", "fit", "encode, shuffle, write", "quarantine", "verify", "other"]


def render_etl(result: dict, before: dict | None = None) -> str:
    """Ratios to the plain Spark conversions per size, and the ETL's time per step; with `before` (the same
    script run on older code, `--label before`), both side by side."""
    runs = [r for r in (before, result) if r is not None]
    lines = ["| rows | code | ETL rows/s | ETL ÷ Spark typed + sorted | ETL ÷ Spark strings "
             "| ETL ÷ pyarrow CSV → Parquet |", "|---:|---|---:|---:|---:|---:|"]
    for size in result["sizes"]:
        for r in runs:
            s = next((x for x in r["sizes"] if x["rows"] == size["rows"]), None)
            if s is None:
                continue
            q = s["ratios"]
            lines.append(f"| {s['rows']:,} | {r['label']} | {_rate(s['etl']['rows_per_s'])} "
                         f"| **{q['spark_typed_sorted']:.2f}** | {q['spark_strings']:.2f} "
                         f"| {q['pyarrow_csv_to_parquet']:.2f} |")
    lines += ["", "Seconds per step of the ETL (driver wall time, medians over rounds):", "",
              "| rows | code | " + " | ".join(ETL_STEPS) + " | total |", "|---:|---|" + "---:|" * (len(ETL_STEPS) + 1)]
    for size in result["sizes"]:
        for r in runs:
            s = next((x for x in r["sizes"] if x["rows"] == size["rows"]), None)
            if s is None:
                continue
            st = s["etl"]["steps_s"]
            lines.append(f"| {s['rows']:,} | {r['label']} | " + " | ".join(f"{st.get(k, 0.0):.2f}" for k in ETL_STEPS)
                         + f" | {s['etl']['seconds']:.2f} |")
    lines += ["", f"Medians of {result['repeats']} interleaved rounds per size on {result['master']}; Spark start-up "
              f"({result['spark_startup_s']:.1f} s) not included."]
    lines += [_machine(r) + (f" ({r['label']})" if before else "") for r in runs]
    return "\n".join(lines)


STACKS = ("spark35", "spark4")
STACKS_PLACEHOLDER = PLACEHOLDER + "-stacks"


def _stack_figures(bench: str, r: dict) -> list[tuple[str, float, str]]:
    """(figure, value, format) of one result that the stacks side-by-side compares."""
    if bench == "scaling":
        s = r["summary"]["ddp"]
        return [("scaling (ddp, arrow): samples/s, 1 worker", s["sps_1_median"], ",.0f"),
                ("scaling (ddp, arrow): samples/s, 2 workers", s["sps_2_median"], ",.0f"),
                ("scaling (ddp, arrow): **efficiency** sps(2) / (2 × sps(1))", s["efficiency"], ".2f")]
    if bench == "feed":
        s = r["summary"]
        return [("feed: training samples/s (data in memory)", s["train_sps_median"], ",.0f"),
                ("feed: arrow loader samples/s", s["arrow"]["loader_sps_median"], ",.0f"),
                ("feed: **loader ÷ training**", s["arrow"]["ratio"], ".2f")]
    if bench == "etl":
        out = []
        for size in r["sizes"]:
            n = f"{size['rows'] / 1e6:g}M"
            out += [(f"ETL {n} rows: rows/s", size["etl"]["rows_per_s"], ",.0f"),
                    (f"ETL {n} rows: plain Spark typed + sorted, rows/s", size["baselines"]["spark_typed_sorted"]["rows_per_s"],
                     ",.0f"),
                    (f"ETL {n} rows: **ETL ÷ plain Spark typed + sorted**", size["ratios"]["spark_typed_sorted"], ".2f")]
        return out
    if bench == "store":
        # The names' parentheses carry details that differ by stack (the shards' bytes): one row per measurement.
        return [(f"store: {name.split(' (')[0]}, **S3 ÷ local**", m["ratio"], ".3f") for name, m in r["measured"].items()]
    raise ValueError(bench)


def render_stacks(results: str) -> str:
    """Each figure per round on both stacks, and Spark 4 ÷ Spark 3.5 within each round (the two ran one after
    the other, so the quotient of a round is a side-by-side one)."""
    found = {}  # (bench, stack, round) -> result
    for name in sorted(os.listdir(results)):
        parts = name[:-len(".json")].split("-") if name.startswith("stacks-") and name.endswith(".json") else []
        if len(parts) == 4 and parts[2] in STACKS and parts[3].startswith("r") and parts[3][1:].isdigit():
            with open(os.path.join(results, name)) as f:
                found[parts[1], parts[2], int(parts[3][1:])] = json.load(f)
    rounds = sorted({k[2] for k in found})
    if not rounds:
        raise FileNotFoundError(f"no stacks-<bench>-<stack>-r<round>.json in {results}: run `make bench-stacks`")
    lines = ["| figure | " + " | ".join(f"Spark 3.5, round {n} | Spark 4, round {n}" for n in rounds)
             + " | Spark 4 ÷ Spark 3.5, per round |", "|---|" + "---:|" * (2 * len(rounds) + 1)]
    when = {}  # (bench, stack) -> each round's time and load
    for bench in ("scaling", "feed", "etl", "store"):
        pairs = [(found.get((bench, "spark35", n)), found.get((bench, "spark4", n))) for n in rounds]
        complete = [(n, a, b) for n, (a, b) in zip(rounds, pairs) if a and b]
        if not complete:
            continue
        figures = {}
        for n, a, b in complete:
            for stack, r in (("spark35", a), ("spark4", b)):
                m = r.get("machine", {})
                load = m.get("loadavg_at_start", ["?"])[0], m.get("loadavg_at_end", ["?"])[0]
                when.setdefault((bench, stack), []).append(
                    f"round {n} {r.get('finished_utc', '?')} (load {load[0]} before, {load[1]} after)")
                for figure, value, fmt in _stack_figures(bench, r):
                    figures.setdefault(figure, (fmt, {}))[1][stack, n] = value
        for figure, (fmt, values) in figures.items():
            cells, quotients = [], []
            for n in rounds:
                a, b = values.get(("spark35", n)), values.get(("spark4", n))
                cells += [format(a, fmt) if a is not None else "–", format(b, fmt) if b is not None else "–"]
                if a and b is not None:
                    quotients.append(f"{b / a:.2f}")
            lines.append(f"| {figure} | " + " | ".join(cells) + f" | {', '.join(quotients) or '–'} |")
    lines += ["", "Spark 3.5 = pyspark 3.5.7, pyarrow 14.0.2, numpy 1.26.4 (`.venv`); Spark 4 = pyspark 4.1.4, pyarrow "
              "18.1.0, numpy 2.2.6 (`.venv-spark4`); the same torch 2.13.0 CPU. Each round ran every benchmark on "
              "Spark 3.5, then on Spark 4, on the same machine (1-minute load averages below).", ""] + [
        f"- {bench}, {stack}: {'; '.join(rounds_)}" for (bench, stack), rounds_ in when.items()]
    return "\n".join(lines)


def render_predict(result: dict, before: dict | None = None) -> str:
    from predict_bench import render  # the benchmark's own table; with older code's result, that one first
    if before is None:
        return render(result)
    return f"Before:\n\n{render(before)}\n\nAfter:\n\n{render(result)}"


def render_rows(result: dict) -> str:
    from rows_bench import render  # the benchmark's own table
    return render(result)


def render_warmup(result: dict) -> str:
    from warmup_bench import render  # the benchmark's own table
    return render(result)


def render_etl_stages(result: dict) -> str:
    from etl_stages_bench import render  # the benchmark's own tables
    return render(result)


def render_arrow_runner(result: dict) -> str:
    from arrow_runner_bench import render  # the benchmark's own table
    return render(result)


SECTIONS = {  # results name -> (section heading in BENCHMARKS.md, renderer); <name>-before.json: older code
    "etl": ("## ETL", render_etl),
    "etl-stages": ("## ETL: where the gap to plain Spark lives", render_etl_stages),
    "arrow-runner": ("## ETL: where the gap to plain Spark lives", render_arrow_runner),
    "scaling": ("## Training: scaling", render_scaling),
    "feed": ("## Training: feed", render_feed),
    "step": ("## Training: where a step's time goes", render_step),
    "allreduce": ("## Training: all-reduce bandwidth", render_allreduce),
    "pipeline": ("## Training: pipeline (layer splitting)", render_pipeline),
    "store": ("## Store: S3-compatible server ÷ local", render_store),
    "predict": ("## Batch scoring: predict ÷ its I/O floor", render_predict),
    "rows": ("## Rows: how the cost grows", render_rows),
    "warmup": ("## A fresh process's fixed cost", render_warmup),
}


def fill(text: str, heading: str, table: str, placeholder: str = PLACEHOLDER) -> str:
    """Replace the `placeholder` line inside the section `heading` (up to the next `## `)."""
    lines = text.split("\n")
    if lines.count(heading) != 1:  # a second copy of a heading would take the table in the wrong place
        raise ValueError(f"section {heading!r} appears {lines.count(heading)} times, not once")
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    for i in range(start, end):
        if lines[i].strip() == placeholder:
            lines[i:i + 1] = table.split("\n")
            return "\n".join(lines)
    raise ValueError(f"no '{placeholder}' line in section {heading!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=RESULTS, help="folder of the results JSON")
    p.add_argument("--write", metavar="BENCHMARKS.md", help="fill the RESULTS: pending lines of this file")
    p.add_argument("--suffix", default="", help="read <name><suffix>.json, e.g. -spark4 for the Spark 4 stack")
    p.add_argument("--stacks", action="store_true", help="the two stacks side by side (make bench-stacks) instead")
    args = p.parse_args(argv)
    text = open(args.write).read() if args.write else None
    if args.stacks:
        table = render_stacks(args.results)
        print(f"{OTHER_STACKS}\n\n{table}\n")
        if text is not None:
            with open(args.write, "w") as f:
                f.write(fill(text, OTHER_STACKS, table, STACKS_PLACEHOLDER))
        return 0
    for name, (heading, render) in SECTIONS.items():
        path = os.path.join(args.results, f"{name}{args.suffix}.json")
        if not os.path.exists(path):
            print(f"{heading}: no {path}", file=sys.stderr)
            continue
        with open(path) as f:
            result = json.load(f)
        before = os.path.join(args.results, f"{name}-before.json")
        if os.path.exists(before):
            with open(before) as f:
                table = render(result, json.load(f))
        else:
            table = render(result)
        print(f"{heading}\n\n{table}\n")
        if text is not None:
            text = (fill(text, OTHER_STACKS, table, PLACEHOLDER + args.suffix) if args.suffix  # "...pending-spark4"
                    else fill(text, heading, table))
    if text is not None:
        with open(args.write, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def render_rowcheck(r: dict) -> str:
    s3 = f", {r['s3_repeats']} on S3" if r.get("s3_repeats") not in (None, r["repeats"]) else ""
    lines = [f"One epoch of {r['train_rows']:,} train rows ({r['shards']} shards, {r['row_groups']} row groups, "
             f"{r['train_mb']} MB), rank 0 of 1, batch size {r['batch_size']}, on {r['machine']['cores']} cores; "
             f"{r['repeats']} alternated pairs of runs{s3}. Seconds: medians of the reading time (wall time net of "
             f"petastorm's polling sleeps). Cost: the median of the pairs' checked / unchecked - 1 (in brackets: "
             f"the middle half of the pairs):",
             "", "| reader | store | unchecked s | checked s | reading cost | wall cost | CPU cost |",
             "|---|---|---:|---:|---:|---:|---:|"]

    def cost(m, what):
        text = f"{m[what + '_cost'] * 100:+.1f}%"
        if what + "_cost_quartiles" in m:
            lo, hi = m[what + "_cost_quartiles"]
            text += f" [{lo * 100:+.1f}, {hi * 100:+.1f}]"
        return text
    for m in r["measured"]:
        lines.append(f"| {m['reader']} | {m['store']} | {m['unchecked_reading_s']:.3f} | "
                     f"{m['checked_reading_s']:.3f} | **{cost(m, 'reading')}** | {cost(m, 'wall')} | "
                     f"{cost(m, 'cpu')} |")
    return "\n".join(lines)

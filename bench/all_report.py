#!/usr/bin/env python3
"""Collects the results of bench/all.sh into one JSON file and one markdown table.

usage: all_report.py add KIND LOG ROWS.jsonl key=value...   rows of one sub-benchmark
       all_report.py skip WORKLOAD ROWS.jsonl key=value...  a "skipped: <why>" row
       all_report.py finish ROWS.jsonl RESULTS.json DOC.md key=value...

`add` reads what one sub-benchmark printed (LOG: its stdout and stderr) or
wrote, and appends one JSON row per measured figure to ROWS.jsonl. KIND is
w1 (bench/run.sh; the figures come from its results.jsonl, key `w1_results`),
duckdb (bench/duckdb_w1.py's JSON line), http (bench/http_load.sh's table,
sluice and the trivial server), redis, postgres, amqp, kafka (their tables), cluster (the CLUSTER_BENCH line) or
rescale (the RESCALE_BENCH line). The key=value pairs (command, exit,
load_start, load_end, seconds, log, ...) go into every row. A sub-benchmark
that printed no figure gives one row with status "failed".

`finish` adds the cross-row ratios (sluice and DuckDB against the
hand-written loop of the same run, sluice against DuckDB), writes
RESULTS.json, prints the markdown section, and replaces the part of DOC.md
between the markers below with it (the rest of DOC.md is left as it is).
"""
import json
import os
import re
import statistics
import sys

BEGIN = "<!-- bench/all.sh:begin -->"
END = "<!-- bench/all.sh:end -->"
HERE = os.path.dirname(os.path.abspath(__file__))


def number(text):
    """'58,123' or '1.2' -> float; None for anything else ('failed', '-')."""
    try:
        return float(str(text).replace(",", "").strip())
    except ValueError:
        return None


def tables(text):
    """Every markdown table in TEXT as a list of {header: cell} dicts."""
    found, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 3 and set("".join(block[1])) <= set("-: "):
            found.append([dict(zip(block[0], row)) for row in block[2:]])
        block = []
    return found


def table_with(text, column):
    for t in tables(text):
        if t and column in t[0]:
            return t
    return []


def tagged_json(text, tag):
    """The JSON object on the last line starting with TAG."""
    for line in reversed(text.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    return None


def row(workload, engine, value, unit, **rest):
    return dict(dict(workload=workload, engine=engine, value=value, unit=unit, ratio=None, ratio_to=None),
                **rest)


def w1_rows(meta):
    sys.path.insert(0, HERE)
    sys.dont_write_bytecode = True
    import report  # bench/report.py: the same reading of run.sh's results as its table

    path = meta["w1_results"]
    n = meta["n"]
    runs, status = report.load(path)
    rows = []
    for w in report.WORKLOADS:
        for e in report.ENGINES:
            rs, st = runs.get((w, e), []), status.get((w, e))
            engine = "hand-written loop (1 thread)" if e == "baseline" else "sluice"
            name = w[:2].upper() + w[2:]
            if st or not rs:
                rows.append(row(name, engine, None, "events/s",
                                status=f"{st['status']}" if st else "no runs",
                                notes=(st or {}).get("detail", "").splitlines()[0][:200] if st else ""))
                continue
            ev = statistics.median(n / r["wall_s"] for r in rs)
            rss = max(r["max_rss_kib"] for r in rs) / 1024
            rows.append(row(name, engine, round(ev), "events/s", status="ok",
                            runs=len(rs), peak_rss_mib=round(rss, 1),
                            notes=f"{len(rs)} runs, median; peak RSS {rss:.1f} MiB; output = oracle"))
    rs, st = runs.get(("startup", "sluice"), []), status.get(("startup", "sluice"))
    if rs and not st:
        ms = statistics.median(r["wall_s"] for r in rs) * 1000
        rows.append(row("start-up (empty input)", "sluice", round(ms, 1), "ms", status="ok",
                        notes=f"median of {len(rs)} runs"))
    else:
        rows.append(row("start-up (empty input)", "sluice", None, "ms", status="not measured",
                        notes=(st or {}).get("detail", "").splitlines()[0][:200] if st else ""))
    return rows


def duckdb_rows(text, meta):
    r = None
    for line in reversed(text.splitlines()):
        if line.startswith("{") and '"engine": "duckdb"' in line:
            r = json.loads(line)
            break
    if r is None:
        return []
    rows = []
    for w, x in r["workloads"].items():
        rows.append(row(w[:2].upper() + w[2:], f"DuckDB {r['version']} ({r['threads']} threads, batch)",
                        x["events_per_s"], "events/s",
                        status="ok" if x["matches_oracle"] else "MISMATCH",
                        median_s=x["median_s"], wall_s=x["wall_s"], query=x["query"],
                        peak_rss_mib=r["peak_rss_mib"],
                        notes=f"{len(x['wall_s'])} runs, median {x['median_s']} s; "
                              f"{'output = oracle' if x['matches_oracle'] else 'OUTPUT DIFFERS FROM THE ORACLE'}"))
    return rows


def http_rows(text, meta):
    """Sluice's rows and, from http_load.sh's trivial server, the HTTP
    stack's own limit; sluice's ratio is to that server in the same case."""
    rows = []
    for r in table_with(text, "count check"):
        single = r.get("case", "").startswith("single")
        value = number(r.get("requests/s" if single else "events/s"))
        trivial = r.get("server", "sluice") != "sluice"
        if trivial:
            workload, engine = f"HTTP {r.get('case')}", "trivial axum server (202, nothing else)"
            ok = r.get("count check") == "all accepted"
        else:
            workload, engine = f"HTTP {r.get('case')} ({r.get('durability')})", "sluice"
            ok = r.get("count check") == "exact"
        ratio = None if trivial else number(r.get("requests/s vs trivial" if single else "events/s vs trivial"))
        p99_ratio = None if trivial else number(r.get("p99 vs trivial"))
        rows.append(row(workload, engine, value, "requests/s" if single else "events/s",
                        status="ok" if ok else r.get("count check"),
                        p50_ms=number(r.get("p50 ms")), p99_ms=number(r.get("p99 ms")),
                        ratio=ratio, ratio_to="trivial axum server, same run" if ratio is not None else None,
                        p99_vs_trivial=p99_ratio,
                        notes=f"p99 {r.get('p99 ms')} ms" + (f" ({p99_ratio:.2f}× the trivial server's)"
                                                             if p99_ratio is not None else "")
                        + f"; {r.get('count check')}"))
    return rows


def consumer_rows(text, meta, title, rate_column):
    rows = []
    for r in table_with(text, rate_column):
        label = r.get("engine", "")
        engine = "hand-written consumer" if label.startswith("hand-written") else \
            "sluice" if label.startswith("sluice") else label
        exact = [f"{k}: {v}" for k, v in r.items() if k.startswith("exact") or k.startswith("difference")]
        ok = all(v in ("yes", "0", "-") for k, v in r.items() if k.startswith("exact")) \
            or engine != "sluice"
        rows.append(row(title, engine, number(r.get(rate_column)), "events/s",
                        status="ok" if ok and number(r.get(rate_column)) is not None else "not exact or failed",
                        notes="; ".join(exact) if exact else r.get("notes", "")))
    return rows


def redis_rows(text, meta):
    """redis.sh: sluice and the hand-written consumer, plus the file-sink
    reference on the same queue size (the Redis sink's rate as a ratio of it)."""
    rows = consumer_rows(text, meta, "W1a RabbitMQ -> Redis", "events/s (clean)")
    for r in table_with(text, "Redis sink / file sink"):
        vs_file = number(r.get("Redis sink / file sink"))
        rows.append(row("W1a RabbitMQ -> file (reference of redis.sh)", "sluice",
                        number(r.get("events/s")), "events/s",
                        status="ok" if r.get("exact") == "yes" else f"not exact or failed: {r.get('exact')}",
                        notes="same queue size, same run"))
        for x in rows:
            if x["workload"] == "W1a RabbitMQ -> Redis" and x["engine"] == "sluice" and vs_file is not None:
                x["ratio_vs_file"] = vs_file
    return rows


def postgres_rows(text, meta):
    """postgres.sh: one row per (workload, engine); sluice's rows carry the
    ratio to its file sink of the same run (`ratio_vs_file`); the ratio to
    the hand-written consumer is added by `finish`."""
    rows = []
    for r in table_with(text, "vs file sink"):
        label = r.get("engine", "")
        engine = "hand-written consumer" if label.startswith("hand-written") else \
            "sluice" if label.startswith("sluice") else label
        exact, value = r.get("exact", ""), number(r.get("events/s"))
        if engine == "sluice":
            status = "ok" if exact == "yes" and value is not None else f"not exact or failed: {exact}"
        else:  # the baseline's inexactness is reported, not a failure (as in redis.sh)
            status = "ok" if value is not None else f"failed: {exact}"
        workload = r.get("workload", "?")
        reference = "file" in workload
        if reference:  # not amqp.sh's row of the same name
            workload = "W1a RabbitMQ -> file (reference of postgres.sh)"
        x = row(workload, engine, value, "events/s", status=status, notes=f"{label}; exact: {exact}")
        if engine == "sluice" and not reference and number(r.get("vs file sink")) is not None:
            x["ratio_vs_file"] = number(r.get("vs file sink"))
        rows.append(x)
    return rows


def cluster_rows(text, meta):
    r = tagged_json(text, "CLUSTER_BENCH")
    if r is None:
        return []
    out = []
    for w in (1, 2):
        mmm = r.get(f"events_per_s_{w}w")
        p99 = r.get(f"p99_ms_{w}w")
        out.append(row(f"W1a over HTTP NDJSON, {w} worker{'s' if w > 1 else ''}", "sluice",
                       mmm[1] if mmm else None, "events/s",
                       status="ok" if r.get("all_exact") else "not exact",
                       ratio=r.get("ratio_2w_1w") if w == 2 else None,
                       ratio_to="1 worker, same run" if w == 2 else None,
                       notes=(f"min/median/max {mmm[0]:,.0f} / {mmm[1]:,.0f} / {mmm[2]:,.0f}; p99 median {p99[1]} ms"
                              + (f"; send-phase ratio to 1 worker {r['send_ratio_2w_1w']}"
                                 if w == 2 and r.get("send_ratio_2w_1w") is not None else "")
                              if mmm and p99 else "no exact run")))
    return out


def rescale_rows(text, meta):
    r = tagged_json(text, "RESCALE_BENCH")
    if r is None:
        return []
    return [row(f"rescale: {step}", "sluice", secs, "s to ready",
                status="ok" if meta.get("exit") == 0 else "keys not exact",
                notes=f"{r['keys']:,} keys, remote {r['remote']}; "
                      f"{r['restore_bytes'].get(step, 0):,} bytes from the remote copy"
                      + (f"; the previous workers stopped in {r['stop_seconds'][step]} s"
                         if step in r.get("stop_seconds", {}) else ""))
            for step, secs in r["seconds"].items()]


PARSERS = {
    "duckdb": duckdb_rows,
    "http": http_rows,
    "redis": redis_rows,
    "postgres": postgres_rows,
    "amqp": lambda t, m: consumer_rows(t, m, "W1a RabbitMQ -> file", "messages/s"),
    "kafka": lambda t, m: consumer_rows(t, m, "W1a Kafka -> Redis", "events/s (clean)"),
    "cluster": cluster_rows,
    "rescale": rescale_rows,
}


def add(kind, log, rows_path, meta):
    with open(log, errors="replace") as f:
        text = f.read()
    try:
        rows = w1_rows(meta) if kind == "w1" else PARSERS[kind](text, meta)
    except (OSError, ValueError, KeyError) as e:
        rows, meta = [], dict(meta, parse_error=f"{type(e).__name__}: {e}")
    if not rows:
        tail = " / ".join(l for l in text.strip().splitlines()[-3:])[:300]
        rows = [row(meta.get("name", kind), "-", None, "-", status=f"failed (exit {meta.get('exit')})",
                    notes=meta.get("parse_error", tail))]
    elif meta.get("exit") != 0:
        for r in rows:
            if r["status"] == "ok":
                r["status"] = f"ok, but the script exited {meta.get('exit')}"
    with open(rows_path, "a") as f:
        for r in rows:
            f.write(json.dumps(dict(meta, **r)) + "\n")


def finish(rows_path, results_path, doc_path, meta):
    with open(rows_path) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    by = {(r["workload"], r["engine"]): r for r in rows}
    for r in rows:
        if r.get("value") is None:
            continue
        base = None
        if r["workload"] in ("W1a", "W1b") and r["engine"] != "hand-written loop (1 thread)":
            base = by.get((r["workload"], "hand-written loop (1 thread)"))
            to = "hand-written loop (1 thread), same run"
        elif r["engine"] == "sluice" and (r["workload"], "hand-written consumer") in by:
            base = by[(r["workload"], "hand-written consumer")]
            to = "hand-written consumer, same run"
        if base and base.get("value"):
            r["ratio"], r["ratio_to"] = round(r["value"] / base["value"], 3), to
        if r["workload"] in ("W1a", "W1b") and r["engine"] == "sluice":
            duck = next((d for d in rows if d["workload"] == r["workload"]
                         and d["engine"].startswith("DuckDB") and d.get("value")), None)
            if duck:
                r["ratio_vs_duckdb"] = round(r["value"] / duck["value"], 3)
    result = dict(meta, rows=rows)
    with open(results_path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    section = markdown(result)
    print(section)
    if doc_path != "-":
        with open(doc_path) as f:
            doc = f.read()
        if BEGIN in doc and END in doc:
            head, rest = doc.split(BEGIN, 1)
            doc = head + BEGIN + "\n" + section + END + rest.split(END, 1)[1]
        else:
            doc = doc.rstrip("\n") + "\n\n## Every benchmark in one run (`bench/all.sh`)\n\n" \
                + BEGIN + "\n" + section + END + "\n"
        with open(doc_path, "w") as f:
            f.write(doc)
    bad = [r for r in rows if r["status"] != "ok" and not r["status"].startswith("skipped")]
    for r in bad:
        print(f"NOT OK: {r['workload']} {r['engine']}: {r['status']} (log {r.get('log', '-')})", file=sys.stderr)
    return 1 if bad else 0


def fmt(v, unit):
    if v is None:
        return "-"
    if unit in ("ms", "s to ready"):
        return f"{v:g} {'ms' if unit == 'ms' else 's'}"
    return f"{v / 1e6:.2f} M {unit}" if v >= 1e6 else f"{v:,.0f} {unit}"


def markdown(result):
    quick = result.get("mode") == "quick"
    out = []
    if quick:
        out.append("**`--quick` smoke run: small counts, not a measurement.** It shows that every "
                   "benchmark runs and checks its results; do not compare its figures.\n")
    out.append(f"Command: `{result['command']}`, {result['date']}, git {result['git']}, "
               f"binaries from `{result['bin_dir']}` (sluice built {result['bin_built']}). "
               f"Machine: {result['machine']}. Load average {result['load_start']} at the start, "
               f"{result['load_end']} at the end; {result['seconds']} s in all. Raw rows: "
               f"`bench/out/all/results.json`.\n")
    out.append("| workload | engine | value | ratio | command | load avg (1 min) start → end | git | result |")
    out.append("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        ratio = "-"
        if r.get("ratio") is not None:
            ratio = f"{r['ratio']:.2f}× {r['ratio_to'].split(',')[0]}"
        if r.get("ratio_vs_duckdb") is not None:
            ratio += f"; {r['ratio_vs_duckdb']:.2f}× DuckDB"
        if r.get("ratio_vs_file") is not None:
            ratio = ("" if ratio == "-" else ratio + "; ") + f"{r['ratio_vs_file']:.2f}× file sink"
        status = r["status"] + (f": {r['notes']}" if r.get("notes") else "")
        load = f"{r.get('load_start', '?').split()[0]} → {r.get('load_end', '?').split()[0]}" \
            if r.get("load_start") else "-"
        out.append(f"| {r['workload']} | {r['engine']} | {fmt(r.get('value'), r['unit'])} | {ratio} "
                   f"| `{r.get('command', '-')}` | {load} | {r.get('git', '-')} | {status.replace('|', '/')} |")
    out.append("")
    return "\n".join(out) + "\n"


def kv(args):
    """key=value arguments; whole numbers become ints (exit, seconds, n)."""
    pairs = dict(a.split("=", 1) for a in args)
    return {k: int(v) if k in ("exit", "seconds", "n") and v.isdigit() else v for k, v in pairs.items()}


def main():
    a = sys.argv[1:]
    if len(a) >= 4 and a[0] == "add":
        add(a[1], a[2], a[3], kv(a[4:]))
    elif len(a) >= 3 and a[0] == "skip":
        meta = kv(a[3:])
        with open(a[2], "a") as f:
            f.write(json.dumps(dict(meta, **row(a[1], "-", None, "-", status="skipped: " + meta.get("why", "?"),
                                                 notes=""))) + "\n")
    elif len(a) >= 4 and a[0] == "finish":
        return finish(a[1], a[2], a[3], kv(a[4:]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

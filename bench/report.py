#!/usr/bin/env python3
"""Summarise W1 benchmark results written by bench/run.sh.

usage: report.py line N JSON            one progress line for a single run
       report.py table RESULTS.jsonl N  the markdown summary table

RESULTS.jsonl holds one JSON object per line, either a measurement from
measure.py tagged with workload/engine/run, or a status record
{"workload", "engine", "status": "failed"|"mismatch"|"unavailable", "detail"}
that marks the (workload, engine) pair as having no valid result.
"""
import json
import statistics
import sys

MIB = 1024.0
TARGET_EVENTS = {"w1a": 3_000_000, "w1b": 2_000_000}  # sluice events/s
TARGET_RATIO = 0.6  # sluice / baseline events/s
TARGET_RSS_MIB = 150
TARGET_STARTUP_MS = 100
WORKLOADS = ["w1a", "w1b"]
ENGINES = ["baseline", "sluice"]


def rate(n):
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def check(ok):
    return "PASS" if ok else "MISS"


def line(n, rec):
    r = json.loads(rec)
    first = r.get("first_output_ms")
    first = "-" if first is None else f"{first:.0f} ms"
    print(f"  {r.get('workload', '?')} {r.get('engine', '?')} run {r.get('run', '?')}: "
          f"{r['wall_s']:.3f} s, {rate(n / r['wall_s'])} ev/s, "
          f"peak RSS {r['max_rss_kib'] / MIB:.1f} MiB, first output {first}")


def load(path):
    runs, status = {}, {}
    with open(path) as f:
        for raw in f:
            if not raw.strip():
                continue
            r = json.loads(raw)
            key = (r["workload"], r["engine"])
            if "status" in r:
                status.setdefault(key, r)  # the first problem is the one to fix
            elif r.get("rc") == 0:
                runs.setdefault(key, []).append(r)
    return runs, status


def table(path, n):
    runs, status = load(path)
    notes = []
    medians = {}
    for key, rs in runs.items():
        if key not in status:
            medians[key] = statistics.median(n / r["wall_s"] for r in rs)

    print("| workload | engine | events/s (median) | ratio vs baseline | peak RSS MiB "
          "| first output ms | targets |")
    print("|---|---|---|---|---|---|---|")
    for w in WORKLOADS:
        base = medians.get((w, "baseline"))
        for e in ENGINES:
            key = (w, e)
            rs = runs.get(key, [])
            st = status.get(key)
            if st or not rs:
                what = {"mismatch": "INVALID: output mismatch", "unavailable": "not built",
                        "failed": "FAILED"}.get(st["status"] if st else "", "no runs")
                print(f"| {w.upper()} | {e} | {what} | - | - | - | "
                      f"{'MISS (no valid result)' if e == 'sluice' else '-'} |")
                if st:
                    notes.append(f"{e} {w.upper()}: {what}\n{indent(st.get('detail', ''))}")
                continue
            ev = medians[key]
            ratio = ev / base if base else None
            rss = max(r["max_rss_kib"] for r in rs) / MIB
            firsts = [r["first_output_ms"] for r in rs if r.get("first_output_ms") is not None]
            first = f"{statistics.median(firsts):.0f}" if firsts else "-"
            if e == "sluice":
                checks = [f"≥ {TARGET_EVENTS[w] / 1e6:.0f} M ev/s {check(ev >= TARGET_EVENTS[w])}",
                          f"ratio ≥ {TARGET_RATIO} "
                          + (check(ratio >= TARGET_RATIO) if ratio is not None else "n/a"),
                          f"RSS ≤ {TARGET_RSS_MIB} MiB {check(rss <= TARGET_RSS_MIB)}"]
                targets = ("PASS" if all(c.endswith("PASS") for c in checks) else "MISS") \
                    + ": " + ", ".join(checks)
            else:
                targets = "- (reference)"
            ratio_s = f"{ratio:.2f}" if ratio is not None else "-"
            print(f"| {w.upper()} | {e} | {rate(ev)} | {ratio_s} | {rss:.1f} | {first} | {targets} |")

    print()
    key = ("startup", "sluice")
    st = status.get(key)
    if st or not runs.get(key):
        print(f"start-up (sluice run, empty input): not measured — target < {TARGET_STARTUP_MS} ms: MISS")
        if st:
            notes.append(f"sluice start-up: not measured\n{indent(st.get('detail', ''))}")
    else:
        rs = runs[key]
        ms = statistics.median(r["wall_s"] for r in rs) * 1000.0
        print(f"start-up (sluice run, empty input, median of {len(rs)}): {ms:.0f} ms "
              f"(min {min(r['wall_s'] for r in rs) * 1000:.0f}, "
              f"max {max(r['wall_s'] for r in rs) * 1000:.0f}) — "
              f"target < {TARGET_STARTUP_MS} ms: {check(ms < TARGET_STARTUP_MS)}")

    print("\nper run (events/s = N / wall time of the whole process):")
    for w in WORKLOADS:
        for e in ENGINES:
            rs = runs.get((w, e), [])
            if rs:
                print(f"  {w.upper()} {e}: " + ", ".join(
                    f"{rate(n / r['wall_s'])} ({r['wall_s']:.3f} s, {r['max_rss_kib'] / MIB:.1f} MiB)"
                    for r in rs))
    if notes:
        print("\nproblems:")
        for note in notes:
            print(f"- {note}")


def indent(text):
    return "\n".join("    " + t for t in text.rstrip().splitlines()) or "    (no detail)"


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "line":
        line(int(args[1]), args[2])
    elif len(args) == 3 and args[0] == "table":
        table(args[1], int(args[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

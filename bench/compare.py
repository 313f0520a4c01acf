#!/usr/bin/env python3
"""Check sluice's W1 output against the oracle.

usage: compare.py SLUICE_OUTPUT.ndjson ORACLE.csv w1a|w1b

Sluice's file sink writes one JSON object per line. Results are upserts that
carry absolute values, so a key may appear several times: the LAST line for a
key wins. This script materialises that final table and compares it with the
oracle CSV written by bench/w1/ref_counts.py (no header, sorted):

  w1a: lines {"country":"GT","count":123}
       oracle  country,count
  w1b: lines {"country":"GT","weather":"Sunny","window_start":1732147200000,
              "window_end":1732147260000,"count":17}
       oracle  window_start_ms,country,weather,count

Exit status: 0 if the tables are identical, 1 on any mismatch (with a diff
summary on stderr), 2 on bad usage or an unreadable/malformed file. Fields
other than the ones above are ignored; a wrong type, a missing field or a
window_end other than window_start + 1 minute is a mismatch.
"""
import json
import sys

WINDOW_MS = 60_000
MAX_EXAMPLES = 10


class Malformed(Exception):
    pass


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def load_oracle(path, workload):
    table = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split(",")
            try:
                if workload == "w1a" and len(parts) == 2:
                    table[parts[0]] = int(parts[1])
                elif workload == "w1b" and len(parts) == 4:
                    table[(int(parts[0]), parts[1], parts[2])] = int(parts[3])
                else:
                    raise ValueError("wrong number of columns")
            except ValueError as e:
                raise Malformed(f"{path}:{lineno}: not a {workload} oracle row ({e}): {line!r}")
    return table


def load_sluice(path, workload):
    """Returns (final table, number of lines, list of per-line problems)."""
    table = {}
    problems = []
    lines = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            lines += 1
            try:
                row = json.loads(raw)
            except ValueError as e:
                raise Malformed(f"{path}:{lineno}: not JSON ({e}): {raw[:200]!r}")
            if not isinstance(row, dict):
                raise Malformed(f"{path}:{lineno}: not a JSON object: {raw[:200]!r}")
            try:
                key, count = parse_row(row, workload)
            except ValueError as e:
                problems.append(f"line {lineno}: {e}: {raw[:200].decode(errors='replace').rstrip()}")
                continue
            table[key] = count
    return table, lines, problems


def parse_row(row, workload):
    country = row.get("country")
    count = row.get("count")
    if not isinstance(country, str):
        raise ValueError("`country` missing or not a string")
    if not is_int(count):
        raise ValueError("`count` missing or not an integer")
    if workload == "w1a":
        return country, count
    weather = row.get("weather")
    start = row.get("window_start")
    end = row.get("window_end")
    if not isinstance(weather, str):
        raise ValueError("`weather` missing or not a string")
    if not is_int(start) or not is_int(end):
        raise ValueError("`window_start`/`window_end` missing or not integers (ms)")
    if start % WINDOW_MS != 0 or end != start + WINDOW_MS:
        raise ValueError(f"window [{start}, {end}) is not an epoch-aligned 1-minute window")
    return (start, country, weather), count


def fmt_key(key):
    return ",".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def main():
    if len(sys.argv) != 4 or sys.argv[3] not in ("w1a", "w1b"):
        print("usage: compare.py SLUICE_OUTPUT.ndjson ORACLE.csv w1a|w1b", file=sys.stderr)
        return 2
    out_path, oracle_path, workload = sys.argv[1:]
    try:
        expected = load_oracle(oracle_path, workload)
        actual, lines, problems = load_sluice(out_path, workload)
    except (OSError, Malformed) as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2

    missing = sorted(k for k in expected if k not in actual)
    extra = sorted(k for k in actual if k not in expected)
    wrong = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    summary = (f"{workload}: {lines} output lines -> {len(actual)} keys "
               f"(oracle {len(expected)} keys, {sum(expected.values())} events; "
               f"output sums to {sum(actual.values())})")
    if not (missing or extra or wrong or problems):
        print(f"compare: OK {summary}")
        return 0

    err = sys.stderr
    print(f"compare: MISMATCH {summary}", file=err)
    print(f"  malformed lines: {len(problems)}, missing keys: {len(missing)}, "
          f"unexpected keys: {len(extra)}, wrong counts: {len(wrong)}", file=err)
    for p in problems[:MAX_EXAMPLES]:
        print(f"  malformed {p}", file=err)
    for k in missing[:MAX_EXAMPLES]:
        print(f"  missing    {fmt_key(k)}: expected {expected[k]}", file=err)
    for k in extra[:MAX_EXAMPLES]:
        print(f"  unexpected {fmt_key(k)}: got {actual[k]}", file=err)
    for k in wrong[:MAX_EXAMPLES]:
        print(f"  wrong      {fmt_key(k)}: expected {expected[k]}, got {actual[k]} "
              f"(diff {actual[k] - expected[k]:+d})", file=err)
    if max(len(problems), len(missing), len(extra), len(wrong)) > MAX_EXAMPLES:
        print(f"  (at most {MAX_EXAMPLES} examples of each kind shown)", file=err)
    return 1


if __name__ == "__main__":
    sys.exit(main())

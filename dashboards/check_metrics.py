#!/usr/bin/env python3
"""Check that the dashboards and alert rules only use metrics sluice exports.

usage: check_metrics.py [--list] [--exposition FILE|URL ...] [--unused]
                        [--dashboards DIR] [--rules FILE ...]

Collects every metric name used by the Grafana dashboards (panel queries and
variable queries) and the Prometheus rule files, by lexing the PromQL:
identifiers that are not functions, aggregations, keywords, label names
(in {...}, by/without/on/ignoring/group_left/group_right lists) or
durations. Histogram series (_bucket, _sum, _count) count as their base name.

  --list               print the used names, one per line (the default)
  --exposition F       Prometheus text exposition to check against: a file,
                       '-' for stdin, or an http(s):// URL such as
                       http://127.0.0.1:9898/metrics. Every used sluice_*
                       name must be exported there; the missing ones are
                       listed with where they are used, and the exit code
                       is 1. Repeatable (the union is checked), so several
                       workers or pipelines can together cover every metric.
  --unused             with --exposition: also list exported sluice_* metrics
                       that no dashboard or rule shows (informational)

Names not starting with sluice_ must be series Prometheus itself creates
(`up`); any other foreign name is an error.
"""
import argparse
import os
import re
import sys
import urllib.request

import yaml

sys.dont_write_bytecode = True  # no __pycache__ in the repository
import check_dashboards  # noqa: E402  (dashboards/check_dashboards.py)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RULES = [os.path.join(HERE, "prometheus", "alerts.yml")]

# Series that Prometheus writes itself for every scrape target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                     "scrape_samples_post_metric_relabeling", "scrape_series_added"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "atan2", "inf", "nan"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Aggregation operators may be followed by `by (...)` / `without (...)`
# before their parenthesis: `sum by (le) (rate(x[5m]))`.
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}

TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>[0-9][0-9A-Za-z_.]*|\.[0-9][0-9A-Za-z_.]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<variable>\$\{?[A-Za-z0-9_:]+\}?)
  | (?P<punct>[(){}\[\],@]|[-+*/%^=!<>~]+)
""", re.X)


class PromQLError(Exception):
    pass


def tokens(expr):
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise PromQLError(f"cannot lex {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        if m.lastgroup not in ("space", "comment"):
            out.append((m.lastgroup, m.group()))
    return out


def metric_names(expr):
    """The metric names an expression selects."""
    toks = tokens(expr)
    names = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        if kind == "punct" and text in ("{", "["):
            close = "}" if text == "{" else "]"
            j = i + 1
            while j < len(toks) and toks[j][1] != close:
                j += 1
            if text == "{":
                # {__name__="metric"} selects by name.
                inner = toks[i + 1:j]
                for k in range(len(inner) - 2):
                    if inner[k][1] == "__name__" and inner[k + 1][1] == "=" and inner[k + 2][0] == "string":
                        names.add(inner[k + 2][1][1:-1])
            i = j + 1
            continue
        if kind == "ident":
            nxt = toks[i + 1][1] if i + 1 < len(toks) else None
            if text in LABEL_LIST_KEYWORDS and nxt == "(":
                j = i + 2
                while j < len(toks) and toks[j][1] != ")":
                    j += 1
                i = j + 1
                continue
            if text in AGGREGATIONS and nxt in ("by", "without"):
                i += 1
                continue
            if text not in KEYWORDS and nxt != "(":
                names.add(text)
        i += 1
    return names


def base_name(name):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def used_metrics(dashboards_dir, rule_files):
    """{name as used: set of places}."""
    used = {}

    def add(expr, where):
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)

    for path in check_dashboards.dashboard_files(
            [os.path.join(dashboards_dir, f) for f in sorted(os.listdir(dashboards_dir)) if f.endswith(".json")]):
        dashboard = check_dashboards.load(path)
        for where, expr in check_dashboards.expressions(dashboard):
            add(check_dashboards.substitute(expr)[0], f"{os.path.basename(path)}: {where}")
    for path in rule_files:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert") or rule.get("record")
                add(str(rule["expr"]), f"{os.path.basename(path)}: {name}")
    return used


def parse_exposition(text):
    """(sample names, {name: type}) of Prometheus text exposition."""
    samples, types = set(), {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
        if m:
            samples.add(m.group())
    return samples, types


def read_exposition(source):
    if source == "-":
        return sys.stdin.read()
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=10) as response:
            return response.read().decode("utf-8")
    with open(source, encoding="utf-8") as f:
        return f.read()


def is_exported(name, samples, types):
    if name in samples or name in types:
        return True
    base = base_name(name)
    return base != name and types.get(base) in ("histogram", "summary", "gaugehistogram")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the used metric names")
    parser.add_argument("--exposition", action="append", default=[], metavar="FILE",
                        help="exposition text to check against (file, '-' or URL); repeatable")
    parser.add_argument("--unused", action="store_true", help="list exported metrics nothing uses")
    parser.add_argument("--dashboards", default=HERE, help="directory of the dashboard JSON files")
    parser.add_argument("--rules", action="append", metavar="FILE",
                        help="Prometheus rule file (default: prometheus/alerts.yml); repeatable")
    args = parser.parse_args()

    try:
        used = used_metrics(args.dashboards, args.rules or DEFAULT_RULES)
    except (OSError, ValueError, yaml.YAMLError, PromQLError) as e:
        print(f"check_metrics.py: {e}", file=sys.stderr)
        return 2

    failed = False
    foreign = sorted(n for n in used if not n.startswith("sluice_") and n not in PROMETHEUS_SERIES)
    for name in foreign:
        print(f"not a sluice metric: {name} (used by {'; '.join(sorted(used[name]))})", file=sys.stderr)
        failed = True

    if args.list or not args.exposition:
        for name in sorted({base_name(n) if n.startswith("sluice_") else n for n in used}):
            print(name)

    if args.exposition:
        samples, types = set(), {}
        for source in args.exposition:
            try:
                s, t = parse_exposition(read_exposition(source))
            except OSError as e:
                print(f"check_metrics.py: cannot read {source}: {e}", file=sys.stderr)
                return 2
            samples |= s
            types.update(t)
        # Report by base name: a histogram missing from the exposition is one
        # problem, not one per _bucket/_sum/_count series.
        missing, checked = {}, set()
        for name in used:
            if not name.startswith("sluice_"):
                continue
            checked.add(base_name(name))
            if not is_exported(name, samples, types):
                missing.setdefault(base_name(name), set()).update(used[name])
        for name in sorted(missing):
            print(f"not exported: {name} (used by {'; '.join(sorted(missing[name]))})", file=sys.stderr)
        print(f"check_metrics.py: {len(checked)} sluice metrics used, {len(missing)} not exported")
        failed = failed or bool(missing)
        if args.unused:
            used_bases = {base_name(n) for n in used}
            exported = {base_name(n) if types.get(base_name(n)) in ("histogram", "summary") else n
                        for n in samples | set(types) if n.startswith("sluice_")}
            for name in sorted(exported - used_bases - set(used)):
                print(f"exported but unused: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

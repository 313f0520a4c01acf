#!/usr/bin/env python3
"""Lint the Grafana dashboards and extract their PromQL for promtool.

usage: check_dashboards.py [--rules-out FILE] [DASHBOARD.json ...]

Without arguments every dashboards/*.json next to this script is checked.

Lint (exit 1 on any finding):
  - valid JSON, a uid unique across the files, a title, schemaVersion >= 36;
  - the template variables DS_PROMETHEUS (a Prometheus datasource variable),
    pipeline and instance exist;
  - every panel and query uses the datasource {"uid": "${DS_PROMETHEUS}"},
    panel ids are unique, panels fit the 24-column grid, every query has a
    unique refId and an expression;
  - every selector of a sluice_* metric is filtered by
    pipeline=~"$pipeline" and instance=~"$instance", so no panel shows
    another pipeline's or worker's data;
  - no Grafana variable other than the known ones is used.

--rules-out FILE writes every expression (panel queries and the metric
selectors of the variable queries), with the Grafana variables replaced by
concrete values, as a Prometheus recording-rules file, so that
`promtool check rules FILE` parses each of them with Prometheus' own parser.
"""
import argparse
import glob
import json
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))

# Concrete stand-ins for the Grafana variables the dashboards may use.
SUBSTITUTIONS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "pipeline": "weather-count",
    "instance": "sluice-0:9898",
}

REQUIRED_VARIABLES = ("DS_PROMETHEUS", "pipeline", "instance")
DATASOURCE_UID = "${DS_PROMETHEUS}"
REQUIRED_MATCHERS = ('pipeline=~"$pipeline"', 'instance=~"$instance"')

VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
SELECTOR = re.compile(r"\b(sluice_[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*([A-Za-z_]\w*)\s*\)\s*$", re.S)


def dashboard_files(paths=None):
    return sorted(paths) if paths else sorted(glob.glob(os.path.join(HERE, "*.json")))


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def all_panels(dashboard):
    """Panels in display order, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        for nested in panel.get("panels", []) or []:
            yield nested


def variable_query(variable):
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    return query if isinstance(query, str) else None


def expressions(dashboard):
    """(where, expression) for every PromQL expression of a dashboard: panel
    queries, and the selector inside label_values(...) variable queries."""
    out = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []) or []:
            if target.get("expr"):
                out.append((f"panel {panel.get('id')} {panel.get('title')!r} query {target.get('refId')}",
                            target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable_query(variable) or ""
        match = LABEL_VALUES.match(query)
        if match:
            out.append((f"variable {variable['name']}", match.group(1)))
    return out


def substitute(expr):
    """Replaces Grafana variables by concrete values; returns (expr, unknown
    variable names)."""
    unknown = []

    def repl(match):
        name = match.group(1) or match.group(2) or match.group(3)
        if name in SUBSTITUTIONS:
            return SUBSTITUTIONS[name]
        unknown.append(name)
        return match.group(0)

    return VARIABLE.sub(repl, expr), unknown


def lint(path, dashboard, seen_uids):
    problems = []
    name = os.path.basename(path)

    def problem(message):
        problems.append(f"{name}: {message}")

    uid = dashboard.get("uid")
    if not uid:
        problem("no uid")
    elif uid in seen_uids:
        problem(f"uid {uid!r} also used by {seen_uids[uid]}")
    else:
        seen_uids[uid] = name
    if not dashboard.get("title"):
        problem("no title")
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        problem(f"schemaVersion {dashboard.get('schemaVersion')!r} < 36")

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    for required in REQUIRED_VARIABLES:
        if required not in variables:
            problem(f"template variable {required!r} missing")
    ds_var = variables.get("DS_PROMETHEUS", {})
    if ds_var and (ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus"):
        problem("DS_PROMETHEUS must be a datasource variable of type prometheus")
    for var in variables.values():
        if var.get("type") == "query" and (var.get("datasource") or {}).get("uid") != DATASOURCE_UID:
            problem(f"variable {var.get('name')!r} does not use datasource {DATASOURCE_UID}")

    ids = set()
    for panel in all_panels(dashboard):
        pid, title = panel.get("id"), panel.get("title")
        where = f"panel {pid} {title!r}"
        if pid in ids:
            problem(f"{where}: duplicate panel id")
        ids.add(pid)
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            problem(f"{where}: gridPos incomplete")
        elif grid["x"] < 0 or grid["x"] + grid["w"] > 24:
            problem(f"{where}: does not fit the 24-column grid")
        if panel.get("type") == "row":
            continue
        if not title:
            problem(f"panel {pid}: no title")
        if (panel.get("datasource") or {}).get("uid") != DATASOURCE_UID:
            problem(f"{where}: datasource is not {DATASOURCE_UID}")
        targets = panel.get("targets") or []
        if not targets:
            problem(f"{where}: no queries")
        ref_ids = set()
        for target in targets:
            ref = target.get("refId")
            if not ref or ref in ref_ids:
                problem(f"{where}: missing or duplicate refId {ref!r}")
            ref_ids.add(ref)
            if (target.get("datasource") or {}).get("uid") not in (None, DATASOURCE_UID):
                problem(f"{where} query {ref}: datasource is not {DATASOURCE_UID}")
            expr = target.get("expr")
            if not expr:
                problem(f"{where} query {ref}: no expression")
                continue
            for match in SELECTOR.finditer(expr):
                matchers = match.group(2) or ""
                for required in REQUIRED_MATCHERS:
                    if required not in matchers:
                        problem(f"{where} query {ref}: {match.group(1)} is not filtered by {required}")

    for where, expr in expressions(dashboard):
        _, unknown = substitute(expr)
        for var in unknown:
            problem(f"{where}: unknown variable ${var}")
    return problems


def rules_document(items):
    """items: (dashboard uid, where, substituted expr) -> rules file dict."""
    groups = {}
    for uid, where, expr in items:
        group = groups.setdefault(uid, [])
        record = "dashboard:" + re.sub(r"[^A-Za-z0-9_]", "_", uid) + f":q{len(group) + 1}"
        group.append({"record": record, "expr": expr, "labels": {"source": where[:120]}})
    return {"groups": [{"name": f"dashboard-{uid}", "rules": rules} for uid, rules in groups.items()]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dashboards", nargs="*")
    parser.add_argument("--rules-out", help="write the substituted expressions as a rules file")
    args = parser.parse_args()

    problems, items, seen_uids = [], [], {}
    files = dashboard_files(args.dashboards)
    if not files:
        print("check_dashboards.py: no dashboard files found", file=sys.stderr)
        return 1
    for path in files:
        try:
            dashboard = load(path)
        except (OSError, json.JSONDecodeError) as e:
            problems.append(f"{os.path.basename(path)}: {e}")
            continue
        problems += lint(path, dashboard, seen_uids)
        for where, expr in expressions(dashboard):
            items.append((dashboard.get("uid", os.path.basename(path)), where, substitute(expr)[0]))

    if args.rules_out:
        with open(args.rules_out, "w", encoding="utf-8") as f:
            yaml.safe_dump(rules_document(items), f, sort_keys=False, width=1000)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"check_dashboards.py: {len(files)} dashboards, {len(items)} expressions, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

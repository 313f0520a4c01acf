#!/usr/bin/env python3
"""Waits until the workers of bench/cluster.sh hold exactly the W1a oracle.

usage: cluster_wait.py ORACLE_W1A.csv TIMEOUT_S ADMIN_PORT [ADMIN_PORT...]

Polls every worker's `GET /tables/counts` (every 20 ms) and merges the rows:
each country must be held by exactly one worker (its key group's owner),
and the merged table must equal the oracle (`country,count` lines). Prints
one JSON line: `waited_s` (from this script's start until the first exact
poll), `status` (`exact`, or `mismatch` with a summary of the last poll),
`rows_per_worker`, and per worker the sum of
`sluice_exchange_sent_records_total`,
`sluice_exchange_folded_rows_total` and
`sluice_exchange_received_records_total` from its `/metrics` (0 when the
worker exports none: one worker has no exchange). Exit status 0 when exact.
"""
import json
import sys
import time
import urllib.request


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def rows(port):
    page = json.loads(get(port, "/tables/counts?limit=10000"))
    return {r["value"]["country"]: r["value"]["count"] for r in page["rows"]}


def metric_sum(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    oracle_path, timeout, ports = sys.argv[1], float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
    oracle = {}
    with open(oracle_path, encoding="utf-8") as f:
        for line in f:
            country, count = line.rstrip("\n").rsplit(",", 1)
            oracle[country] = int(count)
    started = time.monotonic()
    status, per_worker = "no answer", []
    while True:
        try:
            per_worker = [rows(p) for p in ports]
        except (OSError, ValueError, KeyError) as e:
            status = f"poll failed: {e}"
        else:
            merged, twice = {}, []
            for table in per_worker:
                for country, count in table.items():
                    if country in merged:
                        twice.append(country)
                    merged[country] = merged.get(country, 0) + count
            if twice:
                status = f"mismatch: held by two workers: {sorted(twice)[:5]}"
                break
            if merged == oracle:
                status = "exact"
                break
            missing = sum(oracle.values()) - sum(merged.values())
            over = [k for k in merged if merged[k] > oracle.get(k, 0)]
            status = f"mismatch: {missing} events short, {len(over)} countries over the oracle"
        if time.monotonic() - started > timeout:
            break
        time.sleep(0.02)
    waited = time.monotonic() - started
    exchange = []
    for p in ports:
        try:
            text = get(p, "/metrics")
        except OSError:
            text = ""
        exchange.append({
            "sent_records": metric_sum(text, "sluice_exchange_sent_records_total"),
            "folded_rows": metric_sum(text, "sluice_exchange_folded_rows_total"),
            "received_records": metric_sum(text, "sluice_exchange_received_records_total"),
        })
    print(json.dumps({
        "waited_s": round(waited, 3),
        "status": status,
        "rows_per_worker": [len(t) for t in per_worker],
        "exchange": exchange,
    }))
    sys.exit(0 if status == "exact" else 1)


if __name__ == "__main__":
    main()

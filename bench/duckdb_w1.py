#!/usr/bin/env python3
"""DuckDB reference for W1a and W1b: the same GROUP BY as a batch query.

usage: duckdb_w1.py DATA.jsonl ORACLE_DIR RUNS THREADS OUT_DIR

Runs under the virtualenv bench/all.sh creates (pip install duckdb). For
each workload, RUNS times: a fresh in-memory connection with
`SET threads = THREADS`, the query below over DATA (hot in the page cache),
every result row fetched into Python. The time of one run is that whole
step (connect, read and parse the file, group, fetch), not the Python
interpreter's start-up nor `import duckdb`. The result of every run is
formatted as the oracle (bench/w1/ref_counts.py) writes it and must be
byte-identical to ORACLE_DIR/w1a.csv or w1b.csv; a mismatch is written to
OUT_DIR and makes the exit status 1.

Prints one JSON object: DuckDB's version, threads, the queries, and per
workload the wall seconds of every run, the median, events/s (N / median)
and whether every run matched. Peak RSS is the whole Python process's
(ru_maxrss), so it includes the interpreter and every earlier run.
"""
import json
import os
import resource
import statistics
import sys
import time

import duckdb

SOURCE = ("read_json('{path}', format = 'newline_delimited', "
          "columns = {{'ts': 'BIGINT', 'country': 'VARCHAR', 'weather': 'VARCHAR'}})")
QUERIES = {
    "w1a": "SELECT country, count(*) FROM {source} GROUP BY country",
    "w1b": "SELECT ts // 60000 * 60000, country, weather, count(*) FROM {source} "
           "GROUP BY ALL",
}


def csv_lines(rows):
    """The oracle's format: keys sorted as Python sorts them, comma separated."""
    return "".join(",".join(str(v) for v in row) + "\n" for row in sorted(rows))


def main():
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    data, oracle_dir, runs, threads, out_dir = sys.argv[1:]
    runs, threads = int(runs), int(threads)
    os.makedirs(out_dir, exist_ok=True)
    with open(data, "rb") as f:
        n = sum(1 for _ in f)  # also brings the file into the page cache
    source = SOURCE.format(path=data.replace("'", "''"))
    result = {"engine": "duckdb", "version": duckdb.__version__, "threads": threads, "n": n,
              "runs": runs, "workloads": {}}
    status = 0
    for w, template in QUERIES.items():
        query = template.format(source=source)
        with open(os.path.join(oracle_dir, f"{w}.csv")) as f:
            oracle = f.read()
        walls, matched = [], True
        for r in range(runs):
            t0 = time.perf_counter()
            con = duckdb.connect()
            con.execute(f"SET threads = {threads}")
            rows = con.execute(query).fetchall()
            con.close()
            walls.append(time.perf_counter() - t0)
            got = csv_lines(rows)
            if got != oracle:
                matched = False
                bad = os.path.join(out_dir, f"duckdb-{w}-run{r + 1}.csv")
                with open(bad, "w") as f:
                    f.write(got)
                print(f"duckdb {w} run {r + 1}: result differs from the oracle ({bad} vs "
                      f"{oracle_dir}/{w}.csv)", file=sys.stderr)
                status = 1
        median = statistics.median(walls)
        result["workloads"][w] = {
            "query": query, "wall_s": [round(x, 4) for x in walls], "median_s": round(median, 4),
            "events_per_s": round(n / median), "matches_oracle": matched,
        }
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))
    return status


if __name__ == "__main__":
    sys.exit(main())

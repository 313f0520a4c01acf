#!/usr/bin/env python3
"""Checks bench/all_report.py (the part of bench/all.sh that reads the
benchmarks' output and rewrites docs/BENCHMARKS.md) on output in the
scripts' formats, without running any benchmark. Run by tests/run.sh:

    python3 tests/bench_all_report.py
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "bench", "all_report.py")

HTTP_LOG = """command: bench/http_load.sh 20000 200; 2 cores, load 4.32 3.61 3.78

| case | durability | requests | requests/s | events/s | p50 ms | p99 ms | accepted events | rejected/errors | count check |
|---|---|---|---|---|---|---|---|---|---|
| single events | fsync=true | 20000 | 19,162 | 19,162 | 5.29 | 21.85 | 20000 | 0/0 | exact |
| NDJSON x1000 | fsync=true | 200 | 1,203 | 1,202,877 | 11.75 | 26.71 | 200000 | 0/0 | MISMATCH (199000 counted) |
"""
REDIS_LOG = """## W1a through RabbitMQ into Redis

| engine | events/s (clean) | exact after clean run | exact after kill -9 | difference after kill |
|---|---|---|---|---|
| hand-written consumer (HINCRBY + INCR + ack per message) | 2,000 | yes | no | messages:total +3 |
| sluice (amqp -> aggregate -> redis hash + totals) | 18,000 | yes | yes | 0 |
"""
CLUSTER_LOG = 'CLUSTER_BENCH {"ratio_2w_1w": 0.75, "events_per_s_1w": [90, 100, 110], ' \
    '"events_per_s_2w": [70, 75, 80], "p99_ms_1w": [1, 2, 3], "p99_ms_2w": [4, 5, 6], "all_exact": true}\n'
DOC = "# Benchmarks\n\nmeasured text\n\n<!-- bench/all.sh:begin -->\nold\n<!-- bench/all.sh:end -->\ntail text\n"
META = ["mode=quick", "command=bench/all.sh --quick", "git=abc1234", "date=d", "bin_dir=/b",
        "bin_built=t", "machine=m", "load_start=1.00 1.00 1.00", "load_end=2.00 2.00 2.00", "seconds=9"]


class AllReport(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.rows = self.path("rows.jsonl")
        open(self.rows, "w").close()

    def tearDown(self):
        self.dir.cleanup()

    def path(self, name):
        return os.path.join(self.dir.name, name)

    def run_report(self, *args):
        return subprocess.run([sys.executable, REPORT, *args], capture_output=True, text=True)

    def add(self, kind, log, exit_=0):
        with open(self.path(kind + ".log"), "w") as f:
            f.write(log)
        r = self.run_report("add", kind, self.path(kind + ".log"), self.rows, f"name={kind}",
                            f"command=bash bench/{kind}.sh", f"exit={exit_}",
                            "load_start=1.50 1.00 1.00", "load_end=1.70 1.00 1.00", "git=abc1234")
        self.assertEqual(r.returncode, 0, r.stderr)

    def finish(self):
        with open(self.path("doc.md"), "w") as f:
            f.write(DOC)
        r = self.run_report("finish", self.rows, self.path("results.json"), self.path("doc.md"), *META)
        with open(self.path("results.json")) as f:
            rows = json.load(f)["rows"]
        with open(self.path("doc.md")) as f:
            return r, {(x["workload"], x["engine"]): x for x in rows}, f.read()

    def test_rows_ratios_and_doc(self):
        self.add("http", HTTP_LOG.replace("MISMATCH (199000 counted)", "exact"))
        self.add("redis", REDIS_LOG)
        self.add("cluster", CLUSTER_LOG)
        r = self.run_report("skip", "kafka", self.rows, "why=no broker", "command=bash bench/kafka.sh 5")
        self.assertEqual(r.returncode, 0, r.stderr)
        r, rows, doc = self.finish()
        self.assertEqual(r.returncode, 0, r.stderr)
        single = rows[("HTTP single events (fsync=true)", "sluice")]
        self.assertEqual((single["value"], single["unit"], single["p99_ms"]), (19162, "requests/s", 21.85))
        self.assertEqual(rows[("HTTP NDJSON x1000 (fsync=true)", "sluice")]["value"], 1202877)
        sluice = rows[("W1a RabbitMQ -> Redis", "sluice")]
        self.assertEqual((sluice["value"], sluice["ratio"], sluice["status"]), (18000, 9.0, "ok"))
        self.assertEqual(sluice["load_start"], "1.50 1.00 1.00")
        self.assertEqual(rows[("W1a over HTTP NDJSON, 2 workers", "sluice")]["ratio"], 0.75)
        self.assertTrue(rows[("kafka", "-")]["status"].startswith("skipped: no broker"))
        # Only the part between the markers changes, and every row is there with its command.
        self.assertTrue(doc.startswith("# Benchmarks\n\nmeasured text\n\n<!-- bench/all.sh:begin -->\n"))
        self.assertTrue(doc.endswith("<!-- bench/all.sh:end -->\ntail text\n"))
        self.assertNotIn("\nold\n", doc)
        self.assertIn("smoke run", doc)
        self.assertIn("| W1a RabbitMQ -> Redis | sluice | 18,000 events/s | 9.00× hand-written consumer "
                      "| `bash bench/redis.sh` | 1.50 → 1.70 | abc1234 | ok", doc)

    def test_failures_are_reported(self):
        self.add("http", HTTP_LOG)  # one count check failed
        self.add("redis", REDIS_LOG.replace("| yes | yes | 0 |", "| yes | NO | +5 |"), exit_=1)
        self.add("rescale", "rescale.sh: worker 0 of 1 exited\n", exit_=1)
        r, rows, doc = self.finish()
        self.assertEqual(r.returncode, 1)
        self.assertEqual(rows[("HTTP NDJSON x1000 (fsync=true)", "sluice")]["status"], "MISMATCH (199000 counted)")
        self.assertEqual(rows[("W1a RabbitMQ -> Redis", "sluice")]["status"], "not exact or failed")
        self.assertEqual(rows[("rescale", "-")]["status"], "failed (exit 1)")
        self.assertIn("worker 0 of 1 exited", rows[("rescale", "-")]["notes"])
        self.assertIn("NOT OK: rescale", r.stderr)


if __name__ == "__main__":
    unittest.main()

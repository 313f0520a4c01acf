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

| case | server | durability | requests | requests/s | events/s | p50 ms | p99 ms | accepted events | rejected/errors | count check | requests/s vs trivial | events/s vs trivial | p99 vs trivial |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| single events | trivial axum server | - | 20000 | 38,324 | 38,324 | 2.10 | 10.93 | 20000 | 0/0 | all accepted | 1.00 | 1.00 | 1.00 |
| NDJSON x1000 | trivial axum server | - | 200 | 4,000 | 4,000,000 | 3.00 | 8.00 | 200000 | 0/0 | all accepted | 1.00 | 1.00 | 1.00 |
| single events | sluice | fsync=true | 20000 | 19,162 | 19,162 | 5.29 | 21.85 | 20000 | 0/0 | exact | 0.50 | 0.50 | 2.00 |
| NDJSON x1000 | sluice | fsync=true | 200 | 1,203 | 1,202,877 | 11.75 | 26.71 | 200000 | 0/0 | MISMATCH (199000 counted) | 0.30 | 0.30 | 3.34 |
"""
REDIS_LOG = """## W1a through RabbitMQ into Redis

| engine | events/s (clean) | exact after clean run | exact after kill -9 | difference after kill |
|---|---|---|---|---|
| hand-written consumer (HINCRBY + INCR + ack per message) | 2,000 | yes | no | messages:total +3 |
| sluice (amqp -> aggregate -> redis hash + totals) | 18,000 | yes | yes | 0 |

| reference on the same queue size, same run | events/s | exact | Redis sink / file sink |
|---|---|---|---|
| sluice, RabbitMQ -> file (amqp -> aggregate -> file) | 24,000 | yes | 0.75 |
"""
POSTGRES_LOG = """## RabbitMQ into PostgreSQL

| workload | engine | events/s | seconds | exact | vs file sink | vs hand-written |
|---|---|---|---|---|---|---|
| W1a RabbitMQ -> PostgreSQL upsert | sluice (amqp -> aggregate -> postgres upsert) | 20,000 | 1.000 | yes | 0.80 | 10.00 |
| W1a RabbitMQ -> PostgreSQL upsert | hand-written consumer (UPSERT count+1 + ack per message) | 2,000 | 10.000 | yes | - | - |
| RabbitMQ -> PostgreSQL append | sluice (amqp -> postgres append) | 12,500 | 1.600 | yes | 0.50 | 5.00 |
| RabbitMQ -> PostgreSQL append | hand-written consumer (INSERT + ack per message) | 2,500 | 8.000 | yes | - | - |
| W1a RabbitMQ -> file | sluice (amqp -> aggregate -> file; reference) | 25,000 | 0.800 | yes | 1.00 | - |
"""
AMQP_LOG = """| engine | messages/s | seconds | notes |
|---|---|---|---|
| hand-written consumer (ack per message, prefetch 1000) | 5,000 | 4 | no durable state, not crash-safe |
| sluice (prefetch 60000, checkpoint 1s) | 40,000 | 0.5 | exactly once |
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
        self.add("postgres", POSTGRES_LOG)
        self.add("amqp", AMQP_LOG)
        r = self.run_report("skip", "kafka", self.rows, "why=no broker", "command=bash bench/kafka.sh 5")
        self.assertEqual(r.returncode, 0, r.stderr)
        r, rows, doc = self.finish()
        self.assertEqual(r.returncode, 0, r.stderr)
        single = rows[("HTTP single events (fsync=true)", "sluice")]
        self.assertEqual((single["value"], single["unit"], single["p99_ms"]), (19162, "requests/s", 21.85))
        self.assertEqual((single["ratio"], single["ratio_to"], single["p99_vs_trivial"]),
                         (0.5, "trivial axum server, same run", 2.0))
        trivial = rows[("HTTP single events", "trivial axum server (202, nothing else)")]
        self.assertEqual((trivial["value"], trivial["status"], trivial["ratio"]), (38324, "ok", None))
        self.assertEqual(rows[("HTTP NDJSON x1000", "trivial axum server (202, nothing else)")]["value"], 4000000)
        self.assertEqual(rows[("HTTP NDJSON x1000 (fsync=true)", "sluice")]["value"], 1202877)
        self.assertEqual(rows[("HTTP NDJSON x1000 (fsync=true)", "sluice")]["ratio"], 0.3)
        sluice = rows[("W1a RabbitMQ -> Redis", "sluice")]
        self.assertEqual((sluice["value"], sluice["ratio"], sluice["status"]), (18000, 9.0, "ok"))
        self.assertEqual(sluice["ratio_vs_file"], 0.75)
        self.assertEqual(rows[("W1a RabbitMQ -> file (reference of redis.sh)", "sluice")]["value"], 24000)
        # postgres.sh: ratios to the hand-written consumer of the same mode and to the file sink.
        up = rows[("W1a RabbitMQ -> PostgreSQL upsert", "sluice")]
        self.assertEqual((up["value"], up["ratio"], up["ratio_vs_file"], up["status"]), (20000, 10.0, 0.8, "ok"))
        app = rows[("RabbitMQ -> PostgreSQL append", "sluice")]
        self.assertEqual((app["value"], app["ratio"], app["ratio_vs_file"]), (12500, 5.0, 0.5))
        self.assertEqual(rows[("RabbitMQ -> PostgreSQL append", "hand-written consumer")]["value"], 2500)
        ref = rows[("W1a RabbitMQ -> file (reference of postgres.sh)", "sluice")]
        self.assertEqual((ref["value"], ref["ratio"], ref.get("ratio_vs_file")), (25000, None, None))
        # amqp.sh's own file row is still compared with its own consumer.
        self.assertEqual(rows[("W1a RabbitMQ -> file", "sluice")]["ratio"], 8.0)
        self.assertEqual(sluice["load_start"], "1.50 1.00 1.00")
        self.assertEqual(rows[("W1a over HTTP NDJSON, 2 workers", "sluice")]["ratio"], 0.75)
        self.assertTrue(rows[("kafka", "-")]["status"].startswith("skipped: no broker"))
        # Only the part between the markers changes, and every row is there with its command.
        self.assertTrue(doc.startswith("# Benchmarks\n\nmeasured text\n\n<!-- bench/all.sh:begin -->\n"))
        self.assertTrue(doc.endswith("<!-- bench/all.sh:end -->\ntail text\n"))
        self.assertNotIn("\nold\n", doc)
        self.assertIn("smoke run", doc)
        self.assertIn("| W1a RabbitMQ -> Redis | sluice | 18,000 events/s | 9.00× hand-written consumer; "
                      "0.75× file sink | `bash bench/redis.sh` | 1.50 → 1.70 | abc1234 | ok", doc)
        self.assertIn("| W1a RabbitMQ -> PostgreSQL upsert | sluice | 20,000 events/s | 10.00× hand-written "
                      "consumer; 0.80× file sink | `bash bench/postgres.sh` |", doc)
        self.assertIn("| HTTP single events (fsync=true) | sluice | 19,162 requests/s | 0.50× trivial axum server |", doc)

    def test_failures_are_reported(self):
        self.add("http", HTTP_LOG)  # one count check failed
        self.add("redis", REDIS_LOG.replace("| yes | yes | 0 |", "| yes | NO | +5 |"), exit_=1)
        self.add("postgres", POSTGRES_LOG.replace("| 1.600 | yes |", "| 1.600 | NO: 3 rows missing |"), exit_=1)
        self.add("rescale", "rescale.sh: worker 0 of 1 exited\n", exit_=1)
        r, rows, doc = self.finish()
        self.assertEqual(r.returncode, 1)
        self.assertEqual(rows[("HTTP NDJSON x1000 (fsync=true)", "sluice")]["status"], "MISMATCH (199000 counted)")
        self.assertEqual(rows[("W1a RabbitMQ -> Redis", "sluice")]["status"], "not exact or failed")
        self.assertEqual(rows[("RabbitMQ -> PostgreSQL append", "sluice")]["status"],
                         "not exact or failed: NO: 3 rows missing")
        self.assertEqual(rows[("rescale", "-")]["status"], "failed (exit 1)")
        self.assertIn("worker 0 of 1 exited", rows[("rescale", "-")]["notes"])
        self.assertIn("NOT OK: rescale", r.stderr)


if __name__ == "__main__":
    unittest.main()

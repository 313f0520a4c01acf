#!/usr/bin/env python3
"""Held-out check of per-event lateness (issue 10): dirty W1 weather data
with late and malformed lines goes through the file source with several
read sizes and with SIGKILLs, and through the HTTP source with single-event
and NDJSON requests and with SIGKILLs between requests. Every run's window
results and late dead letters must equal a per-event reference computed
here. Not part of the CI suite (it generates the data with bench/w1/gen_weather.py);
the same checks run hermetically in tests/pipeline_late_events.rs.

usage: tests/heldout/lateness.py [N] [SLUICE_BINARY]
"""
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
GEN = os.path.join(ROOT, "bench", "w1", "gen_weather.py")
SIZE, LATENESS, DISORDER = 10_000, 1_000, 2_000

PIPELINE = """
[pipeline]
name = "heldout"
[state]
dir = "{dir}/state"
[checkpoint]
interval = "100ms"
[dead_letter]
type = "file"
path = "{dir}/dead.ndjson"
format = "changes"
[sources.w]
{source}
event_time = {{ field = "ts", format = "epoch_ms", max_disorder = "2s" }}
[transforms.per_10s]
type = "aggregate"
inputs = ["w"]
group_by = ["country"]
window = {{ type = "tumbling", size = "10s" }}
allowed_lateness = "1s"
aggregates = {{ n = "count", temp = {{ fn = "sum", field = "temp_c" }} }}
[sinks.out]
type = "file"
inputs = ["per_10s"]
path = "{dir}/out.ndjson"
format = "changes"
"""


def dirty(lines, rng):
    """Shifts 3% of the events 2-6 s back (around the boundary), adds a
    malformed line every ~200 events and an event without a country every
    ~300 (dead letters that must not disturb anything else)."""
    out = []
    for line in lines:
        e = json.loads(line)
        if rng.random() < 0.03:
            e["ts"] -= rng.randint(2000, 6000)
        if rng.random() < 0.005:
            out.append('{"id": "broken')
        if rng.random() < 0.003:
            del e["country"]
        out.append(json.dumps(e, separators=(",", ":")))
    return out


def reference(lines):
    windows, late, top = {}, set(), None
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        t = e["ts"]
        start = t - t % SIZE
        if top is not None and start + SIZE + LATENESS <= top - DISORDER:
            late.add(e["id"])
        elif "country" in e and e["country"] != "ZZ":
            w = windows.setdefault((start, e["country"]), [0, 0.0])
            w[0] += 1
            w[1] += e["temp_c"]
        top = t if top is None else max(top, t)
    return {k: (n, round(s, 6)) for k, (n, s) in windows.items()}, late


def materialize(path):
    table = {}
    if not os.path.exists(path):
        return table
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            c = json.loads(line)
            if c["op"] == "delete":
                table.pop(c["id"], None)
            else:
                table[c["id"]] = c["record"]
    return table


def results(d):
    windows = {}
    for r in materialize(f"{d}/out.ndjson").values():
        if r["country"] != "ZZ":
            windows[(r["window_start"], r["country"])] = (r["n"], round(r["temp"], 6))
    late = {json.loads(x["raw"])["id"] for x in materialize(f"{d}/dead.ndjson").values()
            if x["error_type"] == "late"}
    return windows, late


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(binary, d, port=None):
    log = open(f"{d}/sluice.log", "a")
    p = subprocess.Popen([binary, "run", f"{d}/pipeline.toml"], stdout=subprocess.DEVNULL, stderr=log)
    if port:
        for _ in range(400):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return p
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"sluice did not listen; see {d}/sluice.log")
    return p


def file_run(binary, path, read_bytes, kills, rng):
    d = tempfile.mkdtemp()
    pace = 40_000 if kills else 0
    src = f'type = "file"\npath = "{path}"\nread_bytes = {read_bytes}\nmax_events_per_second = {pace}'
    open(f"{d}/pipeline.toml", "w").write(PIPELINE.format(dir=d, source=src))
    hit = 0
    for _ in range(kills):
        p = subprocess.Popen([binary, "run", "--once", f"{d}/pipeline.toml"],
                             stdout=subprocess.DEVNULL, stderr=open(f"{d}/sluice.log", "a"))
        time.sleep(rng.uniform(0.05, 0.8))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            hit += 1
        p.wait()
    subprocess.run([binary, "run", "--once", f"{d}/pipeline.toml"], check=True,
                   stdout=subprocess.DEVNULL, stderr=open(f"{d}/sluice.log", "a"))
    return results(d), hit


def post(port, body, ctype):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", "/ingest", body=body.encode(), headers={"Content-Type": ctype})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def http_run(binary, lines, per_request, kill_after, expected_windows):
    d = tempfile.mkdtemp()
    port = free_port()
    src = f'type = "http"\naddress = "127.0.0.1:{port}"'
    open(f"{d}/pipeline.toml", "w").write(PIPELINE.format(dir=d, source=src))
    p = start(binary, d, port)
    chunk, k = [], 0
    def flush():
        nonlocal chunk, k, p
        if not chunk:
            return
        status = post(port, chunk[0] if per_request == 1 else "\n".join(chunk),
                      "application/json" if per_request == 1 else "application/x-ndjson")
        assert status == 202, status
        chunk = []
        if k in kill_after:
            p.send_signal(signal.SIGKILL)
            p.wait()
            p = start(binary, d, port)
        k += 1
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            flush()
            assert post(port, line, "application/json") == 400
            continue
        chunk.append(line)
        if len(chunk) >= per_request:
            flush()
    flush()
    deadline = time.time() + 300
    while len(results(d)[0]) < expected_windows:
        assert time.time() < deadline, f"windows missing; see {d}/sluice.log"
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    p.wait()
    return results(d)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    binary = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "target", "release", "sluice")
    rng = random.Random(11)
    work = tempfile.mkdtemp()
    subprocess.run([sys.executable, GEN, str(n), "7", f"{work}/w.ndjson"], check=True)
    lines = dirty(open(f"{work}/w.ndjson").read().splitlines(), rng)
    lines.append(json.dumps({"id": n, "ts": 1732147200000 + n + 3_600_000, "country": "ZZ",
                             "weather": "Sunny", "temp_c": 0}, separators=(",", ":")))
    path = f"{work}/dirty.ndjson"
    open(path, "w").write("\n".join(lines) + "\n")
    want, want_late = reference(lines)
    malformed = sum(1 for line in lines if line.startswith('{"id": "broken'))
    print(f"{n} events: {len(want)} windows, {len(want_late)} late, {malformed} malformed")
    failed = 0
    def check(name, got):
        nonlocal failed
        windows, late = got
        ok = windows == want and late == want_late
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name}: {len(windows)} windows, {len(late)} late"
              + ("" if ok else f" (window diffs {len(set(windows.items()) ^ set(want.items()))}, "
                                f"late diffs {len(late ^ want_late)})"))
    for rb in (512, 65536, 4 << 20):
        got, _ = file_run(binary, path, rb, 0, rng)
        check(f"file read_bytes={rb}", got)
    got, hit = file_run(binary, path, 4096, 5, rng)
    check(f"file read_bytes=4096 with {hit} SIGKILLs", got)
    single = lines[: min(len(lines), 20_000)] + lines[-1:]
    sw, sl = reference(single)
    want_saved = (want, want_late)
    want, want_late = sw, sl
    check("http single-event requests (first 20000 lines)", http_run(binary, single, 1, set(), len(sw)))
    want, want_late = want_saved
    check("http NDJSON 500 per request", http_run(binary, lines, 500, set(), len(want)))
    kills = set(rng.sample(range(len(lines) // 500), 3))
    check(f"http NDJSON 500 per request, SIGKILL after requests {sorted(kills)}",
          http_run(binary, lines, 500, kills, len(want)))
    print(f"{7 - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Run one command and measure it.

usage: measure.py [--watch PATH] [--timeout SECONDS] [--stderr FILE] [--tag K=V]...
                  -- CMD [ARG...]

Starts CMD (stdout discarded, stderr to --stderr or inherited), and meanwhile
polls PATH every 5 ms from process start until it is non-empty: that instant is
the time to first output. PATH is deleted before CMD starts, so a stale file
cannot count. Then waits for CMD and prints one JSON object on stdout:

  {"rc": 0, "wall_s": 1.234, "max_rss_kib": 40960, "first_output_ms": 87.1,
   "timed_out": false, "rss_source": "gnu-time"}

wall_s is measured from just before the process is spawned to its exit.
max_rss_kib is CMD's peak resident set size. It is taken from GNU time
(/usr/bin/time -f %M), which CMD runs under when it is installed: a process
forked from this Python interpreter inherits the interpreter's ~15 MiB as its
starting high-water mark, so wait4(2)'s ru_maxrss (= getrusage(RUSAGE_CHILDREN)
for a single child) would overstate small processes. Without GNU time, that
wait4 figure is reported and "rss_source" says so. first_output_ms is null if PATH was never non-empty
by the time CMD exited (or no --watch was given); if CMD wrote PATH and
exited between two polls, first_output_ms is the exit time. rc is the child's exit code, or
-SIGNAL if it was killed. On timeout the child's process group is killed.
Each --tag K=V adds a string field K to the JSON object (to label results).

Exit status: 0 if CMD exited 0, 1 if it failed or timed out (the JSON object
is printed either way), 2 if CMD could not be started at all.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

POLL_S = 0.005
GNU_TIME = "/usr/bin/time"


def nonempty(path):
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def from_gnu_time(rc, rss_file, wait4_rss):
    """CMD's exit code and peak RSS from GNU time's -o file. GNU time exits
    with CMD's code, or 128+N if CMD died of signal N (reported as -N here)."""
    try:
        with open(rss_file) as f:
            lines = f.read().splitlines()
    finally:
        os.unlink(rss_file)
    for line in lines:
        if line.startswith("Command terminated by signal "):
            rc = -int(line.rsplit(" ", 1)[1])
    if lines and lines[-1].strip().isdigit():
        return rc, int(lines[-1]), "gnu-time"
    return rc, wait4_rss, "wait4"  # GNU time itself was killed (timeout)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--watch", help="file whose first non-empty moment is recorded")
    p.add_argument("--timeout", type=float, default=0, help="kill CMD after this many seconds (0: never)")
    p.add_argument("--stderr", help="write CMD's stderr to this file")
    p.add_argument("--tag", action="append", default=[], metavar="K=V", help="extra field for the JSON")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("no command given")
    tags = {}
    for t in a.tag:
        k, sep, v = t.partition("=")
        if not sep or not k:
            p.error(f"--tag wants K=V, got {t!r}")
        tags[k] = v

    if a.watch:
        try:
            os.unlink(a.watch)
        except FileNotFoundError:
            pass
    err = open(a.stderr, "wb") if a.stderr else None
    rss_file = None
    if os.access(GNU_TIME, os.X_OK):
        fd, rss_file = tempfile.mkstemp(prefix="measure-rss.")
        os.close(fd)
        cmd = [GNU_TIME, "-f", "%M", "-o", rss_file] + cmd
    first_output_ms = None
    timed_out = False
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    except OSError as e:
        print(f"measure: cannot start {cmd[0]}: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    first = []

    def watch():
        # Record the first moment the watched file is non-empty, every 5 ms.
        while not stop.is_set():
            if nonempty(a.watch):
                first.append(time.perf_counter())
                return
            stop.wait(POLL_S)

    watcher = threading.Thread(target=watch, daemon=True) if a.watch else None
    if watcher:
        watcher.start()
    killer = None
    lock = threading.Lock()
    exited = False
    if a.timeout > 0:
        def kill():
            nonlocal timed_out
            with lock:
                if not exited:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
        killer = threading.Timer(a.timeout, kill)
        killer.start()
    # Wait for exit without reaping, so the pid (and process group id) cannot be
    # reused before the timer is disarmed; then reap with wait4 (not
    # Popen.wait) to get the child's own resource usage.
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    now = time.perf_counter()
    with lock:
        exited = True
    if killer:
        killer.cancel()
    _, status, usage = os.wait4(proc.pid, 0)
    stop.set()
    if watcher:
        watcher.join()
        if first:
            first_output_ms = (first[0] - start) * 1000.0
        elif nonempty(a.watch):
            # Written and exited between two polls: output was there by exit.
            first_output_ms = (now - start) * 1000.0
    wall_s = now - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
    if err:
        err.close()
    rc, max_rss_kib, rss_source = proc.returncode, usage.ru_maxrss, "wait4"
    if rss_file:
        rc, max_rss_kib, rss_source = from_gnu_time(rc, rss_file, max_rss_kib)
    print(json.dumps({
        **tags,
        "rc": rc,
        "wall_s": round(wall_s, 4),
        "max_rss_kib": max_rss_kib,
        "first_output_ms": None if first_output_ms is None else round(first_output_ms, 1),
        "timed_out": timed_out,
        "rss_source": rss_source,
    }))
    return 0 if rc == 0 and not timed_out else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Writes the golden pipelines' input.ndjson and expected*.ndjson.

The expected results are computed here with plain Python (dicts, sorted
lists), independently of sluice: this file is the oracle. Run it after
changing a case; the outputs are committed.

usage: tests/pipelines/generate.py
"""
import json
import os
import random
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
BASE_TS = 1732147200000  # 2024-11-21T00:00:00Z
COUNTRIES = ["GT", "MX", "US", "BR", "FR", "DE", "JP", "IN", "NG", "AU"]
WEATHER = ["Sunny", "Cloudy", "Rainy", "Windy", "Foggy"]


def dump(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def write(case, name, lines):
    os.makedirs(os.path.join(HERE, case), exist_ok=True)
    with open(os.path.join(HERE, case, name), "w") as f:
        for line in lines:
            f.write(line + "\n")


def offsets(lines):
    """Byte offset of each line in the file."""
    out, pos = [], 0
    for line in lines:
        out.append(pos)
        pos += len(line.encode()) + 1
    return out


def weather_events(rng, n, disorder_ms=1500):
    events = []
    for i in range(n):
        delay = rng.randint(0, disorder_ms) if rng.random() < 0.05 else rng.randint(0, 20)
        events.append({
            "id": i,
            "ts": BASE_TS + i * 50 - delay,
            "country": rng.choice(COUNTRIES[: rng.randint(3, len(COUNTRIES))]),
            "weather": rng.choice(WEATHER),
            "temp_c": rng.randint(-10, 40),
        })
    return events


def country_counts():
    """All-time aggregates per country, with every kind of bad input."""
    rng = random.Random(1)
    events = weather_events(rng, 3000)
    lines = [dump(e) for e in events]
    bad = {
        100: '{"country":"GT","temp_c":',            # truncated JSON
        400: '[1,2,3]',                               # not an object
        700: dump({"weather": "Sunny", "temp_c": 3}),  # missing key field
        900: dump({"country": "MX", "temp_c": "hot"}),  # wrong type for sum
        1200: dump({"country": "US", "temp_c": 1, "pad": "x" * 600}),  # oversized (> 512 bytes)
    }
    kinds = {100: "malformed_json", 400: "malformed_json", 700: "missing_field", 900: "wrong_type", 1200: "oversized"}
    for i, line in bad.items():
        lines[i] = line
    good = [e for i, e in enumerate(events) if i not in bad]
    acc = defaultdict(lambda: {"n": 0, "total": 0, "lo": None, "hi": None})
    for e in good:
        a = acc[e["country"]]
        a["n"] += 1
        a["total"] += e["temp_c"]
        a["lo"] = e["temp_c"] if a["lo"] is None else min(a["lo"], e["temp_c"])
        a["hi"] = e["temp_c"] if a["hi"] is None else max(a["hi"], e["temp_c"])
    expected = [dump({"country": c, "n": a["n"], "total_temp": a["total"], "min_temp": a["lo"], "max_temp": a["hi"]})
                for c, a in sorted(acc.items())]
    offs = offsets(lines)
    dead = [dump({"error_type": kinds[i], "offset": offs[i]}) for i in sorted(bad)]
    write("country_counts", "input.ndjson", lines)
    write("country_counts", "expected.ndjson", expected)
    write("country_counts", "expected_dead_letters.ndjson", dead)


def weather_windows():
    """1-minute tumbling windows per (country, weather) with a bounded
    disorder of 2 s; a few events far behind the watermark are late."""
    rng = random.Random(2)
    events = weather_events(rng, 6000)
    late_at = [2500, 4000, 5500]
    for i in late_at:
        # 3 minutes behind its neighbours: its window closed long ago
        events[i]["ts"] = events[i - 1]["ts"] - 180_000
    lines = [dump(e) for e in events]
    counts = defaultdict(int)
    temps = defaultdict(int)
    for i, e in enumerate(events):
        if i in late_at:
            continue
        w = e["ts"] // 60000 * 60000
        counts[(w, e["country"], e["weather"])] += 1
        temps[(w, e["country"], e["weather"])] += e["temp_c"]
    expected = [dump({"country": c, "weather": wt, "window_start": w, "window_end": w + 60000,
                      "count": n, "sum_temp": temps[(w, c, wt)]})
                for (w, c, wt), n in sorted(counts.items())]
    offs = offsets(lines)
    write("weather_windows", "input.ndjson", lines)
    write("weather_windows", "expected.ndjson", expected)
    write("weather_windows", "expected_dead_letters.ndjson",
          [dump({"error_type": "late", "offset": offs[i]}) for i in late_at])


def hopping_stats():
    """2-minute windows every minute: avg, min, max, distinct weather."""
    rng = random.Random(3)
    events = weather_events(rng, 4000)
    lines = [dump(e) for e in events]
    groups = defaultdict(list)
    for e in events:
        last = e["ts"] // 60000 * 60000
        for start in (last - 60000, last):
            if start <= e["ts"] < start + 120000:
                groups[(start, e["country"])].append(e)
    expected = []
    for (start, c), es in sorted(groups.items()):
        temps = [e["temp_c"] for e in es]
        expected.append(dump({
            "country": c, "from": start, "to": start + 120000,
            "avg_temp": sum(temps) / len(temps), "min_temp": min(temps), "max_temp": max(temps),
            "kinds_of_weather": len({e["weather"] for e in es}),
        }))
    write("hopping_stats", "input.ndjson", lines)
    write("hopping_stats", "expected.ndjson", expected)


def iso(ms):
    import datetime
    dt = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def sessions():
    """Per-user sessions closing after 30 s of inactivity; times are RFC 3339."""
    rng = random.Random(4)
    users = [f"u{i}" for i in range(25)]
    pages = ["home", "search", "product", "cart", "checkout"]
    t = BASE_TS
    events = []
    for i in range(3000):
        t += rng.randint(0, 400)
        u = rng.choice(users)
        events.append({"user": u, "page": rng.choice(pages), "at": t, "seq": i})
    # users go quiet now and then: drop some of their events to open gaps
    events = [e for e in events if not (hash_user(e["user"]) + e["at"] // 40000) % 4 == 0]
    lines = [dump({"user": e["user"], "page": e["page"], "time": iso(e["at"]), "seq": e["seq"]}) for e in events]
    gap = 30000
    by_user = defaultdict(list)
    for e in events:
        by_user[e["user"]].append(e)
    expected = []
    for u, es in sorted(by_user.items()):
        es.sort(key=lambda e: (e["at"], e["seq"]))
        cur = None
        for e in es:
            if cur and e["at"] < cur["end"]:
                cur["end"] = max(cur["end"], e["at"] + gap)
                cur["events"].append(e)
            else:
                if cur:
                    expected.append(cur)
                cur = {"user": u, "start": e["at"], "end": e["at"] + gap, "events": [e]}
        if cur:
            expected.append(cur)
    out = []
    for s in expected:
        es = s["events"]
        first = min(es, key=lambda e: (e["at"], e["seq"]))
        last = max(es, key=lambda e: (e["at"], e["seq"]))
        out.append(dump({"user": s["user"], "window_start": s["start"], "window_end": s["end"],
                         "views": len(es), "entry_page": first["page"], "exit_page": last["page"]}))
    write("sessions", "input.ndjson", lines)
    write("sessions", "expected.ndjson", out)


def hash_user(u):
    return sum(ord(c) for c in u)


def filter_map_events():
    """Stateless: filter hot, clear-sky reports and reshape them."""
    rng = random.Random(5)
    events = weather_events(rng, 2000)
    for e in events:
        e["meta"] = {"station": f"st-{rng.randint(1, 9)}", "temp_text": str(e["temp_c"])}
    events[300]["meta"]["temp_text"] = "n/a"  # cannot be cast: dead letter (if it passes the filter)
    events[300]["temp_c"] = 35
    events[300]["weather"] = "Sunny"
    lines = [dump(e) for e in events]
    expected = []
    dead = []
    offs = offsets(lines)
    for i, e in enumerate(events):
        if not (e["temp_c"] > 25 and e["weather"] in ("Sunny", "Windy")):
            continue
        if e["meta"]["temp_text"] == "n/a":
            dead.append(dump({"error_type": "wrong_type", "offset": offs[i]}))
            continue
        expected.append(dump({"id": e["id"], "country": e["country"], "station": e["meta"]["station"],
                              "temp": float(e["meta"]["temp_text"]), "feed": "golden"}))
    write("filter_map_events", "input.ndjson", lines)
    write("filter_map_events", "expected.ndjson", expected)
    write("filter_map_events", "expected_dead_letters.ndjson", dead)


def keyed_distinct():
    """key_by, then all-time count and count_distinct per weather."""
    rng = random.Random(6)
    events = weather_events(rng, 2500)
    lines = [dump(e) for e in events]
    acc = defaultdict(lambda: [0, set()])
    for e in events:
        acc[e["weather"]][0] += 1
        acc[e["weather"]][1].add(e["country"])
    expected = [dump({"weather": w, "reports": n, "countries": len(cs)}) for w, (n, cs) in sorted(acc.items())]
    write("keyed_distinct", "input.ndjson", lines)
    write("keyed_distinct", "expected.ndjson", expected)


def late_events(rng, n, step_ms=40):
    """Events whose delays straddle the lateness boundary: most are nearly
    in order, many are 0-4 s behind (around a 1 s disorder bound plus 1 s of
    allowed lateness), some far behind."""
    events = []
    for i in range(n):
        r = rng.random()
        if r < 0.6:
            delay = rng.randint(0, 100)
        elif r < 0.97:
            delay = rng.randint(0, 4000)
        else:
            delay = rng.randint(10_000, 30_000)
        events.append({"id": i, "ts": BASE_TS + i * step_ms - delay,
                       "country": rng.choice(COUNTRIES[:4]), "temp_c": rng.randint(-10, 40)})
    return events


def per_event_windows(events, size, slide, lateness, disorder):
    """The reference of per-event lateness: an event is judged by the
    watermark in force when it arrives (the largest earlier event time minus
    the disorder bound) and is late when every window it falls in has
    end + lateness <= watermark. Returns (window -> events, late indices)."""
    windows, late = defaultdict(list), []
    top = None
    for i, e in enumerate(events):
        wm = None if top is None else top - disorder
        t = e["ts"]
        starts = [s for s in range(t - t % slide - size + slide, t + 1, slide) if s <= t < s + size]
        kept = [s for s in starts if wm is None or s + size + lateness > wm]
        if not kept:
            late.append(i)
        for s in kept:
            windows[(s, e["country"])].append(e)
        top = t if top is None else max(top, t)
    return windows, late


def late_boundaries():
    """5 s tumbling windows, 1 s disorder, 1 s allowed lateness, with many
    events right at the lateness boundary: the results and the late dead
    letters follow the per-event rule, whatever the batch sizes (the
    pipeline reads ${READ_BYTES}) and however the crash test cuts the run."""
    rng = random.Random(7)
    events = late_events(rng, 4000)
    lines = [dump(e) for e in events]
    windows, late = per_event_windows(events, 5000, 5000, 1000, 1000)
    expected = [dump({"country": c, "window_start": s, "window_end": s + 5000,
                      "n": len(es), "sum_temp": sum(e["temp_c"] for e in es)})
                for (s, c), es in sorted(windows.items())]
    offs = offsets(lines)
    write("late_boundaries", "input.ndjson", lines)
    write("late_boundaries", "expected.ndjson", expected)
    write("late_boundaries", "expected_dead_letters.ndjson",
          [dump({"error_type": "late", "offset": offs[i]}) for i in late])


def aggregate_of_aggregate():
    """An aggregate reading an aggregate's changelog (through a filter):
    reports per country (updated at every checkpoint), then over the
    countries with at least 600 reports: how many, their total, the largest
    and smallest count. Each upstream update replaces the country's earlier
    row instead of adding to it."""
    rng = random.Random(8)
    events = weather_events(rng, 5000)
    lines = [dump(e) for e in events]
    per_country = defaultdict(int)
    for e in events:
        per_country[e["country"]] += 1
    big = [n for n in per_country.values() if n >= 600]
    expected = [dump({"countries": len(big), "reports": sum(big),
                      "largest": max(big), "smallest": min(big)})]
    write("aggregate_of_aggregate", "input.ndjson", lines)
    write("aggregate_of_aggregate", "expected.ndjson", expected)


def windows_of_windows():
    """Per-minute counts per country (emitted as updates), then per 5
    minutes: the sum and the peak of those minutes and how many minutes had
    reports. Late events follow the per-event rule at the first aggregate."""
    rng = random.Random(9)
    events = late_events(rng, 6000, step_ms=200)
    lines = [dump(e) for e in events]
    minutes, late = per_event_windows(events, 60_000, 60_000, 0, 2000)
    five = defaultdict(list)
    for (s, c), es in minutes.items():
        five[(s - s % 300_000, c)].append(len(es))
    expected = [dump({"country": c, "window_start": s, "window_end": s + 300_000,
                      "reports": sum(ns), "peak": max(ns), "minutes": len(ns)})
                for (s, c), ns in sorted(five.items())]
    offs = offsets(lines)
    write("windows_of_windows", "input.ndjson", lines)
    write("windows_of_windows", "expected.ndjson", expected)
    write("windows_of_windows", "expected_dead_letters.ndjson",
          [dump({"error_type": "late", "offset": offs[i]}) for i in late])
def dedupe_orders():
    """dedupe by order id within 1m of event time, then all-time count and
    sum per country. Publishers re-send some orders unchanged a little later
    in the log (dropped); a few ids are reused long after their first
    period ended (counted again); some orders lack an id (dead letters)."""
    rng = random.Random(7)
    within_ms = 60_000
    originals = []
    for i in range(3000):
        originals.append({
            "order_id": f"o{i}",
            "ts": BASE_TS + i * 50,
            "country": rng.choice(COUNTRIES),
            "amount": rng.randint(1, 500),
        })
    # Re-sends: identical lines 1-150 events later (at most 7.5 s of event
    # time, far inside `within` whatever the batch boundaries).
    inserts = defaultdict(list)
    for i, e in enumerate(originals):
        if rng.random() < 0.08:
            for _ in range(rng.randint(1, 3)):
                inserts[min(i + rng.randint(1, 150), len(originals) - 1)].append(e)
    # Reused ids: a new order with an id first seen more than `within` ago.
    for i in range(1800, 3000, 60):
        old = originals[i - rng.randint(1300, 1700)]
        originals[i]["order_id"] = old["order_id"]
    lines, events = [], []
    for i, e in enumerate(originals):
        lines.append(dump(e))
        events.append(e)
        for r in inserts[i]:
            lines.append(dump(r))
            events.append(r)
    # Orders without an id.
    dead = []
    missing = set(rng.sample(range(len(lines)), 12))
    for i in sorted(missing):
        e = dict(events[i])
        del e["order_id"]
        lines[i] = dump(e)
        events[i] = e
    offs = offsets(lines)
    for i in sorted(missing):
        dead.append(dump({"error_type": "missing_field", "offset": offs[i]}))
    # The oracle: an event passes unless its id was first seen less than
    # `within` before it (and that sighting passed).
    first_seen = {}
    acc = defaultdict(lambda: [0, 0])
    for e in events:
        oid = e.get("order_id")
        if oid is None:
            continue
        if oid in first_seen and e["ts"] < first_seen[oid] + within_ms:
            continue
        first_seen[oid] = e["ts"]
        acc[e["country"]][0] += 1
        acc[e["country"]][1] += e["amount"]
    expected = [dump({"country": c, "orders": n, "total": t}) for c, (n, t) in sorted(acc.items())]
    write("dedupe_orders", "input.ndjson", lines)
    write("dedupe_orders", "expected.ndjson", expected)
    write("dedupe_orders", "expected_dead_letters.ndjson", sorted(dead))


if __name__ == "__main__":
    country_counts()
    weather_windows()
    hopping_stats()
    sessions()
    filter_map_events()
    keyed_distinct()
    late_boundaries()
    aggregate_of_aggregate()
    windows_of_windows()
    dedupe_orders()

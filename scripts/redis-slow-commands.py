#!/usr/bin/env python3
"""Why was a Redis command slow? Reads `perf script` output of a system-wide
recording that has uprobes on Redis's `call()` (entry and return), cpu-clock
samples and sched_switch, and prints the longest commands of Redis's main
thread with what every CPU ran meanwhile. The method and a worked example are
in docs/BENCHMARKS.md ("What stalls the 1M clear").

    perf probe -x "$(command -v redis-server)" --add call --add 'call%return'
    perf record -a -g -e cpu-clock -F 1000 -e sched:sched_switch \\
        -e probe_redis:call -e probe_redis:call__return -o redis.perf -- sleep 20
    perf script -i redis.perf -F comm,tid,cpu,time,event,ip,sym,trace > redis.txt
    scripts/redis-slow-commands.py redis.txt "$(pgrep -nx redis-server)" [how_many]

The second argument is the traced server's main thread id, its process id
(`redis-cli INFO server` says `process_id` when several servers run).
"""

import collections
import re
import sys

HEADER = re.compile(r"\s*(\S.*?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")


def read_events(path):
    """perf script records: a header line, then one stack frame per line."""
    events, current = [], None
    with open(path, encoding="utf-8", errors="replace") as text:
        for line in text:
            header = None if line.startswith("\t") else HEADER.match(line)
            if header:
                current = {
                    "comm": header[1], "tid": header[2], "cpu": int(header[3]),
                    "time": float(header[4]), "event": header[5], "trace": header[6],
                    "stack": [],
                }
                events.append(current)
            elif line.strip() and current is not None:
                parts = line.split()
                frame = parts[1] if len(parts) > 1 else parts[0]
                if frame != "[unknown]":
                    current["stack"].append(frame)
    events.sort(key=lambda event: event["time"])
    return events


def command_spans(events, main):
    """(seconds, start, end) of every innermost call() on the main thread,
    longest first. call() nests (a script's redis.call, EXEC's commands), so
    a script or transaction shows as its inner commands, not as one span.
    Pairing by nesting would need every return: in one 20 s trace 6% of
    the returns were missing, and a stack then merged unrelated commands."""
    spans, started = [], None
    for event in events:
        if event["tid"] != main:
            continue
        if event["event"] == "probe_redis:call":
            started = event["time"]
        elif event["event"].startswith("probe_redis:call__return") and started is not None:
            spans.append((event["time"] - started, started, event["time"]))
            started = None
    return sorted(spans, reverse=True)


def main():
    path, redis_main = sys.argv[1], sys.argv[2]
    how_many = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    events = read_events(path)
    spans = command_spans(events, redis_main)
    print(f"{len(spans)} commands; longest (ms): {[round(s[0] * 1e3, 2) for s in spans[:10]]}")
    for seconds, start, end in spans[:how_many]:
        inside = [event for event in events if start <= event["time"] <= end]
        on_cpu = collections.Counter(
            (event["cpu"], event["comm"]) for event in inside if event["event"].startswith("cpu-clock")
        )
        main_frames = collections.Counter(
            " < ".join(event["stack"][:4]) or "?"
            for event in inside
            if event["event"].startswith("cpu-clock") and event["tid"] == redis_main
        )
        sleeps = collections.Counter(
            " < ".join(event["stack"][2:12])
            for event in inside
            if "sched_switch" in event["event"] and event["tid"] == redis_main
        )
        print(f"\n== {seconds * 1e3:.2f} ms, {start:.4f} to {end:.4f}")
        print("  samples by (cpu, thread):", sorted(on_cpu.items()))
        print("  main thread's frames:", main_frames.most_common(5))
        for stack, count in sleeps.most_common(3):
            print(f"  main thread switched out {count}x via {stack}")


if __name__ == "__main__":
    main()

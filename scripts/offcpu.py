#!/usr/bin/env python3
"""Where a thread waits: its time off the CPU, by the stack it left the CPU from.

    perf record -e sched:sched_switch -a --call-graph dwarf,8192 -o sw.data -- sleep 1
    perf script -i sw.data > sw.txt
    scripts/offcpu.py sw.txt keel-decide

Each switch-out of the thread named THREAD (its `comm`) is paired with its next switch-in;
the time between is charged to the switch-out's state (S sleeping, D waiting for the disk,
R preempted while runnable) and to its stack (kernel frames of the wait itself left out).
Prints the total and the 25 largest (state, stack) pairs in milliseconds. BENCHMARKS.md
("a faster machine") reads the deciding thread of `keel run` under ingest load this way.
"""

import collections
import re
import sys

HEADER = re.compile(
    r"\s(\d+\.\d+):\s+sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) .*?"
    r"prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)"
)
# Frames of the wait itself, the same for every sleep: left out of the stack's name.
WAIT_FRAMES = ("futex_", "do_futex", "schedule", "syscall", "entry_SYSCALL", "__x64", "x64_sys")


def events(text):
    """(time, prev tid, prev state, prev comm, next tid, frames) of each switch."""
    for block in text.split("\n\n"):
        lines = block.strip().split("\n")
        m = HEADER.search(lines[0]) if lines and lines[0].strip() else None
        if not m:
            continue
        frames = []
        for line in lines[1:]:
            parts = line.strip().split(None, 1)
            if len(parts) == 2 and not parts[1].startswith("["):
                frames.append(parts[1].split("+")[0])
        yield (float(m.group(1)), int(m.group(3)), m.group(4), m.group(2), int(m.group(6)), frames)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path, thread = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8", errors="replace") as f:
        evs = list(events(f.read()))
    tids = {e[1] for e in evs if e[3] == thread}
    if not tids:
        sys.exit(f"no switch of a thread named {thread!r} in {path}")
    left = {}
    by, count, total = collections.Counter(), collections.Counter(), 0.0
    for t, prev, state, _, nxt, frames in evs:
        if prev in tids:
            left[prev] = (t, state, frames)
        if nxt in tids and nxt in left:
            since, st, fr = left.pop(nxt)
            stack = [f for f in fr if not any(w in f for w in WAIT_FRAMES)]
            key = f"{st} | " + " < ".join(stack[:6])
            by[key] += t - since
            count[key] += 1
            total += t - since
    print(f"{thread}: {total * 1000:.1f} ms off the CPU")
    for key, secs in by.most_common(25):
        print(f"{secs * 1000:8.1f} ms {count[key]:6} x  {key}")


if __name__ == "__main__":
    main()

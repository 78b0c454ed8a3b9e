#!/usr/bin/env python3
"""Medians of several `cargo bench` runs of benches/codec.rs, and ours/amq-protocol ratios.

Usage: python3 summarize.py run-1.txt run-2.txt run-3.txt

Each file is the standard output of one `cargo bench`. For every benchmark, the point estimate
of each run (the middle figure of criterion's `thrpt: [low estimate high]`) is taken, and the
median of those is printed in million frames per second. The ratio is the median of the
per-run ratios ours / amq-protocol (each run times both back to back, so a load that varies
between runs cancels out of its ratio).
"""

import re
import statistics
import sys

UNIT = {"elem/s": 1e-6, "Kelem/s": 1e-3, "Melem/s": 1.0, "Gelem/s": 1e3}
NAME = re.compile(r"^((?:decode|encode)/[\w-]+/\w+)")
THRPT = re.compile(r"^\s+thrpt:\s+\[\S+ \S+ (\S+) (\S+) ")


def runs(path):
    """Throughput point estimates (Mframes/s) by benchmark id, from one run's output."""
    found, name = {}, None
    with open(path) as lines:
        for line in lines:
            match = NAME.match(line)
            if match:
                name = match.group(1)
            match = THRPT.match(line)
            if match and name and name not in found:
                found[name] = float(match.group(1)) * UNIT[match.group(2)]
    return found


def main(paths):
    per_run = [runs(path) for path in paths]
    names = sorted({name for run in per_run for name in run})
    median = {name: statistics.median(run[name] for run in per_run if name in run) for name in names}
    print(f"median of {len(paths)} runs, Mframes/s")
    print(f"{'group':<7} {'workload':<9} {'ours':>8} {'amq-protocol':>13} {'ours/theirs':>12}")
    def ratio(group, workload):
        pair = (f"{group}/ours/{workload}", f"{group}/amq-protocol/{workload}")
        return statistics.median(run[pair[0]] / run[pair[1]] for run in per_run if all(p in run for p in pair))

    for group in ("decode", "encode"):
        for workload in ("publish", "deliver", "ack", "start_ok", "mix"):
            ours = median.get(f"{group}/ours/{workload}")
            theirs = median.get(f"{group}/amq-protocol/{workload}")
            if ours is None or theirs is None:
                continue
            print(f"{group:<7} {workload:<9} {ours:>8.2f} {theirs:>13.2f} {ratio(group, workload):>11.2f}x")
    refill = [name for name in names if "/refill_only/" in name]
    for name in refill:
        print(f"{name:<30} {median[name]:>8.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])

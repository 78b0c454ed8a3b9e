#!/usr/bin/env python3
"""CPU time per frame of `examples/profile` binaries, taking turns: for A/B comparisons of
two builds of the codec on a busy machine.

Usage: python3 cpu_per_frame.py decode|encode ours|amq-protocol WORKLOAD ITERATIONS ROUNDS BIN...

Each BIN is a copy of target/release/examples/profile built from one version of the code.
The binaries run one after the other, ROUNDS times (the order reversed every other round);
each run's user and system CPU time (getrusage of the child, so time the process waited for a
core does not count) less that of a one-iteration run (building and checking the workloads)
is divided by the frames it decoded or encoded. Prints the median and the minimum.
"""

import resource
import statistics
import subprocess
import sys

FRAMES_PER_MESSAGE = {"publish": 3, "deliver": 3, "ack": 1, "start_ok": 1, "mix": 8}
REPEAT = 64  # src/lib.rs


def cpu_seconds(binary, operation, codec, workload, iterations):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [binary, operation, codec, workload, str(iterations)],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(args):
    operation, codec, workload = args[0], args[1], args[2]
    iterations, rounds = int(args[3]), int(args[4])
    binaries = args[5:]
    frames = FRAMES_PER_MESSAGE[workload] * REPEAT * iterations
    setup = {b: min(cpu_seconds(b, operation, codec, workload, 1) for _ in range(3)) for b in binaries}
    per_frame = {b: [] for b in binaries}
    for round_ in range(rounds):
        order = binaries if round_ % 2 == 0 else binaries[::-1]
        for b in order:
            seconds = cpu_seconds(b, operation, codec, workload, iterations) - setup[b]
            per_frame[b].append(seconds / frames * 1e9)
    for b in binaries:
        print(
            f"{b:<40} {codec:<12} {workload:<9} median {statistics.median(per_frame[b]):8.2f} ns/frame"
            f"  min {min(per_frame[b]):8.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

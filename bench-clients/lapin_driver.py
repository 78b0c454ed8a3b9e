#!/usr/bin/env python3
"""bench-lapin-load against mini-broker (fresh per run) and RabbitMQ (127.0.0.1:5672), alternating.

    lapin_driver.py [--mini [NAME=]PATH ...] [--reps N] [--modes autoack,ack] \\
        --variant NAME BENCH_BINARY "EXTRA FLAGS" [--variant ...] > runs.jsonl

--mini may be given more than once (NAME=PATH: a before/after of the broker in one time
window); each mini-broker then runs once per variant, mode and rep next to RabbitMQ's run, and
its lines say broker "mini-NAME".

Each --variant is one bench-lapin-load binary with its extra flags (the same binary and flags
against both brokers). Per mode and rep, every variant runs against both brokers, the broker
order flipping every rep, so variants measured in one call share the time window. One JSON line
per run: the bench's own JSON plus lapin_cpu_s (the bench process, RUSAGE_CHILDREN), broker_cpu_s
(/proc/PID/stat utime + stime over the run; RabbitMQ's is the whole node, which other sessions
share), load (1-minute load average at the start). `summary` prints medians:

    lapin_driver.py summary runs.jsonl

RabbitMQ's threads are reniced to -15 and this process and RabbitMQ get autogroup nice -10 (plain
nice does not cross autogroups); autogroups are restored to 0 at exit. RabbitMQ is never stopped.
"""
import argparse, atexit, json, os, resource, shlex, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402

MINI_PORT = 5702
MODES = {"autoack": ["-a"], "ack": ["-q", "1000", "--multi-ack", "100"]}
COMMON = ["-z", "10", "-s", "16", "--max-backlog", "10000", "--json"]


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def lapin(bench, extra, port, mode):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(["nice", "-n", "-15", bench, "--uri", f"amqp://guest:guest@127.0.0.1:{port}/%2f",
                          *MODES[mode], *COMMON, *extra], capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    rec = json.loads(lines[-1]) if lines else {"error": out.stdout[-500:] + out.stderr[-500:]}
    if out.returncode != 0:
        rec["error"] = (out.stdout[-500:] + out.stderr[-500:]) or f"exit {out.returncode}"
    rec["lapin_cpu_s"] = round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 2)
    return rec


def run_mini(mini, bench, extra, mode):
    data = tempfile.mkdtemp()
    proc = subprocess.Popen(["nice", "-n", "-15", mini, "--listen", f"127.0.0.1:{MINI_PORT}",
                             "--mgmt-listen", f"127.0.0.1:{MINI_PORT + 10000}", "--data-dir", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        measure.wait_port(MINI_PORT)
        start = cpu(proc.pid)
        rec = lapin(bench, extra, MINI_PORT, mode)
        rec["broker_cpu_s"] = round(cpu(proc.pid) - start, 2)
    finally:
        proc.terminate()
        proc.wait()
        subprocess.run(["rm", "-rf", data])
    return rec


def run_rabbit(mini, bench, extra, mode):
    pid = measure.beam_pid()
    start = cpu(pid)
    rec = lapin(bench, extra, 5672, mode)
    rec["broker_cpu_s"] = round(cpu(pid) - start, 2)
    return rec


def autogroup(pid, value):
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(value))
    except (OSError, TypeError) as err:
        print("autogroup", pid, err, file=sys.stderr)


def drive(args):
    measure.renice_rabbit(-15)
    autogroup(os.getpid(), -10)
    autogroup(measure.beam_pid(), -10)
    atexit.register(lambda: (autogroup(os.getpid(), 0), autogroup(measure.beam_pid(), 0)))
    for mode in args.modes.split(","):
        for rep in range(args.reps):
            for name, bench, extra in args.variant:
                order = [(broker, path, run_mini) for broker, path in minis(args.mini)]
                order.append(("rabbit", None, run_rabbit))
                if rep % 2:
                    order.reverse()
                for broker, mini, run in order:
                    load = os.getloadavg()[0]
                    rec = run(mini, bench, shlex.split(extra), mode)
                    rec.update(variant=name, broker=broker, mode=mode, rep=rep, load=round(load, 2))
                    print(json.dumps(rec), flush=True)


def minis(paths):
    """The mini-broker binaries as (broker name, path): "mini" when there is one."""
    paths = paths or ["/tmp/target-main/release/mini-broker"]
    named = [p.split("=", 1) if "=" in p else [str(i), p] for i, p in enumerate(paths)]
    if len(named) == 1:
        return [("mini", named[0][1])]
    return [(f"mini-{name}", path) for name, path in named]


def summary(path):
    runs = [json.loads(line) for line in open(path) if line.strip()]
    groups = {}
    for run in runs:
        groups.setdefault((run["variant"], run["mode"]), {}).setdefault(run["broker"], []).append(run)
    print("variant mode | mini msg/s (runs) | RabbitMQ msg/s (runs) | ratio | lapin CPU s mini/RMQ "
          "| broker CPU s mini/RMQ | lapin µs/msg mini/RMQ | broker µs/msg mini/RMQ | load | errors")
    for (variant, mode), by_broker in groups.items():
        for mini_name in sorted(b for b in by_broker if b.startswith("mini")):
            row(f"{variant} {mode}" + ("" if mini_name == "mini" else f" {mini_name}"),
                {"mini": by_broker[mini_name], "rabbit": by_broker.get("rabbit", [])})


def row(label, by_broker):
    med = lambda broker, key: statistics.median(r.get(key, 0) for r in by_broker.get(broker, [{}]))
    rates = {b: [round(r.get("end_to_end_rate", 0) / 1000) for r in rs] for b, rs in by_broker.items()}
    errors = sum(1 for rs in by_broker.values() for r in rs
                 if "error" in r or r.get("unique") != r.get("published") or r.get("duplicates"))
    loads = [r["load"] for rs in by_broker.values() for r in rs]
    mini, rabbit = med("mini", "end_to_end_rate"), med("rabbit", "end_to_end_rate")
    per_msg = lambda broker, key: statistics.median(
        1e6 * r.get(key, 0) / max(r.get("received", 0), 1) for r in by_broker.get(broker, [{}]))
    print(f"{label} | {mini / 1000:.0f} k {rates.get('mini')} | {rabbit / 1000:.0f} k "
          f"{rates.get('rabbit')} | {mini / max(rabbit, 1):.2f}x | {med('mini', 'lapin_cpu_s'):.1f} / "
          f"{med('rabbit', 'lapin_cpu_s'):.1f} | {med('mini', 'broker_cpu_s'):.1f} / "
          f"{med('rabbit', 'broker_cpu_s'):.1f} | {per_msg('mini', 'lapin_cpu_s'):.1f} / "
          f"{per_msg('rabbit', 'lapin_cpu_s'):.1f} | {per_msg('mini', 'broker_cpu_s'):.2f} / "
          f"{per_msg('rabbit', 'broker_cpu_s'):.1f} | {min(loads):.1f}-{max(loads):.1f} | {errors}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "summary":
        return summary(sys.argv[2])
    parser = argparse.ArgumentParser()
    parser.add_argument("--mini", action="append")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", default="autoack,ack")
    parser.add_argument("--variant", nargs=3, action="append", required=True,
                        metavar=("NAME", "BENCH", "FLAGS"))
    drive(parser.parse_args())


if __name__ == "__main__":
    main()

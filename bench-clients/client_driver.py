#!/usr/bin/env python3
"""amqp-client vs amqprs (bench-ours, bench-amqprs) against RabbitMQ (127.0.0.1:5672) and a fresh
mini-broker, alternating the client order every rep; one JSON line per run, then medians.

    client_driver.py BIN_DIR MINI_BROKER [REPS] [N] > runs.jsonl

MINI_BROKER must be a file named mini-broker (its directory is used).

BIN_DIR holds the bench-clients release binaries. This process and RabbitMQ get autogroup nice
-10 for the run (restored to 0 at the end); plain nice does not reach across sessions.

Each row also has the CPU seconds the run cost: `client_cpu_s` (the bench process, user +
system, the queue fill of `consume` included) and, against RabbitMQ, `rabbit_cpu_s` (the node's
beam.smp over the run, which counts whatever else uses the node meanwhile). On a loaded machine
they say more than the rates: the broker is CPU-bound and shares the two cores with the client.

With NULL_ACKS=1,64,0 (say) in the environment, each rep's consume test also runs bench-null
(src/bin/null.rs, the cheapest possible consumer) with each `--ack-every` listed, as clients
"null1", "null64", "null0": the broker's own ceiling for that test (1: an ack frame per
delivery; 64: one multiple ack per 64, as far as amqp-client coalesces; 0: no acks at all).
BROKERS=rabbit and TESTS=consume (comma lists) run a subset.
"""
import json, os, resource, statistics, subprocess, sys
BIN, MINI = sys.argv[1], sys.argv[2]
os.environ["PERF_BIN"] = os.path.dirname(os.path.abspath(MINI))  # where measure finds mini-broker
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402
REPS = int(sys.argv[3]) if len(sys.argv) > 3 else 5
N = sys.argv[4] if len(sys.argv) > 4 else "200000"


def autogroup(pid, value):
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(value))
    except OSError:
        pass


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, TypeError):
        return None


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


NULL_ACKS = [a for a in os.environ.get("NULL_ACKS", "").split(",") if a]
# A subset, e.g. BROKERS=rabbit TESTS=consume.
BROKERS = os.environ.get("BROKERS", "rabbit,mini").split(",")
TESTS = os.environ.get("TESTS", "publish,confirm,consume").split(",")


def bench(client, port, test):
    rabbit_before = cpu_seconds(beam) if port == 5672 else None
    client_before = children_cpu()
    program, extra = f"{BIN}/bench-{client}", []
    if client.startswith("null"):
        program, extra = f"{BIN}/bench-null", ["--ack-every", client[4:]]
    out = subprocess.run([program, "--host", "127.0.0.1", "--port", str(port),
                          "--test", test, "-n", N, *extra], capture_output=True, text=True, timeout=600)
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"error": out.stderr.strip()[-300:]}
    result["client_cpu_s"] = round(children_cpu() - client_before, 3)
    rabbit_after = cpu_seconds(beam) if rabbit_before is not None else None
    if rabbit_after is not None:
        result["rabbit_cpu_s"] = round(rabbit_after - rabbit_before, 3)
    return result


beam = measure.beam_pid()
autogroup(os.getpid(), -10)
autogroup(beam, -10)
rows = []
try:
    for rep in range(REPS):
        clients = ["ours", "amqprs"] if rep % 2 == 0 else ["amqprs", "ours"]
        for broker in BROKERS:
            for test in TESTS:
                everyone = clients + ([f"null{a}" for a in NULL_ACKS] if test == "consume" else [])
                # Rotated every rep, so that no program always runs first or last.
                turn = rep % len(everyone)
                for client in everyone[turn:] + everyone[:turn]:
                    if broker == "mini":
                        with measure.MiniBroker():
                            result = bench(client, measure.MINI_PORT, test)
                    else:
                        result = bench(client, 5672, test)
                    row = {**result, "broker": broker, "test": test, "client": client,
                           "rep": rep, "load": os.getloadavg()[0]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
finally:
    autogroup(os.getpid(), 0)
    autogroup(beam, 0)
for broker in BROKERS:
    for test in TESTS:
        med = {}
        for client in ["ours", "amqprs"]:
            rates = [r["rate"] for r in rows if (r["broker"], r["test"], r["client"]) == (broker, test, client) and "rate" in r]
            med[client] = statistics.median(rates) if rates else 0
        ratio = med["ours"] / med["amqprs"] if med["amqprs"] else 0
        print(f"# {broker} {test}: ours {med['ours']:.0f} amqprs {med['amqprs']:.0f} = {ratio:.2f}x", file=sys.stderr)
        if test == "consume":
            for acks in NULL_ACKS:
                rates = [r["rate"] for r in rows if (r["broker"], r["test"], r["client"]) == (broker, test, f"null{acks}") and "rate" in r]
                if rates:
                    ceiling = statistics.median(rates)
                    print(f"#   ceiling, bench-null --ack-every {acks}: {ceiling:.0f} {sorted(round(r) for r in rates)}"
                          f" = {ceiling / med['amqprs'] if med['amqprs'] else 0:.2f}x amqprs; ours at {med['ours'] / ceiling:.0%} of it", file=sys.stderr)

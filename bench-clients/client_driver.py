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

With CONSUMER_TASK=1, each rep's consume test also runs both clients with `--consumer-in task`
(the consume loop in a spawned task on the runtime's workers instead of in main's future), as
clients "ours-task" and "amqprs-task".

Each bench line also has `cpu_s` and `switches`: the CPU seconds and context switches of the
timed part alone (the fill excluded); the summary gives them per delivery.
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
CONSUMER_TASK = os.environ.get("CONSUMER_TASK") == "1"


def bench(client, port, test):
    rabbit_before = cpu_seconds(beam) if port == 5672 else None
    client_before = children_cpu()
    program, extra = f"{BIN}/bench-{client}", []
    if client.startswith("null"):
        program, extra = f"{BIN}/bench-null", ["--ack-every", client[4:]]
    elif client.endswith("-task"):
        program, extra = f"{BIN}/bench-{client[:-5]}", ["--consumer-in", "task"]
    out = subprocess.run([program, "--host", "127.0.0.1", "--port", str(port),
                          "--test", test, "-n", N, *extra], capture_output=True, text=True, timeout=600)
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"error": out.stderr.strip()[-300:]}
    result["client_cpu_s"] = round(children_cpu() - client_before, 3)
    rabbit_after = cpu_seconds(beam) if rabbit_before is not None else None
    if rabbit_after is not None:
        result["rabbit_cpu_s"] = round(rabbit_after - rabbit_before, 3)
    return result


def runs(broker, test, client):
    return [r for r in rows if (r["broker"], r["test"], r["client"]) == (broker, test, client) and "rate" in r]


def median_rate(broker, test, client):
    done = runs(broker, test, client)
    return statistics.median(r["rate"] for r in done) if done else 0


def per_delivery(broker, test, client):
    """Median CPU microseconds and context switches per message of the timed part."""
    done = [r for r in runs(broker, test, client) if "cpu_s" in r]
    if not done:
        return ""
    cpu = statistics.median(r["cpu_s"] / r["messages"] * 1e6 for r in done)
    switches = statistics.median(r["switches"] / r["messages"] for r in done)
    return f" ({cpu:.1f} us CPU, {switches:.2f} switches per message)"


beam = measure.beam_pid()
autogroup(os.getpid(), -10)
autogroup(beam, -10)
rows = []
try:
    for rep in range(REPS):
        clients = ["ours", "amqprs"] if rep % 2 == 0 else ["amqprs", "ours"]
        for broker in BROKERS:
            for test in TESTS:
                everyone = clients
                if test == "consume":
                    everyone = (clients + ([f"{c}-task" for c in clients] if CONSUMER_TASK else [])
                                + [f"null{a}" for a in NULL_ACKS])
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
        pairs = [("ours", "amqprs")]
        if test == "consume" and CONSUMER_TASK:
            pairs.append(("ours-task", "amqprs-task"))
        for ours, peer in pairs:
            med = {c: median_rate(broker, test, c) for c in (ours, peer)}
            ratio = med[ours] / med[peer] if med[peer] else 0
            print(f"# {broker} {test}: {ours} {med[ours]:.0f}{per_delivery(broker, test, ours)}"
                  f" {peer} {med[peer]:.0f}{per_delivery(broker, test, peer)} = {ratio:.2f}x", file=sys.stderr)
        if test == "consume":
            med = {c: median_rate(broker, test, c) for c in ("ours", "amqprs")}
            for acks in NULL_ACKS:
                rates = [r["rate"] for r in runs(broker, test, f"null{acks}")]
                if rates:
                    ceiling = statistics.median(rates)
                    print(f"#   ceiling, bench-null --ack-every {acks}: {ceiling:.0f} {sorted(round(r) for r in rates)}"
                          f"{per_delivery(broker, test, f'null{acks}')}"
                          f" = {ceiling / med['amqprs'] if med['amqprs'] else 0:.2f}x amqprs; ours at {med['ours'] / ceiling:.0%} of it", file=sys.stderr)

#!/usr/bin/env python3
"""Runs the measurements of docs/PERFORMANCE.md: amqp-perf scenarios and the client comparison,
against mini-broker and RabbitMQ, alternating brokers, several repetitions, one at a time.

    python3 bench-clients/measure.py broker  [--reps 3] [--out results.jsonl]
    python3 bench-clients/measure.py clients [--reps 3] [-n 300000]
    python3 bench-clients/measure.py rss
    python3 bench-clients/measure.py cpu      # CPU time per message: broker vs amqp-perf
    python3 bench-clients/measure.py summary results.jsonl

Expects release builds: amqp-perf and mini-broker in $PERF_BIN (default /tmp/target-perf/release),
the bench-clients binaries in $CLIENTS_BIN (default /tmp/target-perf-clients/release), and
RabbitMQ on 127.0.0.1:5672 (guest/guest). mini-broker is started fresh for every run, on port
5700 with an empty data directory. `bench/compare` imports this file and sets the paths, ports
and waits below before it calls the same functions. Before each run it waits (up to 5 minutes) until no compiler
is running on the machine, and records the load average with the result. Other work on the
machine competes for the two cores, so the benchmark processes run at nice -15 and RabbitMQ's
threads are reniced to -15 for the duration (and back to 0 afterwards).
"""

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

PERF_BIN = os.environ.get("PERF_BIN", "/tmp/target-perf/release")
CLIENTS_BIN = os.environ.get("CLIENTS_BIN", "/tmp/target-perf-clients/release")
MINI_PORT = 5700
RABBIT_PORT = 5672
# The RabbitMQ to compare with; the bench-clients programs take its host and port (and log in
# as guest/guest on vhost /).
RABBIT_URI = f"amqp://guest:guest@127.0.0.1:{RABBIT_PORT}/%2f"
NICE = ["nice", "-n", "-15"]
QUIET_WAIT = int(os.environ.get("QUIET_WAIT", "45"))
BUSY = {"rustc", "cc1", "cc1plus", "ld", "ld.lld", "cc", "collect2", "lld", "mold"}

BROKER_SCENARIOS = {
    "transient-autoack": ["-x", "1", "-y", "1", "-s", "16", "-z", "10", "-a"],
    "transient-ack-qos1000": ["-x", "1", "-y", "1", "-s", "16", "-z", "10", "-q", "1000"],
    "persistent-confirm1000": ["-x", "1", "-y", "1", "-s", "16", "-z", "10", "-f", "persistent",
                               "--durable", "-c", "1000", "-q", "1000"],
    "64k-autoack": ["-x", "1", "-y", "1", "-s", "65536", "-z", "10", "-a"],
}


def busy_processes():
    names = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name in BUSY:
            names.append(name)
    return names


def wait_quiet(limit=None):
    """Waits (up to `limit` seconds, default QUIET_WAIT) until no compiler runs; returns what
    it saw, with the load average, for the record."""
    limit = QUIET_WAIT if limit is None else limit
    start = time.time()
    while busy_processes() and time.time() - start < limit:
        time.sleep(1)
    time.sleep(0.5)
    return {"waited_s": round(time.time() - start, 1), "busy_at_start": busy_processes(),
            "load1": os.getloadavg()[0]}


def wait_port(port, limit=10):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class MiniBroker:
    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="perf-mb-")
        self.proc = subprocess.Popen(
            [*NICE, f"{PERF_BIN}/mini-broker", "--listen", f"127.0.0.1:{MINI_PORT}",
             "--data-dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"})
        wait_port(MINI_PORT)
        return self

    def rss_kib(self):
        return vm_rss_kib(self.proc.pid)

    def peak_rss_kib(self):
        return proc_status_kib(self.proc.pid, "VmHWM")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def proc_status_kib(pid, field):
    """A kB field of /proc/PID/status (VmRSS, VmHWM), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def vm_rss_kib(pid):
    return proc_status_kib(pid, "VmRSS")


def beam_pid():
    """The RabbitMQ node's beam.smp: the oldest one (rabbitmqctl runs short-lived ones too)."""
    out = subprocess.run(["pgrep", "-o", "-u", "rabbitmq", "beam.smp"], capture_output=True,
                         text=True)
    pids = out.stdout.split()
    return int(pids[0]) if pids else None


def rabbit_status():
    """`rabbitmqctl status` as JSON, or None (no rabbitmqctl, node down)."""
    try:
        out = subprocess.run(["rabbitmqctl", "status", "--formatter", "json"],
                             capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def rabbit_memory_total():
    """The node's own memory total (bytes, its `erlang` strategy), or None."""
    try:
        return rabbit_status()["memory"]["total"]["erlang"]
    except (KeyError, TypeError):
        return None


def uri(port):
    return f"amqp://guest:guest@127.0.0.1:{port}/%2f"


def run_perf(target, flags, timeout=600):
    """One amqp-perf run against a port on 127.0.0.1 or a URI; its JSON summary, with the
    exit status and the command."""
    target_uri = target if isinstance(target, str) else uri(target)
    cmd = [*NICE, f"{PERF_BIN}/amqp-perf", "--uri", target_uri, "--json", "--quiet", *flags]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "exit": None,
                "command": " ".join(cmd[3:])}
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    result = json.loads(line) if line.startswith("{") else {"error": out.stderr.strip()}
    result["exit"] = out.returncode
    result["command"] = " ".join(cmd[3:])
    return result


def print_record(record):
    print(json.dumps(record), flush=True)


# What emit shows of each record as it comes (bench/compare prints a shorter line).
SHOW = print_record


def emit(out, record):
    SHOW(record)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")


def broker_runs(args):
    for rep in range(args.reps):
        for name, flags in BROKER_SCENARIOS.items():
            order = ["mini", "rabbit"] if rep % 2 == 0 else ["rabbit", "mini"]
            for broker in order:
                quiet = wait_quiet()
                if broker == "mini":
                    with MiniBroker():
                        result = run_perf(MINI_PORT, flags)
                else:
                    result = run_perf(RABBIT_PORT, flags)
                emit(args.out, {"kind": "broker", "scenario": name, "broker": broker, "rep": rep,
                                **quiet, "result": result})


def client_runs(args):
    clients = ["ours", "amqprs", "lapin"]
    for rep in range(args.reps):
        order = ["mini", "rabbit"] if rep % 2 == 0 else ["rabbit", "mini"]
        for broker in order:
            for test in ["publish", "confirm", "consume"]:
                # The broker's own ceiling for consume + ack: bench-null, a consumer that
                # costs next to nothing, with an ack frame per delivery and with no acks.
                ceilings = ["null", "null-noack"] if test == "consume" else []
                for client in clients + ["amqp-perf"] + ceilings:
                    quiet = wait_quiet()
                    ctx = MiniBroker() if broker == "mini" else None
                    target = MINI_PORT if broker == "mini" else RABBIT_URI
                    host, port = host_port(target)
                    if ctx:
                        ctx.__enter__()
                    try:
                        if client == "amqp-perf":
                            result = perf_client_equivalent(target, test, args.n)
                        else:
                            program, extra = f"bench-{client}", []
                            if client.startswith("null"):
                                acks = "0" if client == "null-noack" else "1"
                                program, extra = "bench-null", ["--ack-every", acks]
                            cmd = [*NICE, f"{CLIENTS_BIN}/{program}", "--host", host,
                                   "--port", str(port), "--test", test, "-n", str(args.n),
                                   *extra]
                            out = subprocess.run(cmd, capture_output=True, text=True,
                                                 timeout=900)
                            lines = out.stdout.strip().splitlines()
                            result = json.loads(lines[-1]) if lines else {
                                "error": out.stderr.strip()}
                            result["exit"] = out.returncode
                            result["command"] = " ".join(cmd[3:])
                    finally:
                        if ctx:
                            ctx.__exit__(None, None, None)
                    emit(args.out, {"kind": "client", "client": client, "test": test,
                                    "broker": broker, "rep": rep, **quiet, "result": result})


def host_port(target):
    """(host, port) of a port on 127.0.0.1 or of an amqp:// URI."""
    if not isinstance(target, str):
        return "127.0.0.1", target
    parsed = urllib.parse.urlsplit(target)
    return parsed.hostname or "127.0.0.1", parsed.port or 5672


def perf_client_equivalent(port, test, n):
    """amqp-perf doing what the bench-clients programs do, on one connection per role."""
    if test == "publish":
        r = run_perf(port, ["-x", "1", "-y", "0", "-C", str(n), "--queue", "perf-clients"])
        return {"rate": r.get("send_rate"), "raw": r}
    if test == "confirm":
        r = run_perf(port, ["-x", "1", "-y", "0", "-C", str(n), "-c", "1000",
                            "--queue", "perf-clients"])
        return {"rate": r.get("confirm_rate"), "raw": r}
    run_perf(port, ["-x", "1", "-y", "0", "-C", str(n), "-c", "1000", "--queue", "perf-clients"])
    r = run_perf(port, ["-x", "0", "-y", "1", "-D", str(n), "-q", "1000", "--predeclared",
                        "--queue", "perf-clients"])
    run_perf(port, ["-x", "1", "-y", "1", "-C", "1", "--queue", "perf-clients"])  # purge
    return {"rate": r.get("receive_rate"), "raw": r}


def rss_runs(args):
    flags = ["-x", "1", "-y", "0", "-C", "1000000", "-s", "16", "-c", "1000", "--queue", "perf-rss"]
    for rep in range(args.reps):
        quiet = wait_quiet()
        with MiniBroker() as mb:
            before = mb.rss_kib()
            result = run_perf(MINI_PORT, flags)
            time.sleep(3)
            after = mb.rss_kib()
        emit(args.out, {"kind": "rss", "broker": "mini", "rep": rep, **quiet,
                        "rss_before_kib": before, "rss_after_kib": after, "result": result})
        quiet = wait_quiet()
        pid = beam_pid()
        before, total_before = vm_rss_kib(pid), rabbit_memory_total()
        result = run_perf(RABBIT_PORT, flags)
        time.sleep(3)
        after, total_after = vm_rss_kib(pid), rabbit_memory_total()
        emit(args.out, {"kind": "rss", "broker": "rabbit", "rep": rep, **quiet,
                        "rss_before_kib": before, "rss_after_kib": after,
                        "erlang_total_before": total_before, "erlang_total_after": total_after,
                        "result": result})
        # Empty the queue again (a named queue is purged at the start of a run).
        run_perf(RABBIT_PORT, ["-x", "1", "-y", "1", "-C", "1", "--queue", "perf-rss"])


CPU_SCENARIOS = {
    "transient-autoack": ["-C", "1000000", "-a"],
    "transient-ack-qos1000": ["-C", "1000000", "-q", "1000"],
    "64k-autoack": ["-C", "50000", "-s", "65536", "-a"],
}


def process_cpu_s(pid):
    """User and system CPU seconds of a process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def timed_perf(port, flags):
    """amqp-perf with its own CPU time (rusage of the child)."""
    cmd = [*NICE, f"{PERF_BIN}/amqp-perf", "--uri", uri(port), "--json", "--quiet", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=600)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.strip().splitlines()[-1])
    return result, usage


def cpu_runs(args):
    for rep in range(args.reps):
        for name, flags in CPU_SCENARIOS.items():
            for broker in ["mini", "rabbit"]:
                quiet = wait_quiet()
                before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
                if broker == "mini":
                    with MiniBroker() as mb:
                        b0 = process_cpu_s(mb.proc.pid)
                        result, after_children = timed_perf(MINI_PORT, flags)
                        b1 = process_cpu_s(mb.proc.pid)
                else:
                    pid = beam_pid()
                    b0 = process_cpu_s(pid)
                    result, after_children = timed_perf(RABBIT_PORT, flags)
                    b1 = process_cpu_s(pid)
                n = result["received"] or result["sent"]
                client_user = after_children.ru_utime - before_children.ru_utime
                client_sys = after_children.ru_stime - before_children.ru_stime
                emit(args.out, {"kind": "cpu", "scenario": name, "broker": broker, "rep": rep,
                                **quiet, "messages": n,
                                "receive_rate": result["receive_rate"],
                                "broker_user_s": b1[0] - b0[0], "broker_sys_s": b1[1] - b0[1],
                                "client_user_s": client_user, "client_sys_s": client_sys,
                                "broker_us_per_msg": 1e6 * (sum(b1) - sum(b0)) / n,
                                "client_us_per_msg": 1e6 * (client_user + client_sys) / n})


def summary(args):
    records = [json.loads(line) for line in open(args.file) if line.strip()]
    groups = {}
    for r in records:
        res = r["result"]
        if r["kind"] == "broker":
            key = (r["scenario"], r["broker"])
            mb = "64k" in r["scenario"]
            value = res.get("receive_mb_s" if mb else "receive_rate")
            extra = res.get("send_rate")
            groups.setdefault(key, []).append((value, extra, res.get("delivery", {}).get("ok"),
                                               res.get("latency_us", {}) or {}))
        elif r["kind"] == "client":
            key = (r["test"], r["broker"], r["client"])
            groups.setdefault(key, []).append((res.get("rate"), None, res.get("exit"), {}))
        elif r["kind"] == "rss":
            key = ("rss", r["broker"])
            groups.setdefault(key, []).append((r["rss_after_kib"], r["rss_before_kib"],
                                               r.get("erlang_total_after"), {}))
    for key, values in sorted(groups.items()):
        main = [v[0] for v in values if v[0] is not None]
        med = statistics.median(main) if main else None
        print(key, "median", med, "runs", [round(v, 1) for v in main],
              "extra", [v[1] if not isinstance(v[1], float) else round(v[1]) for v in values],
              "ok", [v[2] for v in values],
              "p50us", [v[3].get("median") for v in values])


def renice_rabbit(priority):
    pid = beam_pid()
    if pid:
        tasks = os.listdir(f"/proc/{pid}/task")
        subprocess.run(["renice", "-n", str(priority), "-p", *tasks], capture_output=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["broker", "clients", "rss", "cpu", "summary"])
    parser.add_argument("file", nargs="?")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("-n", type=int, default=300000)
    parser.add_argument("--out", default="/tmp/perf/results.jsonl")
    args = parser.parse_args()
    if args.what != "summary":
        renice_rabbit(-15)
    try:
        run(args)
    finally:
        if args.what != "summary":
            renice_rabbit(0)


def run(args):
    if args.what == "broker":
        broker_runs(args)
    elif args.what == "clients":
        client_runs(args)
    elif args.what == "rss":
        rss_runs(args)
    elif args.what == "cpu":
        cpu_runs(args)
    else:
        summary(args)


if __name__ == "__main__":
    sys.exit(main())

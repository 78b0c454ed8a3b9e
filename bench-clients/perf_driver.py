#!/usr/bin/env python3
"""amqp-perf against mini-broker (fresh per run, on 127.0.0.1:5707) and RabbitMQ (127.0.0.1:5672),
alternating (the order flips every rep); one JSON line per run on stdout.

    perf_driver.py AMQP_PERF MINI_BROKER SCENARIOS REPS [NAME=AMQP_PERF:MINI_BROKER ...] > runs.jsonl
    perf_driver.py target/release/amqp-perf target/release/mini-broker 16B,64K,lat 3
    perf_driver.py /tmp/old/amqp-perf /tmp/old/mini-broker 64K 3 new=target/release/amqp-perf:target/release/mini-broker

Each setup (the first, named "a", and any NAME=AMQP_PERF:MINI_BROKER after REPS: a before/after
in one time window) runs against its mini-broker and against RabbitMQ with its own amqp-perf,
per scenario and rep.

Scenarios: 16B (1p1c 16 B autoack, 10 s), 64K (1p1c 64 KiB autoack, 10 s), lat (16 B at
10,000 msg/s, 10 s), persist (1p1c 16 B persistent to a durable queue, confirms with 1000
outstanding, manual acks with qos 1000, 10 s: confirmed after fsync on both brokers). This process (so amqp-perf and mini-broker) and RabbitMQ get autogroup
nice -10 for the run (plain nice does not reach across sessions), restored to 0 at the end.
Each line: scenario, setup, broker, rep, load, broker CPU seconds and minor page faults
(/proc/PID/stat; RabbitMQ's are the whole node's), amqp-perf's CPU seconds and minor page faults
(RUSAGE_CHILDREN), receive rate and MB/s, amqp-perf's exactly-once verdict and latency
percentiles. `perf_driver.py summary runs.jsonl` prints medians per scenario and setup.

With RELAY=path/to/bench-relay in the environment, the 64K scenario also runs bench-relay
(src/bin/relay.rs) with 1 and 2 relay threads in the same alternation: the loopback TCP
ceiling of any broker for that scenario (brokers "relay1" and "relay2"; broker_cpu is the
relay's, perf_cpu the relay clients').
"""
import json, os, resource, subprocess, sys, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402
if sys.argv[1] != "summary":
    SCEN = sys.argv[3].split(","); REPS = int(sys.argv[4])
    SETUPS = [("a", sys.argv[1], sys.argv[2])] + [
        (a.split("=", 1)[0], *a.split("=", 1)[1].split(":", 1)) for a in sys.argv[5:]]
FLAGS = {"16B": ["-x1", "-y1", "-s16", "-z", "10", "-a"],
         "64K": ["-x1", "-y1", "-s65536", "-z", "10", "-a"],
         "lat": ["-x1", "-y1", "-s16", "-r", "10000", "-z", "10", "-a"],
         "persist": ["-x1", "-y1", "-s16", "-f", "persistent", "--durable", "-c", "1000",
                     "-q", "1000", "-z", "10"]}
def cpu(pid):
    parts = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
def minflt(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[7])
def ag(pid, v):
    try: open(f"/proc/{pid}/autogroup", "w").write(str(v))
    except OSError: pass
def summary(path):
    import statistics
    runs = [json.loads(l) for l in open(path) if l.strip()]
    groups = {}
    for r in runs:
        groups.setdefault((r["scen"], r.get("setup", "a")), {}).setdefault(r["broker"], []).append(r)
    print("scenario setup | mini (runs) | RabbitMQ (runs) | ratio | broker CPU µs/msg mini/RMQ | "
          "amqp-perf CPU µs/msg mini/RMQ | page faults/msg broker, amqp-perf (mini) | load | errors")
    for (scen, setup), by in groups.items():
        key = "receive_mb_s" if scen == "64K" else "receive_rate"
        vals = {b: [r.get(key) or 0 for r in rs] for b, rs in by.items()}
        med = {b: statistics.median(v) for b, v in vals.items()}
        def per_msg(b, k):
            return statistics.median(1e6 * r.get(k, 0) / max((r.get("receive_rate") or 0) * 10, 1) for r in by.get(b, []))
        def flt(k):
            return statistics.median(r.get(k, 0) / max((r.get("receive_rate") or 0) * 10, 1) for r in by.get("mini", []))
        loads = [r["load"] for rs in by.values() for r in rs]
        errors = sum(1 for rs in by.values() for r in rs if "err" in r or not r.get("ok"))
        m, q = med.get("mini", 0), med.get("rabbit", 0)
        for relay in ("relay1", "relay2"):
            if relay in med:
                print(f"{scen} {setup} {relay} (no broker work: the ceiling) | {med[relay]:.0f} "
                      f"{[round(v) for v in vals[relay]]} | {med[relay] / max(q, 1e-9):.2f}x RabbitMQ | "
                      f"mini at {m / med[relay]:.0%} of it | relay CPU µs/msg {per_msg(relay, 'broker_cpu'):.2f} | "
                      f"clients {per_msg(relay, 'perf_cpu'):.2f}")
        print(f"{scen} {setup} | {m:.0f} {[round(v) for v in vals.get('mini', [])]} | {q:.0f} "
              f"{[round(v) for v in vals.get('rabbit', [])]} | {m / max(q, 1e-9):.2f}x | "
              f"{per_msg('mini', 'broker_cpu'):.2f} / {per_msg('rabbit', 'broker_cpu'):.2f} | "
              f"{per_msg('mini', 'perf_cpu'):.2f} / {per_msg('rabbit', 'perf_cpu'):.2f} | "
              f"{flt('broker_minflt'):.2f}, {flt('perf_minflt'):.2f} | {min(loads):.1f}-{max(loads):.1f} | {errors}")
if sys.argv[1] == "summary":
    summary(sys.argv[2]); sys.exit(0)
RELAY = os.environ.get("RELAY")
beam = measure.beam_pid(); ag(os.getpid(), -10); ag(beam, -10)
try:
    for rep in range(REPS):
        for scen in SCEN:
          for setup, PERF, MINI in SETUPS:
            order = ["mini", "rabbit"] if rep % 2 == 0 else ["rabbit", "mini"]
            if RELAY and scen == "64K" and setup == "a":
                # Rotated every rep, so that no run always comes first or last.
                order += ["relay1", "relay2"] if rep % 2 == 0 else ["relay2", "relay1"]
                order = order[rep % len(order):] + order[:rep % len(order)]
            for b in order:
                if b.startswith("relay"):
                    out = subprocess.run([RELAY, "--size", "65536", "--seconds", "10", "--threads", b[-1]],
                                         capture_output=True, text=True, timeout=300)
                    rec = {"scen": scen, "setup": setup, "broker": b, "rep": rep, "load": os.getloadavg()[0]}
                    try:
                        j = json.loads(out.stdout.strip().splitlines()[-1])
                        rec.update({"receive_rate": j["receive_rate"], "receive_mb_s": j["receive_mb_s"],
                                    "broker_cpu": j["relay_cpu_s"], "perf_cpu": j["clients_cpu_s"],
                                    "ok": j["sent"] == round(j["received"])})
                    except Exception:
                        rec["err"] = out.stdout[-300:] + out.stderr[-300:]
                    print(json.dumps(rec), flush=True)
                    continue
                d = None
                if b == "mini":
                    d = tempfile.mkdtemp()
                    p = subprocess.Popen([MINI, "--listen", "127.0.0.1:5707", "--mgmt-listen", "127.0.0.1:15707", "--data-dir", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    measure.wait_port(5707); pid, port = p.pid, 5707
                else:
                    pid, port = beam, 5672
                c0 = cpu(pid); f0 = minflt(pid); load = os.getloadavg()[0]
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                out = subprocess.run([PERF, "--uri", f"amqp://guest:guest@127.0.0.1:{port}/%2f", *FLAGS[scen], "--json"], capture_output=True, text=True, timeout=300)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                rec = {"scen": scen, "setup": setup, "broker": b, "rep": rep, "load": load, "broker_cpu": cpu(pid) - c0,
                       "broker_minflt": minflt(pid) - f0,
                       "perf_cpu": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
                       "perf_minflt": r1.ru_minflt - r0.ru_minflt}
                try:
                    j = json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])
                    rec.update({k: j.get(k) for k in ("receive_rate", "receive_mb_s", "ok")}); rec["lat"] = j.get("latency_us")
                except Exception:
                    rec["err"] = out.stdout[-300:] + out.stderr[-300:]
                print(json.dumps(rec), flush=True)
                if d: p.terminate(); p.wait(); subprocess.run(["rm", "-rf", d])
finally:
    ag(os.getpid(), 0); ag(beam, 0)

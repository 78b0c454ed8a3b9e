#!/usr/bin/env python3
"""amqp-perf against mini-broker (fresh per run, on 127.0.0.1:5707) and RabbitMQ (127.0.0.1:5672),
alternating (the order flips every rep); one JSON line per run on stdout.

    perf_driver.py AMQP_PERF MINI_BROKER SCENARIOS REPS > runs.jsonl
    perf_driver.py target/release/amqp-perf target/release/mini-broker 16B,64K,lat 3

Scenarios: 16B (1p1c 16 B autoack, 10 s), 64K (1p1c 64 KiB autoack, 10 s), lat (16 B at
10,000 msg/s, 10 s), persist (1p1c 16 B persistent to a durable queue, confirms with 1000
outstanding, manual acks with qos 1000, 10 s: confirmed after fsync on both brokers). This process (so amqp-perf and mini-broker) and RabbitMQ get autogroup
nice -10 for the run (plain nice does not reach across sessions), restored to 0 at the end.
Each line: scenario, broker, rep, load, broker CPU seconds (/proc/PID/stat; RabbitMQ's is the
whole node), receive rate and MB/s, amqp-perf's exactly-once verdict and latency percentiles.
"""
import json, os, subprocess, sys, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402
PERF = sys.argv[1]; MINI = sys.argv[2]; SCEN = sys.argv[3].split(","); REPS = int(sys.argv[4])
FLAGS = {"16B": ["-x1", "-y1", "-s16", "-z", "10", "-a"],
         "64K": ["-x1", "-y1", "-s65536", "-z", "10", "-a"],
         "lat": ["-x1", "-y1", "-s16", "-r", "10000", "-z", "10", "-a"],
         "persist": ["-x1", "-y1", "-s16", "-f", "persistent", "--durable", "-c", "1000",
                     "-q", "1000", "-z", "10"]}
def cpu(pid):
    parts = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
def ag(pid, v):
    try: open(f"/proc/{pid}/autogroup", "w").write(str(v))
    except OSError: pass
beam = measure.beam_pid(); ag(os.getpid(), -10); ag(beam, -10)
try:
    for rep in range(REPS):
        for scen in SCEN:
            order = ["mini", "rabbit"] if rep % 2 == 0 else ["rabbit", "mini"]
            for b in order:
                d = None
                if b == "mini":
                    d = tempfile.mkdtemp()
                    p = subprocess.Popen([MINI, "--listen", "127.0.0.1:5707", "--mgmt-listen", "127.0.0.1:15707", "--data-dir", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    measure.wait_port(5707); pid, port = p.pid, 5707
                else:
                    pid, port = beam, 5672
                c0 = cpu(pid); load = os.getloadavg()[0]
                out = subprocess.run([PERF, "--uri", f"amqp://guest:guest@127.0.0.1:{port}/%2f", *FLAGS[scen], "--json"], capture_output=True, text=True, timeout=300)
                rec = {"scen": scen, "broker": b, "rep": rep, "load": load, "broker_cpu": cpu(pid) - c0}
                try:
                    j = json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])
                    rec.update({k: j.get(k) for k in ("receive_rate", "receive_mb_s", "ok")}); rec["lat"] = j.get("latency_us")
                except Exception:
                    rec["err"] = out.stdout[-300:] + out.stderr[-300:]
                print(json.dumps(rec), flush=True)
                if d: p.terminate(); p.wait(); subprocess.run(["rm", "-rf", d])
finally:
    ag(os.getpid(), 0); ag(beam, 0)

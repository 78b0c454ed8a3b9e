#!/usr/bin/env python3
"""Split amqp-perf's end-to-end latency into client publish, broker and client consume.

    tcpdump -i lo -s 0 --time-stamp-precision=nano -w run.pcap 'tcp port 5672' &
    amqp-perf -x 1 -y 1 -s 16 -r 10000 -z 10 -a --latency-log run.log
    kill %1
    scripts/latency_split.py run.pcap run.log 5672

Each message is found twice on the loopback by the stamp at the start of its body (producer,
sequence, run tag): in the publish (client -> broker) and in the delivery (broker -> client).
With the stamp and receive times from --latency-log (on the run's clock; its first line
gives the wall-clock time of ns 0) that makes three parts per message:
  client publish  = publish on the wire - stamp
  broker          = delivery on the wire - publish on the wire   (one clock: exact)
  client consume  = received by the consumer - delivery on the wire
A packet on the loopback is captured when its sender writes it. Percentiles in µs.
Only the standard library; pcap files from tcpdump on `lo` (Ethernet framing), IPv4.
"""
import bisect
import collections
import struct
import sys


def read_pcap(path):
    """Yields (timestamp ns, source port, destination port, sequence, payload)."""
    data = open(path, 'rb').read()
    magic = struct.unpack('<I', data[:4])[0]
    nano = magic == 0xa1b23c4d
    link = struct.unpack('<I', data[20:24])[0]
    at = 24
    while at + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack('<IIII', data[at:at + 16])
        packet = data[at + 16:at + 16 + caplen]
        at += 16 + caplen
        ip = packet[14:] if link == 1 else packet[16:]
        if not ip or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        header = (ip[0] & 15) * 4
        total = struct.unpack('>H', ip[2:4])[0]
        tcp = ip[header:total]
        sport, dport, seq = struct.unpack('>HHI', tcp[:8])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            yield sec * 10**9 + (frac if nano else frac * 1000), sport, dport, seq, payload


def body_stamps(segments):
    """The stamps of the body frames in one direction of one connection, each with the time
    of the packet that completed the frame."""
    segments.sort(key=lambda s: s[0])
    stream, ends, times, expected = bytearray(), [], [], None
    for seq, ts, payload in segments:
        if expected is not None and (seq - expected) % 2**32 > 2**31:
            continue  # a retransmission
        stream += payload
        expected = (seq + len(payload)) % 2**32
        ends.append(len(stream))
        times.append(ts)
    at = 8 if stream[:4] == b'AMQP' else 0
    while at + 7 <= len(stream):
        kind, _, size = struct.unpack('>BHI', stream[at:at + 7])
        end = at + 7 + size + 1
        if end > len(stream):
            break
        if kind == 3 and size >= 16:
            first, second = struct.unpack('>QQ', stream[at + 7:at + 23])
            key = (second >> 48, first >> 48, first & (2**48 - 1))  # run, producer, sequence
            yield key, times[bisect.bisect_left(ends, end)]
        at = end


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def main(pcap, log, port):
    flows = collections.defaultdict(list)
    for ts, sport, dport, seq, payload in read_pcap(pcap):
        flows[(sport, dport)].append((seq, ts, payload))
    published, delivered = {}, {}
    for (sport, dport), segments in flows.items():
        seen = published if dport == port else delivered
        for key, ts in body_stamps(segments):
            seen.setdefault(key, ts)
    with open(log) as lines:
        epoch = int(next(lines).split()[1])
        messages = [tuple(map(int, line.split())) for line in lines]
    # The run tag: the one most delivered messages of the log carry.
    logged = {(p, q) for p, q, _, _ in messages}
    runs = collections.Counter(k[0] for k in delivered if k[1:] in logged)
    if not runs:
        sys.exit('no message of the log found in the capture')
    run = runs.most_common(1)[0][0]
    rows = []
    for producer, sequence, sent, received in messages:
        key = (run, producer, sequence)
        if key in published and key in delivered:
            rows.append((sent, published[key] - epoch, delivered[key] - epoch, received))
    print(f'{len(rows)} of {len(messages)} messages found in the capture')
    parts = [
        ('total (stamp -> consumer)', [r - s for s, p, d, r in rows]),
        ('client publish (stamp -> wire)', [p - s for s, p, d, r in rows]),
        ('broker (wire in -> wire out)', [d - p for s, p, d, r in rows]),
        ('client consume (wire -> consumer)', [r - d for s, p, d, r in rows]),
    ]
    print(f"{'part, µs':36}" + ''.join(f'{h:>9}' for h in ('p50', 'p90', 'p99', 'p99.9', 'max')))
    for name, values in parts:
        print(f'{name:36}' + ''.join(f'{percentile(values, p) / 1000:9.1f}'
                                     for p in (50, 90, 99, 99.9, 100)))
    worst = sorted(rows, key=lambda r: r[3] - r[0])[-max(1, len(rows) // 100):]
    mean = lambda values: sum(values) / len(values) / 1000
    print('worst 1%%, mean µs: publish %.0f, broker %.0f, consume %.0f' % (
        mean([p - s for s, p, d, r in worst]), mean([d - p for s, p, d, r in worst]),
        mean([r - d for s, p, d, r in worst])))


if __name__ == '__main__':
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

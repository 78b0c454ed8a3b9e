#!/usr/bin/env python3
"""Behaviour scenarios for an AMQP 0-9-1 broker, compared line by line with RabbitMQ 3.10.

Usage:
    python3 scenarios.py AMQP_URL [--only NAME[,NAME...]] [--list]

Runs a fixed list of scenarios against the broker at AMQP_URL (for example
amqp://guest:guest@127.0.0.1:5672/%2f) and prints one JSON line per scenario, keys sorted:
reply codes and texts of channel and connection closes, method results, deliveries in order.

Names are unique per run (``scn-<random>-<logical>``) but the output shows only the logical
name, so the output of two runs against two brokers can be compared with ``diff``:

    python3 scenarios.py "$URL" > out.jsonl && diff rabbitmq-3.10.jsonl out.jsonl

Server-generated names are shown by their prefix (``amq.gen-*``, ``amq.ctag-*``) and
timestamps as ``<timestamp>``. A scenario that fails unexpectedly prints an ``error`` key
and the run goes on. Every scenario deletes what it declared.

Most scenarios use pika's BlockingConnection. Where pika hides the wire (frame order,
connection negotiation, methods pika cannot send) a small raw client (``Raw``) built on
pika's frame codec speaks to the socket directly.
"""

import argparse
import datetime
import decimal
import json
import re
import secrets
import socket
import struct
import sys
import time
import traceback

import pika
from pika import frame as pframe
from pika import spec
from pika.compat import long
from pika.exceptions import (
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
)

RAND = secrets.token_hex(4)
PREFIX = f"scn-{RAND}-"
WAIT = 5.0  # seconds to wait for something that must happen
SETTLE = 0.3  # seconds to wait to see that nothing more happens


def n(logical):
    """The real (unique per run) name of a logical name."""
    return PREFIX + logical


# ---------------------------------------------------------------------------------------------
# Normalisation: make the output independent of the run and of the broker's random parts.

GEN_RE = re.compile(r"amq\.gen-[A-Za-z0-9_\-]+")
CTAG_RE = re.compile(r"amq\.ctag-[A-Za-z0-9_\-]+")


def norm(value):
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return {"bytes_hex": value.hex()}
    if isinstance(value, str):
        value = value.replace(PREFIX, "")
        value = GEN_RE.sub("amq.gen-*", value)
        value = CTAG_RE.sub("amq.ctag-*", value)
        return value
    if isinstance(value, dict):
        return {norm(k): norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, datetime.datetime):
        return "<timestamp>"
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, pframe.Method):
        return method_dict(value.method)
    if isinstance(value, spec.BasicProperties):
        return props_dict(value)
    if hasattr(value, "NAME"):
        return method_dict(value)
    return repr(value)


def method_dict(method):
    out = {"method": method.NAME}
    for key, val in vars(method).items():
        out[key] = norm(val)
    return out


def props_dict(props):
    if props is None:
        return None
    out = {}
    for key in ("content_type", "content_encoding", "headers", "delivery_mode", "priority",
                "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                "type", "user_id", "app_id", "cluster_id"):
        val = getattr(props, key)
        if val is not None:
            out[key] = norm(val)
    return out


def delivery(method, props, body, consumer=None):
    """A delivery or get-ok as recorded in the output."""
    if method is None:
        return {"get": "empty"}
    out = method_dict(method)
    out["properties"] = props_dict(props)
    out["body"] = norm(body)
    if consumer is not None:
        out["consumer"] = consumer
    return out


def attempt(fn, *args, **kwargs):
    """Run one broker operation; record its result or how it was refused."""
    try:
        return {"ok": norm(fn(*args, **kwargs))}
    except ChannelClosedByBroker as e:
        return {"channel_close": [e.reply_code, norm(e.reply_text)]}
    except ConnectionClosedByBroker as e:
        return {"connection_close": [e.reply_code, norm(e.reply_text)]}
    except Exception as e:  # pylint: disable=broad-except
        return {"exception": type(e).__name__, "args": norm([str(a) for a in e.args])}


def body_of(result):
    """The body of a get recorded by attempt(get, ...), for short order listings."""
    ok = result.get("ok")
    if isinstance(ok, dict):
        if ok.get("get") == "empty":
            return "empty"
        if "body" in ok:
            return ok["body"] + ("(redelivered)" if ok.get("redelivered") else "")
    return result


# ---------------------------------------------------------------------------------------------
# Scenario context: connections and names to clean up.

class Ctx:
    def __init__(self, url):
        self.url = url
        self.params = pika.URLParameters(url)
        self.conns = []
        self.queues = []
        self.exchanges = []
        self.raws = []

    def conn(self, **overrides):
        params = pika.URLParameters(self.url)
        for key, val in overrides.items():
            setattr(params, key, val)
        c = pika.BlockingConnection(params)
        self.conns.append(c)
        return c

    def raw(self):
        r = Raw(self.params.host, self.params.port)
        self.raws.append(r)
        return r

    def q(self, logical):
        name = n(logical)
        self.queues.append(name)
        return name

    def x(self, logical):
        name = n(logical)
        self.exchanges.append(name)
        return name

    def cleanup(self):
        for r in self.raws:
            r.close()
        for c in self.conns:
            try:
                if c.is_open:
                    c.close()
            except Exception:  # pylint: disable=broad-except
                pass
        if not self.queues and not self.exchanges:
            return
        c = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            for name in self.queues:
                ch = c.channel()
                try:
                    ch.queue_delete(name)
                    ch.close()
                except Exception:  # pylint: disable=broad-except
                    pass
            for name in self.exchanges:
                ch = c.channel()
                try:
                    ch.exchange_delete(name)
                    ch.close()
                except Exception:  # pylint: disable=broad-except
                    pass
        finally:
            c.close()


def pump(conn, cond, timeout=WAIT):
    """Process events until cond() is true or the timeout passes; returns cond()."""
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        conn.process_data_events(time_limit=0.05)
    return cond()


def settle(conn, seconds=SETTLE):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conn.process_data_events(time_limit=0.05)


def get(ch, queue, auto_ack=False):
    return delivery(*ch.basic_get(queue, auto_ack=auto_ack))


def drain(ch, queue):
    """Get (auto-ack) every ready message; the list of bodies, "(redelivered)" appended."""
    bodies = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(norm(body) + ("(redelivered)" if method.redelivered else ""))


def confirmed_channel(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def collector(conn, ch, queue, tag, out, auto_ack=False, **kw):
    """Consume from queue with consumer tag n(tag); deliveries are appended to out."""
    def on_message(_ch, method, props, body):
        out.append(delivery(method, props, body, consumer=tag))
    return ch.basic_consume(queue, on_message, auto_ack=auto_ack, consumer_tag=n(tag), **kw)


# ---------------------------------------------------------------------------------------------
# Raw client: pika's frame codec over a plain socket, for what pika's API cannot show.

def _tvalue(b, i):
    """Decode one field value keeping its type letter: returns ([letter, value], next)."""
    t = chr(b[i])
    i += 1
    if t == "t":
        return [t, bool(b[i])], i + 1
    if t in "bB":
        return [t, struct.unpack_from(">b" if t == "b" else ">B", b, i)[0]], i + 1
    if t in "sUu":
        return [t, struct.unpack_from(">H" if t == "u" else ">h", b, i)[0]], i + 2
    if t in "Ii":
        return [t, struct.unpack_from(">i" if t == "I" else ">I", b, i)[0]], i + 4
    if t in "lL":
        return [t, struct.unpack_from(">q" if t == "l" else ">Q", b, i)[0]], i + 8
    if t == "f":
        return [t, struct.unpack_from(">f", b, i)[0]], i + 4
    if t == "d":
        return [t, struct.unpack_from(">d", b, i)[0]], i + 8
    if t == "D":
        scale, raw = struct.unpack_from(">Bi", b, i)
        return [t, [scale, raw]], i + 5
    if t == "T":
        return [t, "<timestamp>"], i + 8
    if t == "V":
        return [t, None], i
    if t in "Sx":
        size = struct.unpack_from(">I", b, i)[0]
        raw = b[i + 4:i + 4 + size]
        return [t, raw.decode(errors="replace")], i + 4 + size
    if t == "F":
        size = struct.unpack_from(">I", b, i)[0]
        return [t, ttable(b[i + 4:i + 4 + size])], i + 4 + size
    if t == "A":
        size = struct.unpack_from(">I", b, i)[0]
        j, end, items = i + 4, i + 4 + size, []
        while j < end:
            item, j = _tvalue(b, j)
            items.append(item)
        return [t, items], end
    raise ValueError(f"unknown field type {t!r}")


def ttable(b):
    """Decode a field table (without its length prefix) keeping type letters, in wire order."""
    out, i = [], 0
    while i < len(b):
        klen = b[i]
        key = b[i + 1:i + 1 + klen].decode()
        val, i = _tvalue(b, i + 1 + klen)
        out.append([key, val])
    return out


class Raw:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=WAIT)
        self.buf = b""
        self.raw_frames = []  # payload bytes of every method frame, for typed decoding
        self.raw_headers = []  # payload bytes of every content header frame

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send_bytes(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the socket: the next recv says "eof"

    def send(self, ch, method, content=None):
        data = pframe.Method(ch, method).marshal()
        if content is not None:
            props, body = content
            data += pframe.Header(ch, len(body), props).marshal()
            if body:
                data += pframe.Body(ch, body).marshal()
        self.send_bytes(data)

    def recv(self, timeout=WAIT):
        """The next frame, or "eof" if the server closed the socket, or "timeout"."""
        end = time.monotonic() + timeout
        while True:
            if self.buf:
                used, fr = pframe.decode_frame(self.buf)
                if used:
                    if isinstance(fr, pframe.Method):
                        self.raw_frames.append(self.buf[7:used - 1])
                    elif isinstance(fr, pframe.Header):
                        self.raw_headers.append(self.buf[7:used - 1])
                    self.buf = self.buf[used:]
                    return fr
            left = end - time.monotonic()
            if left <= 0:
                return "timeout"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return "timeout"
            except ConnectionResetError:
                return "eof"
            if not data:
                return "eof"
            self.buf += data

    def recv_method(self, timeout=WAIT):
        """Next frame that is not a heartbeat."""
        while True:
            fr = self.recv(timeout)
            if not isinstance(fr, pframe.Heartbeat):
                return fr

    def eof_delay(self, timeout=10.0):
        """Whole seconds until the server closes the socket (frames before it are dropped)."""
        t0 = time.monotonic()
        while True:
            fr = self.recv(timeout)
            if isinstance(fr, str):
                return {fr + "_after_seconds": round(time.monotonic() - t0)}

    def until(self, names, timeout=WAIT):
        """Frames (described) up to and including a method whose NAME is in names, or eof."""
        seen = []
        while True:
            fr = self.recv_method(timeout)
            d = describe(fr)
            seen.append(d)
            if isinstance(fr, str):
                return seen
            if isinstance(fr, pframe.Method) and fr.method.NAME in names:
                return seen

    def handshake(self, user="guest", password="guest", vhost="/", channel_max=None,
                  frame_max=None, heartbeat=0, capabilities=None, open_vhost=True):
        """Run the connection handshake; returns the described frames received.

        channel_max and frame_max default to the server's proposal (RabbitMQ 3.10 refuses a
        tune-ok channel_max of 0 when it proposed 2047)."""
        if capabilities is None:
            # no "connection.blocked": a memory alarm set by someone else would otherwise
            # put connection.blocked frames into the recorded sequences
            capabilities = {"authentication_failure_close": True,
                            "consumer_cancel_notify": True, "publisher_confirms": True,
                            "basic.nack": True}
        self.send_bytes(b"AMQP\x00\x00\x09\x01")
        seen = [describe(self.recv_method())]
        resp = b"\x00" + user.encode() + b"\x00" + password.encode()
        self.send(0, spec.Connection.StartOk(
            client_properties={"product": "scenarios", "capabilities": capabilities},
            mechanism="PLAIN", response=resp, locale="en_US"))
        fr = self.recv_method()
        seen.append(describe(fr))
        if not (isinstance(fr, pframe.Method) and fr.method.NAME == "Connection.Tune"):
            return seen
        if channel_max is None:
            channel_max = fr.method.channel_max
        if frame_max is None:
            frame_max = fr.method.frame_max
        self.send(0, spec.Connection.TuneOk(channel_max=channel_max, frame_max=frame_max,
                                            heartbeat=heartbeat))
        if open_vhost:
            self.send(0, spec.Connection.Open(virtual_host=vhost))
            seen += self.until({"Connection.OpenOk", "Connection.Close"})
        return seen

    def open_channel(self, ch):
        self.send(ch, spec.Channel.Open())
        return self.until({"Channel.OpenOk", "Channel.Close", "Connection.Close"})


def typed_headers(header_payload):
    """The headers property of a content header frame payload, with type letters."""
    # class-id(2) weight(2) body-size(8) property-flags(2), then the present properties in
    # order: content-type (bit 15, shortstr), content-encoding (bit 14, shortstr), headers (13)
    flags = struct.unpack_from(">H", header_payload, 12)[0]
    i = 14
    for bit in (15, 14):
        if flags & (1 << bit):
            i += 1 + header_payload[i]
    if not flags & (1 << 13):
        return None
    size = struct.unpack_from(">I", header_payload, i)[0]
    return ttable(header_payload[i + 4:i + 4 + size])


def describe(fr):
    if isinstance(fr, str):
        return fr
    if isinstance(fr, pframe.Method):
        d = method_dict(fr.method)
        d["channel"] = fr.channel_number
        return d
    if isinstance(fr, pframe.Header):
        return {"frame": "header", "channel": fr.channel_number, "body_size": fr.body_size,
                "properties": props_dict(fr.properties)}
    if isinstance(fr, pframe.Body):
        return {"frame": "body", "channel": fr.channel_number, "body": norm(fr.fragment)}
    if isinstance(fr, pframe.Heartbeat):
        return {"frame": "heartbeat"}
    return repr(fr)


# ---------------------------------------------------------------------------------------------
# Scenarios. Each takes a Ctx and returns a dict of observations.

SCENARIOS = []


def scenario(fn):
    SCENARIOS.append((fn.__name__, fn))
    return fn


def declare_ok(frame_):
    return method_dict(frame_.method)


@scenario
def connection_start_and_tune(ctx):
    r = ctx.raw()
    r.send_bytes(b"AMQP\x00\x00\x09\x01")
    start = r.recv_method()
    payload = r.raw_frames[-1]
    # class-id(2) method-id(2) version-major(1) version-minor(1) server-properties(table)
    major, minor = payload[4], payload[5]
    tsize = struct.unpack_from(">I", payload, 6)[0]
    props = ttable(payload[10:10 + tsize])
    for i, (key, val) in enumerate(props):
        if key == "version" or key == "cluster_name":
            props[i] = [key, [val[0], "<" + key + ">"]]
    # the version is recorded separately so two brokers' lines differ only there.
    # RabbitMQ lists its SASL mechanisms in an order that changes from one boot to the next
    # ("AMQPLAIN PLAIN" or "PLAIN AMQPLAIN"), so the set is recorded, sorted.
    mechanisms = " ".join(sorted(norm(start.method.mechanisms).split()))
    out = {"version_major": major, "version_minor": minor, "server_properties": props,
           "mechanisms": mechanisms, "locales": norm(start.method.locales),
           "server_version": norm(start.method.server_properties.get("version"))}
    resp = b"\x00guest\x00guest"
    r.send(0, spec.Connection.StartOk(client_properties={}, mechanism="PLAIN",
                                      response=resp, locale="en_US"))
    out["tune"] = describe(r.recv_method())
    r.send(0, spec.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=0))
    r.send(0, spec.Connection.Open(virtual_host="/"))
    out["open"] = r.until({"Connection.OpenOk", "Connection.Close"})
    r.send(0, spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    out["close"] = r.until({"Connection.CloseOk"})
    return out


@scenario
def connection_protocol_header_wrong(ctx):
    """Server answers a bad protocol header with its own header, then closes."""
    out = {}
    for label, header in (("amqp_0_9", b"AMQP\x00\x00\x09\x00"), ("amqp_1_0", b"AMQP\x00\x01\x00\x00"),
                          ("http", b"GET / HTTP/1.1\r\n\r\n")):
        r = ctx.raw()
        r.send_bytes(header)
        data = b""
        end = time.monotonic() + WAIT
        while time.monotonic() < end:
            try:
                chunk = r.sock.recv(100)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
        out[label] = {"reply_hex": data.hex()}
    return out


@scenario
def queue_redeclare_durable(ctx):
    c = ctx.conn()
    q = ctx.q("q")
    ch = c.channel()
    out = {"declare": declare_ok(ch.queue_declare(q, durable=False))}
    out["same_again"] = attempt(lambda: declare_ok(ch.queue_declare(q, durable=False)))
    out["durable_true"] = attempt(ch.queue_declare, q, durable=True)
    q2 = ctx.q("qd")
    ch = c.channel()
    ch.queue_declare(q2, durable=True)
    out["durable_false_on_durable"] = attempt(ch.queue_declare, q2, durable=False)
    return out


@scenario
def queue_redeclare_arguments(ctx):
    c = ctx.conn()
    q = ctx.q("q")
    ch = c.channel()
    out = {"declare": declare_ok(ch.queue_declare(q, arguments={"x-message-ttl": 1000}))}
    cases = [
        ("ttl_other_value", {"x-message-ttl": 2000}),
        ("ttl_absent", None),
        ("ttl_same_value_long_type", {"x-message-ttl": long(1000)}),
        ("ttl_same_plus_extra_x_arg", {"x-message-ttl": 1000, "x-max-length": 10}),
        ("ttl_same_plus_custom_arg", {"x-message-ttl": 1000, "custom": "v"}),
        ("ttl_as_string", {"x-message-ttl": "1000"}),
    ]
    for label, args in cases:
        ch = c.channel() if not ch.is_open else ch
        out[label] = attempt(lambda a=args: declare_ok(ch.queue_declare(q, arguments=a)))
    q2 = ctx.q("plain")
    ch = c.channel()
    ch.queue_declare(q2)
    for label, args in (("extra_x_max_length", {"x-max-length": 10}),
                        ("extra_custom_arg", {"custom": "v"}),
                        ("extra_x_dead_letter_exchange", {"x-dead-letter-exchange": "dlx"}),
                        ("extra_x_queue_type_classic", {"x-queue-type": "classic"}),
                        ("extra_x_queue_type_quorum", {"x-queue-type": "quorum"})):
        ch = c.channel() if not ch.is_open else ch
        out["plain_" + label] = attempt(lambda a=args: declare_ok(ch.queue_declare(q2, arguments=a)))
    return out


@scenario
def queue_redeclare_auto_delete(ctx):
    c = ctx.conn()
    q = ctx.q("q")
    ch = c.channel()
    ch.queue_declare(q, auto_delete=False)
    out = {"auto_delete_true": attempt(ch.queue_declare, q, auto_delete=True)}
    q2 = ctx.q("qa")
    ch = c.channel()
    ch.queue_declare(q2, auto_delete=True)
    out["auto_delete_false_on_auto_delete"] = attempt(ch.queue_declare, q2, auto_delete=False)
    return out


@scenario
def queue_redeclare_exclusive(ctx):
    c = ctx.conn()
    q = ctx.q("q")
    ch = c.channel()
    ch.queue_declare(q, exclusive=False)
    out = {"exclusive_true_on_shared_same_conn": attempt(
        lambda: declare_ok(ch.queue_declare(q, exclusive=True)))}
    q2 = ctx.q("qx")
    ch = c.channel()
    ch.queue_declare(q2, exclusive=True)
    out["exclusive_false_on_exclusive_same_conn"] = attempt(
        lambda: declare_ok(ch.queue_declare(q2, exclusive=False)))
    ch = c.channel() if not ch.is_open else ch
    out["exclusive_passive_same_conn"] = attempt(
        lambda: declare_ok(ch.queue_declare(q2, passive=True)))
    return out


@scenario
def queue_declare_invalid_arguments(ctx):
    c = ctx.conn()
    out = {}
    cases = [
        ("ttl_negative", {"x-message-ttl": -1}),
        ("ttl_string", {"x-message-ttl": "abc"}),
        ("max_length_negative", {"x-max-length": -1}),
        ("max_length_string", {"x-max-length": "ten"}),
        ("overflow_bad", {"x-overflow": "nope"}),
        ("queue_type_bad", {"x-queue-type": "nope"}),
        ("expires_zero", {"x-expires": 0}),
        ("max_priority_300", {"x-max-priority": 300}),
        ("dlx_routing_key_without_dlx", {"x-dead-letter-routing-key": "k"}),
    ]
    for label, args in cases:
        q = ctx.q("q-" + label)
        ch = c.channel()
        out[label] = attempt(lambda a=args, q=q: declare_ok(ch.queue_declare(q, arguments=a)))
    return out


@scenario
def exchange_redeclare(ctx):
    c = ctx.conn()
    x = ctx.x("x")
    ch = c.channel()
    out = {"declare": attempt(ch.exchange_declare, x, "direct")}
    out["same_again"] = attempt(ch.exchange_declare, x, "direct")
    out["other_type"] = attempt(ch.exchange_declare, x, "fanout")
    ch = c.channel()
    out["other_durable"] = attempt(ch.exchange_declare, x, "direct", durable=True)
    ch = c.channel()
    out["other_auto_delete"] = attempt(ch.exchange_declare, x, "direct", auto_delete=True)
    ch = c.channel()
    out["other_internal"] = attempt(ch.exchange_declare, x, "direct", internal=True)
    ch = c.channel()
    out["extra_argument"] = attempt(ch.exchange_declare, x, "direct",
                                    arguments={"alternate-exchange": "ae"})
    ch = c.channel()
    out["passive_other_type"] = attempt(ch.exchange_declare, x, "fanout", passive=True)
    ch = c.channel()
    out["invalid_type"] = attempt(ch.exchange_declare, ctx.x("bad"), "nope")
    return out


@scenario
def passive_declare_missing(ctx):
    c = ctx.conn()
    ch = c.channel()
    out = {"queue": attempt(ch.queue_declare, n("missing-q"), passive=True)}
    ch = c.channel()
    out["exchange"] = attempt(ch.exchange_declare, n("missing-x"), passive=True)
    ch = c.channel()
    out["exchange_amq_direct"] = attempt(ch.exchange_declare, "amq.direct", passive=True)
    ch = c.channel()
    out["exchange_default"] = attempt(ch.exchange_declare, "", passive=True)
    ch = c.channel()
    q = ctx.q("exists")
    ch.queue_declare(q)
    confirmed_channel(c).basic_publish("", q, b"m")
    out["queue_existing_with_message"] = attempt(
        lambda: declare_ok(ch.queue_declare(q, passive=True)))
    return out


@scenario
def reserved_amq_names(ctx):
    c = ctx.conn()
    ch = c.channel()
    out = {"queue_declare": attempt(ch.queue_declare, "amq." + n("foo"))}
    ch = c.channel()
    out["queue_declare_passive"] = attempt(ch.queue_declare, "amq." + n("foo"), passive=True)
    ch = c.channel()
    out["exchange_declare"] = attempt(ch.exchange_declare, "amq." + n("foo"), "direct")
    ch = c.channel()
    out["exchange_declare_passive"] = attempt(ch.exchange_declare, "amq." + n("foo"), "direct",
                                              passive=True)
    ch = c.channel()
    out["redeclare_amq_direct_same"] = attempt(ch.exchange_declare, "amq.direct", "direct",
                                               durable=True)
    ch = c.channel()
    out["delete_amq_direct"] = attempt(ch.exchange_delete, "amq.direct")
    return out


@scenario
def exclusive_queue_other_connection(ctx):
    c1 = ctx.conn()
    c2 = ctx.conn()
    q = ctx.q("q")
    ch1 = c1.channel()
    ch1.queue_declare(q, exclusive=True)
    confirmed_channel(c1).basic_publish("", q, b"m")
    x = ctx.x("x")
    ch1.exchange_declare(x, "direct")
    out = {}
    ops = [
        ("passive_declare", lambda ch: declare_ok(ch.queue_declare(q, passive=True))),
        ("declare_same", lambda ch: declare_ok(ch.queue_declare(q, exclusive=True))),
        ("declare_non_exclusive", lambda ch: declare_ok(ch.queue_declare(q))),
        ("consume", lambda ch: ch.basic_consume(q, lambda *a: None, consumer_tag=n("c"))),
        ("get", lambda ch: get(ch, q)),
        ("purge", lambda ch: ch.queue_purge(q)),
        ("bind", lambda ch: ch.queue_bind(q, x, "k")),
        ("unbind", lambda ch: ch.queue_unbind(q, x, "k")),
        ("delete", lambda ch: ch.queue_delete(q)),
    ]
    for label, op in ops:
        ch = c2.channel()
        out[label] = attempt(op, ch)
    ch = c2.channel()
    ch.confirm_delivery()
    out["publish_confirmed"] = attempt(ch.basic_publish, "", q, b"m2")
    out["count_seen_by_owner"] = declare_ok(ch1.queue_declare(q, passive=True))
    c1.close()
    ch = c2.channel()
    out["after_owner_closed_passive"] = attempt(ch.queue_declare, q, passive=True)
    return out


@scenario
def exclusive_consumer(ctx):
    c = ctx.conn()
    q = ctx.q("q")
    ch1 = c.channel()
    ch1.queue_declare(q)
    out = {"exclusive_first": attempt(ch1.basic_consume, q, lambda *a: None, exclusive=True,
                                      consumer_tag=n("c1"))}
    ch2 = c.channel()
    out["second_consumer"] = attempt(ch2.basic_consume, q, lambda *a: None, consumer_tag=n("c2"))
    ch2 = c.channel()
    out["second_exclusive_consumer"] = attempt(ch2.basic_consume, q, lambda *a: None,
                                               exclusive=True, consumer_tag=n("c3"))
    ch1.basic_cancel(n("c1"))
    q2 = ctx.q("q2")
    ch = c.channel()
    ch.queue_declare(q2)
    ch.basic_consume(q2, lambda *a: None, consumer_tag=n("c4"))
    ch2 = c.channel()
    out["exclusive_after_normal"] = attempt(ch2.basic_consume, q2, lambda *a: None,
                                            exclusive=True, consumer_tag=n("c5"))
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    r.send(1, spec.Basic.Consume(queue=q2, consumer_tag=n("dup")))
    r.until({"Basic.ConsumeOk"})
    r.send(1, spec.Basic.Consume(queue=q2, consumer_tag=n("dup")))
    out["raw_duplicate_consumer_tag_same_channel"] = r.until({"Connection.Close",
                                                              "Channel.Close"})
    # The tag is checked before the queue: a tag in use, on a queue that does not exist,
    # is refused for the tag (530), not for the queue (404).
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    r.send(1, spec.Basic.Consume(queue=q2, consumer_tag=n("dup")))
    r.until({"Basic.ConsumeOk"})
    r.send(1, spec.Basic.Consume(queue=n("missing-q"), consumer_tag=n("dup")))
    out["raw_duplicate_consumer_tag_missing_queue"] = r.until({"Connection.Close",
                                                               "Channel.Close"})
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    r.send(1, spec.Basic.Cancel(consumer_tag=n("unknown")))
    out["raw_cancel_unknown_tag"] = r.until({"Basic.CancelOk", "Connection.Close",
                                             "Channel.Close"})
    return out


@scenario
def publish_missing_exchange(ctx):
    c = ctx.conn()
    ch = c.channel()
    ch.basic_publish(n("missing-x"), "k", b"m")
    out = {"next_sync_call": attempt(ch.basic_qos, prefetch_count=1)}
    ch = confirmed_channel(c)
    out["with_confirms"] = attempt(ch.basic_publish, n("missing-x"), "k", b"m")
    return out


@scenario
def ack_errors(ctx):
    c = ctx.conn()
    q = ctx.q("q")
    ch = c.channel()
    ch.queue_declare(q)
    pub = confirmed_channel(c)
    for b in (b"a", b"b", b"c"):
        pub.basic_publish("", q, b)
    ch.basic_ack(99)
    out = {"ack_unknown_tag": attempt(ch.basic_qos, prefetch_count=0)}
    ch = c.channel()
    ch.basic_nack(42, requeue=True)
    out["nack_unknown_tag"] = attempt(ch.basic_qos, prefetch_count=0)
    ch = c.channel()
    ch.basic_reject(43, requeue=True)
    out["reject_unknown_tag"] = attempt(ch.basic_qos, prefetch_count=0)
    ch = c.channel()
    m = get(ch, q)
    ch.basic_ack(m["delivery_tag"])
    ch.basic_ack(m["delivery_tag"])
    out["double_ack"] = attempt(ch.basic_qos, prefetch_count=0)
    ch = c.channel()
    m = get(ch, q)
    ch.basic_ack(m["delivery_tag"] + 5, multiple=True)
    out["ack_multiple_beyond_last"] = attempt(ch.basic_qos, prefetch_count=0)
    ch = c.channel()
    ch.basic_ack(0, multiple=True)
    out["ack_multiple_zero_nothing_outstanding"] = attempt(ch.basic_qos, prefetch_count=0)
    ch = c.channel()
    ch.basic_ack(0, multiple=False)
    out["ack_zero_single"] = attempt(ch.basic_qos, prefetch_count=0)
    ch = c.channel()
    m = get(ch, q, auto_ack=True)
    ch.basic_ack(m["delivery_tag"])
    out["ack_of_auto_acked_get"] = attempt(ch.basic_qos, prefetch_count=0)
    return out


@scenario
def qos_prefetch_size(ctx):
    c = ctx.conn()
    ch = c.channel()
    out = {"prefetch_size_1": attempt(ch.basic_qos, prefetch_size=1)}
    out["connection_open_after"] = c.is_open
    c = ctx.conn()
    ch = c.channel()
    out["prefetch_count_65535"] = attempt(ch.basic_qos, prefetch_count=65535)
    out["global_prefetch"] = attempt(ch.basic_qos, prefetch_count=5, global_qos=True)
    return out


@scenario
def publish_immediate(ctx):
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    q = ctx.q("q")
    r.send(1, spec.Queue.Declare(queue=q))
    r.until({"Queue.DeclareOk"})
    r.send(1, spec.Basic.Publish(exchange="", routing_key=q, mandatory=False, immediate=True),
           (spec.BasicProperties(), b"m"))
    out = {"immediate_true": r.until({"Connection.Close", "Channel.Close"})}
    r.send(0, spec.Connection.CloseOk())
    out["after_close_ok"] = describe(r.recv(1.0))
    return out


@scenario
def queue_delete_conditions(ctx):
    c = ctx.conn()
    q = ctx.q("q")
    ch = c.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, consumer_tag=n("c"))
    ch2 = c.channel()
    out = {"if_unused_with_consumer": attempt(ch2.queue_delete, q, if_unused=True)}
    q2 = ctx.q("q2")
    ch2 = c.channel()
    ch2.queue_declare(q2)
    ch2.confirm_delivery()
    ch2.basic_publish("", q2, b"m1")
    ch2.basic_publish("", q2, b"m2")
    out["if_empty_with_messages"] = attempt(ch2.queue_delete, q2, if_empty=True)
    ch2 = c.channel()
    out["if_unused_without_consumer_with_messages"] = attempt(
        lambda: declare_ok(ch2.queue_delete(q2, if_unused=True)))
    q3 = ctx.q("q3")
    ch2.queue_declare(q3)
    confirmed_channel(c).basic_publish("", q3, b"m1")
    ch2.basic_get(q3)  # held unacked
    out["if_empty_with_one_unacked"] = attempt(
        lambda: declare_ok(ch2.queue_delete(q3, if_empty=True)))
    ch2 = c.channel()
    out["delete_missing"] = attempt(lambda: declare_ok(ch2.queue_delete(n("missing"))))
    ch2 = c.channel()
    out["purge_missing"] = attempt(ch2.queue_purge, n("missing"))
    return out


@scenario
def exchange_delete_conditions(ctx):
    c = ctx.conn()
    x = ctx.x("x")
    q = ctx.q("q")
    ch = c.channel()
    ch.exchange_declare(x, "direct")
    ch.queue_declare(q)
    ch.queue_bind(q, x, "k")
    out = {"if_unused_with_binding": attempt(ch.exchange_delete, x, if_unused=True)}
    x2 = ctx.x("x2")
    ch = c.channel()
    ch.exchange_declare(x2, "fanout")
    ch.exchange_bind(x2, x, "k")  # x2 is only a destination
    out["if_unused_only_destination"] = attempt(ch.exchange_delete, x2, if_unused=True)
    ch = c.channel()
    out["delete_missing"] = attempt(ch.exchange_delete, n("missing-x"))
    ch = c.channel()
    out["delete_missing_if_unused"] = attempt(ch.exchange_delete, n("missing-x"), if_unused=True)
    return out


@scenario
def default_exchange_operations(ctx):
    c = ctx.conn()
    q = ctx.q("q")
    ch = c.channel()
    ch.queue_declare(q)
    out = {"delete": attempt(ch.exchange_delete, "")}
    ch = c.channel()
    out["bind_queue"] = attempt(ch.queue_bind, q, "", "k")
    ch = c.channel()
    out["unbind_queue"] = attempt(ch.queue_unbind, q, "", q)
    ch = c.channel()
    out["declare_direct"] = attempt(ch.exchange_declare, "", "direct")
    ch = c.channel()
    out["declare_fanout"] = attempt(ch.exchange_declare, "", "fanout")
    x = ctx.x("x")
    ch = c.channel()
    ch.exchange_declare(x, "fanout")
    out["exchange_bind_source_default"] = attempt(ch.exchange_bind, x, "", "k")
    ch = c.channel()
    out["exchange_bind_destination_default"] = attempt(ch.exchange_bind, "", x, "k")
    return out


@scenario
def bind_missing(ctx):
    c = ctx.conn()
    q = ctx.q("q")
    x = ctx.x("x")
    ch = c.channel()
    ch.queue_declare(q)
    ch.exchange_declare(x, "direct")
    out = {"queue_to_missing_exchange": attempt(ch.queue_bind, q, n("missing-x"), "k")}
    ch = c.channel()
    out["missing_queue_to_exchange"] = attempt(ch.queue_bind, n("missing-q"), x, "k")
    ch = c.channel()
    out["missing_queue_to_missing_exchange"] = attempt(ch.queue_bind, n("missing-q"),
                                                       n("missing-x"), "k")
    ch = c.channel()
    out["unbind_not_bound"] = attempt(ch.queue_unbind, q, x, "nope")
    ch = c.channel()
    out["unbind_missing_exchange"] = attempt(ch.queue_unbind, q, n("missing-x"), "k")
    ch = c.channel()
    out["exchange_bind_missing_source"] = attempt(ch.exchange_bind, x, n("missing-x"), "k")
    ch = c.channel()
    out["exchange_bind_missing_destination"] = attempt(ch.exchange_bind, n("missing-x"), x, "k")
    ch = c.channel()
    out["bind_twice"] = [attempt(ch.queue_bind, q, x, "k"), attempt(ch.queue_bind, q, x, "k")]
    return out


@scenario
def consume_missing_queue(ctx):
    c = ctx.conn()
    ch = c.channel()
    out = {"consume": attempt(ch.basic_consume, n("missing-q"), lambda *a: None,
                              consumer_tag=n("c"))}
    ch = c.channel()
    out["get"] = attempt(get, ch, n("missing-q"))
    ch = c.channel()
    out["cancel_unknown_tag"] = attempt(ch.basic_cancel, n("unknown"))
    return out


@scenario
def quorum_queue_invalid_properties(ctx):
    c = ctx.conn()
    args = {"x-queue-type": "quorum"}
    out = {}
    for label, kw in (("non_durable", {"durable": False}),
                      ("exclusive", {"durable": True, "exclusive": True}),
                      ("auto_delete", {"durable": True, "auto_delete": True}),
                      ("max_priority", {"durable": True, "arguments": dict(args, **{"x-max-priority": 5})}),
                      ("overflow_reject_publish_dlx",
                       {"durable": True, "arguments": dict(args, **{"x-overflow": "reject-publish-dlx"})}),
                      ("ok", {"durable": True})):
        ch = c.channel()
        q = ctx.q("qq-" + label)
        kw.setdefault("arguments", args)
        out[label] = attempt(lambda q=q, kw=kw: declare_ok(ch.queue_declare(q, **kw)))
    return out


@scenario
def quorum_queue_global_qos(ctx):
    c = ctx.conn()
    q = ctx.q("qq")
    ch = c.channel()
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    ch = c.channel()
    ch.basic_qos(prefetch_count=10, global_qos=True)
    out = {"consume_after_global_qos": attempt(ch.basic_consume, q, lambda *a: None,
                                               consumer_tag=n("c"))}
    out["connection_open_after"] = c.is_open
    c = ctx.conn()
    ch = c.channel()
    ch.basic_qos(prefetch_count=10, global_qos=False)
    out["consume_after_per_consumer_qos"] = attempt(ch.basic_consume, q, lambda *a: None,
                                                    consumer_tag=n("c2"))
    return out


@scenario
def tx_and_confirm_modes(ctx):
    c = ctx.conn()
    ch = c.channel()
    ch.tx_select()
    out = {"confirm_after_tx": attempt(ch.confirm_delivery)}
    ch = c.channel()
    ch.confirm_delivery()
    out["tx_after_confirm"] = attempt(ch.tx_select)
    ch = c.channel()
    out["tx_commit_without_select"] = attempt(ch.tx_commit)
    ch = c.channel()
    out["tx_rollback_without_select"] = attempt(ch.tx_rollback)
    ch = c.channel()
    ch.tx_select()
    out["tx_select_twice"] = attempt(ch.tx_select)
    q = ctx.q("q")
    ch = c.channel()
    ch.queue_declare(q)
    ch.tx_select()
    ch.basic_publish("", q, b"t1")
    out["tx_count_before_commit"] = declare_ok(ch.queue_declare(q, passive=True))
    ch.tx_commit()
    out["tx_count_after_commit"] = declare_ok(ch.queue_declare(q, passive=True))
    ch.basic_publish("", q, b"t2")
    ch.tx_rollback()
    out["tx_count_after_rollback"] = declare_ok(ch.queue_declare(q, passive=True))
    return out


@scenario
def mandatory_unroutable_with_confirms(ctx):
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    r.send(1, spec.Confirm.Select(nowait=False))
    out = {"confirm_select": r.until({"Confirm.SelectOk"})}
    props = spec.BasicProperties(content_type="text/plain", message_id="m1")
    r.send(1, spec.Basic.Publish(exchange="amq.direct", routing_key=n("nowhere"), mandatory=True),
           (props, b"hello"))
    out["mandatory_unroutable_direct"] = r.until({"Basic.Ack", "Basic.Nack"})
    r.send(1, spec.Basic.Publish(exchange="", routing_key=n("missing-q"), mandatory=True),
           (props, b"hello"))
    out["mandatory_unroutable_default_exchange"] = r.until({"Basic.Ack", "Basic.Nack"})
    r.send(1, spec.Basic.Publish(exchange="amq.direct", routing_key=n("nowhere"), mandatory=False),
           (props, b"hello"))
    out["not_mandatory_unroutable"] = r.until({"Basic.Ack", "Basic.Nack"})
    r.send(1, spec.Basic.Publish(exchange="amq.direct", routing_key=n("nowhere"), mandatory=True),
           (props, b""))
    out["mandatory_unroutable_empty_body"] = r.until({"Basic.Ack", "Basic.Nack"})
    # pika's view of the same
    c = ctx.conn()
    ch = confirmed_channel(c)
    out["pika_unroutable"] = attempt(ch.basic_publish, "amq.direct", n("nowhere"), b"x",
                                     mandatory=True)
    return out


def _requeue_order(ctx, queue_args, settle_op):
    c = ctx.conn()
    q = ctx.q("q")
    ch = c.channel()
    durable = bool(queue_args)
    ch.queue_declare(q, durable=durable, arguments=queue_args)
    pub = confirmed_channel(c)
    for b in (b"A", b"B", b"C"):
        pub.basic_publish("", q, b)
    out = {}
    a = get(ch, q)
    out["first_get"] = a
    settle_op(ch, a["delivery_tag"])
    out["after_requeue_A"] = [body_of(attempt(get, ch, q)) for _ in range(1)]
    # now A (redelivered) is held unacked again; get B too, then requeue both with one nack
    b = get(ch, q)
    out["second_get"] = body_of({"ok": b})
    ch.basic_nack(b["delivery_tag"], multiple=True, requeue=True)
    gets = [get(ch, q, auto_ack=True) for _ in range(4)]
    out["after_nack_multiple"] = [body_of({"ok": g}) for g in gets]
    out["tags"] = [g.get("delivery_tag") for g in gets]
    out["message_counts"] = [g.get("message_count") for g in gets]
    # requeue in reverse order: get X,Y,Z, reject Z then Y then X
    for b2 in (b"X", b"Y", b"Z"):
        pub.basic_publish("", q, b2)
    held = [get(ch, q) for _ in range(3)]
    for h in reversed(held):
        ch.basic_reject(h["delivery_tag"], requeue=True)
    out["after_reject_reverse"] = drain(ch, q)
    return out


@scenario
def reject_requeue_order_classic(ctx):
    return _requeue_order(ctx, None, lambda ch, tag: ch.basic_reject(tag, requeue=True))


@scenario
def nack_requeue_order_classic(ctx):
    return _requeue_order(ctx, None, lambda ch, tag: ch.basic_nack(tag, requeue=True))


@scenario
def reject_requeue_order_quorum(ctx):
    return _requeue_order(ctx, {"x-queue-type": "quorum"},
                          lambda ch, tag: ch.basic_reject(tag, requeue=True))


def _close_with_unacked(ctx, queue_args):
    c = ctx.conn()
    q = ctx.q("q")
    ch = c.channel()
    ch.queue_declare(q, durable=bool(queue_args), arguments=queue_args)
    pub = confirmed_channel(c)
    for b in (b"A", b"B", b"C", b"D", b"E"):
        pub.basic_publish("", q, b)
    got = [get(ch, q) for _ in range(3)]
    ch.basic_ack(got[1]["delivery_tag"])  # ack B, leave A and C unacked
    out = {"held": [g["body"] for g in got], "acked": "B"}
    ch.close()
    ch2 = c.channel()
    gets = [get(ch2, q, auto_ack=True) for _ in range(5)]
    out["after_close"] = [body_of({"ok": g}) for g in gets]
    # same with a consumer holding the messages
    for b in (b"A", b"B", b"C", b"D", b"E"):
        pub.basic_publish("", q, b)
    ch3 = c.channel()
    ch3.basic_qos(prefetch_count=2)
    seen = []
    collector(c, ch3, q, "c", seen)
    pump(c, lambda: len(seen) >= 2)
    settle(c)
    out["consumer_held"] = [s["body"] for s in seen]
    ch3.close()
    out["after_consumer_channel_close"] = drain(ch2, q)
    return out


@scenario
def close_channel_unacked_classic(ctx):
    return _close_with_unacked(ctx, None)


@scenario
def close_channel_unacked_quorum(ctx):
    return _close_with_unacked(ctx, {"x-queue-type": "quorum"})


@scenario
def round_robin_prefetch_1(ctx):
    c = ctx.conn()
    q = ctx.q("q")
    ch = c.channel()
    ch.queue_declare(q)
    ch.basic_qos(prefetch_count=1)
    seen = []
    collector(c, ch, q, "c1", seen)
    collector(c, ch, q, "c2", seen)
    pub = confirmed_channel(c)
    for i in range(1, 7):
        pub.basic_publish("", q, f"m{i}".encode())
    pump(c, lambda: len(seen) >= 2)
    settle(c)
    out = {"initial": [[s["consumer"], s["body"], s["delivery_tag"]] for s in seen]}
    steps = []
    # ack the oldest unacked delivery of c1, then of c2, alternately, recording what arrives
    for i in range(4):
        who = "c1" if i % 2 == 0 else "c2"
        pending = [s for s in seen if s["consumer"] == who and not s.get("acked")]
        if not pending:
            steps.append({"ack": who, "nothing_pending": True})
            continue
        pending[0]["acked"] = True
        ch.basic_ack(pending[0]["delivery_tag"])
        before = len(seen)
        pump(c, lambda b=before: len(seen) > b)
        settle(c)
        steps.append({"ack": [who, pending[0]["body"]],
                      "then": [[s["consumer"], s["body"], s["delivery_tag"]] for s in seen[before:]]})
    out["steps"] = steps
    # and without prefetch, auto-ack: the plain rotation
    q2 = ctx.q("q2")
    ch2 = c.channel()
    ch2.queue_declare(q2)
    seen2 = []
    collector(c, ch2, q2, "a", seen2, auto_ack=True)
    collector(c, ch2, q2, "b", seen2, auto_ack=True)
    collector(c, ch2, q2, "c", seen2, auto_ack=True)
    for i in range(1, 8):
        pub.basic_publish("", q2, f"n{i}".encode())
    pump(c, lambda: len(seen2) >= 7)
    out["three_consumers_auto_ack"] = [[s["consumer"], s["body"]] for s in seen2]
    return out


@scenario
def max_length_overflow(ctx):
    c = ctx.conn()
    out = {}
    q = ctx.q("drop-head")
    ch = c.channel()
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "drop-head"})
    pub = confirmed_channel(c)
    out["drop_head_publishes"] = [attempt(pub.basic_publish, "", q, b) for b in (b"A", b"B", b"C")]
    out["drop_head_count"] = declare_ok(ch.queue_declare(q, passive=True))
    out["drop_head_contents"] = drain(ch, q)
    q = ctx.q("default")
    ch.queue_declare(q, arguments={"x-max-length": 2})
    for b in (b"A", b"B", b"C"):
        pub.basic_publish("", q, b)
    out["default_overflow_contents"] = drain(ch, q)
    q = ctx.q("reject-publish")
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    out["reject_publish_confirmed"] = [attempt(pub.basic_publish, "", q, b)
                                       for b in (b"A", b"B", b"C")]
    plain = c.channel()
    plain.basic_publish("", q, b"D")
    out["reject_publish_count"] = declare_ok(ch.queue_declare(q, passive=True))
    out["reject_publish_contents"] = drain(ch, q)
    # raw view of the nack
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    r.send(1, spec.Confirm.Select())
    r.until({"Confirm.SelectOk"})
    # one publish at a time: RabbitMQ coalesces confirms that are due together, so the
    # multiple flag depends on timing unless nothing else is outstanding
    frames = []
    for b in (b"A", b"B", b"C"):
        r.send(1, spec.Basic.Publish(exchange="", routing_key=q, mandatory=True),
               (spec.BasicProperties(), b))
        frames += r.until({"Basic.Ack", "Basic.Nack"})
    out["reject_publish_raw_frames"] = frames
    # max length in bytes
    q = ctx.q("bytes")
    ch.queue_declare(q, arguments={"x-max-length-bytes": 5})
    for b in (b"AAA", b"BBB", b"CC"):
        pub.basic_publish("", q, b)
    out["max_length_bytes_contents"] = drain(ch, q)
    # max length 0
    q = ctx.q("zero")
    ch.queue_declare(q, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    out["max_length_0_reject_publish"] = attempt(pub.basic_publish, "", q, b"A")
    # unacked messages do not count toward the limit
    q = ctx.q("unacked")
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    pub.basic_publish("", q, b"A")
    held = get(ch, q)
    out["unacked_not_counted_publish_B"] = attempt(pub.basic_publish, "", q, b"B")
    out["unacked_not_counted_publish_C"] = attempt(pub.basic_publish, "", q, b"C")
    ch.basic_reject(held["delivery_tag"], requeue=True)
    out["requeue_past_limit_contents"] = drain(ch, q)
    return out


@scenario
def message_ttl_expiry(ctx):
    c = ctx.conn()
    ch = c.channel()
    pub = confirmed_channel(c)
    q = ctx.q("ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 200})
    pub.basic_publish("", q, b"A")
    out = {"count_before": declare_ok(ch.queue_declare(q, passive=True))["message_count"]}
    time.sleep(0.6)
    out["count_after"] = declare_ok(ch.queue_declare(q, passive=True))["message_count"]
    out["get_after"] = get(ch, q)
    q2 = ctx.q("per-message")
    ch.queue_declare(q2)
    pub.basic_publish("", q2, b"short", properties=spec.BasicProperties(expiration="200"))
    pub.basic_publish("", q2, b"long", properties=spec.BasicProperties(expiration="60000"))
    pub.basic_publish("", q2, b"none")
    time.sleep(0.6)
    out["per_message_remaining"] = [get(ch, q2, auto_ack=True) for _ in range(3)]
    bad = confirmed_channel(c)
    out["expiration_invalid"] = attempt(
        lambda: (bad.basic_publish("", q2, b"x", properties=spec.BasicProperties(expiration="abc"))))
    ch3 = c.channel()
    ch3.basic_publish("", q2, b"x", properties=spec.BasicProperties(expiration="-1"))
    out["expiration_negative"] = attempt(ch3.basic_qos, prefetch_count=0)
    q3 = ctx.q("ttl0")
    ch = c.channel()
    ch.queue_declare(q3, arguments={"x-message-ttl": 0})
    pub.basic_publish("", q3, b"A")
    out["ttl0_get"] = get(ch, q3)
    seen = []
    collector(c, ch, q3, "c", seen, auto_ack=True)
    pub.basic_publish("", q3, b"B")
    pump(c, lambda: len(seen) >= 1, timeout=1.0)
    out["ttl0_with_consumer"] = seen
    q4 = ctx.q("expires")
    ch.queue_declare(q4, arguments={"x-expires": 300})
    time.sleep(1.0)
    ch5 = c.channel()
    out["queue_expired"] = attempt(ch5.queue_declare, q4, passive=True)
    return out


def _dlx_setup(ctx, ch):
    dlx = ctx.x("dlx")
    dlq = ctx.q("dlq")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, "dlk")
    return dlx, dlq


@scenario
def dead_letter(ctx):
    c = ctx.conn()
    ch = c.channel()
    pub = confirmed_channel(c)
    dlx, dlq = _dlx_setup(ctx, ch)
    src = ctx.q("src")
    ch.queue_declare(src, arguments={"x-dead-letter-exchange": dlx,
                                     "x-dead-letter-routing-key": "dlk"})
    x = ctx.x("in")
    ch.exchange_declare(x, "direct")
    ch.queue_bind(src, x, "orig")
    props = spec.BasicProperties(headers={"h": "v"}, message_id="id1", content_type="text/plain",
                                 delivery_mode=2, priority=3, correlation_id="corr")
    out = {}
    pub.basic_publish(x, "orig", b"rejected", properties=props)
    m = get(ch, src)
    ch.basic_reject(m["delivery_tag"], requeue=False)
    out["reject_requeue_false"] = _wait_get(c, ch, dlq)
    pub.basic_publish(x, "orig", b"nacked", properties=props)
    m = get(ch, src)
    ch.basic_nack(m["delivery_tag"], requeue=False)
    out["nack_requeue_false"] = _wait_get(c, ch, dlq)
    # TTL expiry, no routing key override: the original routing keys are used
    src2 = ctx.q("src-ttl")
    ch.queue_declare(src2, arguments={"x-dead-letter-exchange": dlx, "x-message-ttl": 100})
    ch.queue_bind(dlq, dlx, src2)
    ch.queue_bind(dlq, dlx, "cc1")
    pub.basic_publish("", src2, b"expired",
                      properties=spec.BasicProperties(headers={"CC": ["cc1"]}))
    out["ttl_expired"] = _wait_get(c, ch, dlq, timeout=3.0)
    # per-message expiration: x-death keeps original-expiration, expiration is dropped
    src3 = ctx.q("src-msg-ttl")
    ch.queue_declare(src3, arguments={"x-dead-letter-exchange": dlx,
                                      "x-dead-letter-routing-key": "dlk"})
    pub.basic_publish("", src3, b"msg-expired", properties=spec.BasicProperties(expiration="100"))
    out["per_message_expired"] = _wait_get(c, ch, dlq, timeout=3.0)
    # max length drop-head
    src4 = ctx.q("src-maxlen")
    ch.queue_declare(src4, arguments={"x-dead-letter-exchange": dlx,
                                      "x-dead-letter-routing-key": "dlk",
                                      "x-max-length": 1})
    pub.basic_publish("", src4, b"dropped")
    pub.basic_publish("", src4, b"kept")
    out["maxlen_dropped"] = _wait_get(c, ch, dlq)
    out["dlq_left"] = drain(ch, dlq)
    # the same dead-lettered message seen raw, to show the field types of x-death
    pub.basic_publish(x, "orig", b"typed", properties=props)
    m = get(ch, src)
    ch.basic_reject(m["delivery_tag"], requeue=False)
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    for _ in range(50):
        r.send(1, spec.Basic.Get(queue=dlq, no_ack=True))
        frames = r.until({"Basic.GetOk", "Basic.GetEmpty"})
        if frames[-1].get("method") == "Basic.GetOk":
            r.recv()  # the content header (kept in r.raw_headers); the body follows
            break
        time.sleep(0.05)
    out["raw_typed_headers_rejected"] = typed_headers(r.raw_headers[-1]) if r.raw_headers else None
    # dead letter exchange missing: message is dropped silently
    src5 = ctx.q("src-missing-dlx")
    ch.queue_declare(src5, arguments={"x-dead-letter-exchange": n("missing-x")})
    pub.basic_publish("", src5, b"lost")
    m = get(ch, src5)
    ch.basic_reject(m["delivery_tag"], requeue=False)
    out["missing_dlx_src_count"] = declare_ok(ch.queue_declare(src5, passive=True))["message_count"]
    return out


def _wait_get(conn, ch, queue, timeout=WAIT):
    end = time.monotonic() + timeout
    while True:
        m = get(ch, queue, auto_ack=True)
        if m.get("get") != "empty" or time.monotonic() > end:
            return m
        conn.process_data_events(time_limit=0.05)


@scenario
def dead_letter_cycle(ctx):
    """src -> (reject) -> dlx -> dlq -> (reject) -> default exchange -> src -> (reject) -> dlq."""
    c = ctx.conn()
    ch = c.channel()
    pub = confirmed_channel(c)
    dlx, dlq = _dlx_setup(ctx, ch)
    src = ctx.q("src")
    ch.queue_delete(dlq)
    ch.queue_declare(dlq, arguments={"x-dead-letter-exchange": "",
                                     "x-dead-letter-routing-key": src})
    ch.queue_bind(dlq, dlx, "dlk")
    ch.queue_declare(src, arguments={"x-dead-letter-exchange": dlx,
                                     "x-dead-letter-routing-key": "dlk"})
    pub.basic_publish("", src, b"m")
    out = {}
    for step, queue in (("reject_src_1", src), ("reject_dlq_1", dlq), ("reject_src_2", src)):
        end = time.monotonic() + WAIT
        while True:
            m = get(ch, queue)
            if m.get("get") != "empty" or time.monotonic() > end:
                break
            c.process_data_events(time_limit=0.05)
        out[step] = m
        if "delivery_tag" in m:
            ch.basic_reject(m["delivery_tag"], requeue=False)
    out["final_in_dlq"] = _wait_get(c, ch, dlq)
    return out


@scenario
def topic_routing(ctx):
    c = ctx.conn()
    ch = c.channel()
    x = ctx.x("topic")
    ch.exchange_declare(x, "topic")
    patterns = ["*.orange.*", "*.*.rabbit", "lazy.#", "#", "*", "a.*", "a.#", "#.b", "a.#.b",
                "a.*.b", "#.#", "*.#", "", "a", "a.*.#", "#.a.#"]
    queues = {}
    for i, p in enumerate(patterns):
        q = ctx.q(f"t{i}")
        ch.queue_declare(q)
        ch.queue_bind(q, x, p)
        queues[p] = q
    keys = ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox", "lazy.brown.fox",
            "lazy.pink.rabbit", "quick.brown.fox", "orange", "quick.orange.male.rabbit",
            "lazy.orange.male.rabbit", "lazy", "a", "a.b", "a.x.b", "a.x.y.b", "b", "", "a.",
            ".a", ".", "a..b", "x.a.y", "A.B"]
    pub = confirmed_channel(c)
    for k in keys:
        pub.basic_publish(x, k, k.encode() if k else b"<empty>")
    table = {}
    for p, q in queues.items():
        table["pattern " + repr(p)] = drain(ch, q)
    return {"matches": table}


@scenario
def headers_routing(ctx):
    c = ctx.conn()
    ch = c.channel()
    x = ctx.x("headers")
    ch.exchange_declare(x, "headers")
    bindings = {
        "all_a1_b2": {"x-match": "all", "a": "1", "b": "2"},
        "any_a1_b2": {"x-match": "any", "a": "1", "b": "2"},
        "default_a1": {"a": "1"},
        "empty": {},
        "all_empty": {"x-match": "all"},
        "any_empty": {"x-match": "any"},
        "int_a1": {"a": 1},
        "void_a": {"a": None},
        "all_x_header": {"x-match": "all", "x-h": "1"},
        "any_with_x": {"x-match": "any-with-x", "x-h": "1"},
    }
    qs = {}
    out = {"bind": {}}
    for label, args in bindings.items():
        q = ctx.q("h-" + label)
        ch = c.channel() if not ch.is_open else ch
        ch.queue_declare(q)
        out["bind"][label] = attempt(ch.queue_bind, q, x, "ignored", arguments=args)
        qs[label] = q
    ch = c.channel()
    ch.queue_bind(ctx.q("h-all_a1_b2"), x, "", arguments={"x-match": "all", "a": "1", "b": "2"})
    bad_q = ctx.q("h-bad")
    ch.queue_declare(bad_q)
    out["bind_bad_x_match"] = attempt(ch.queue_bind, bad_q, x, "", arguments={"x-match": "some"})
    ch = c.channel()
    messages = {
        "m_a1_b2": {"a": "1", "b": "2"},
        "m_a1": {"a": "1"},
        "m_b2": {"b": "2"},
        "m_a1_b3": {"a": "1", "b": "3"},
        "m_none": None,
        "m_empty": {},
        "m_int_a1": {"a": 1},
        "m_a1_b2_extra": {"a": "1", "b": "2", "c": "3"},
        "m_x_h1": {"x-h": "1"},
        "m_a_void": {"a": None},
    }
    pub = confirmed_channel(c)
    for label, headers in messages.items():
        pub.basic_publish(x, "rk", label.encode(), properties=spec.BasicProperties(headers=headers))
    out["matches"] = {label: drain(ch, q) for label, q in qs.items()}
    return out


@scenario
def fanout_and_direct_routing(ctx):
    c = ctx.conn()
    ch = c.channel()
    pub = confirmed_channel(c)
    fx = ctx.x("fanout")
    dx = ctx.x("direct")
    ch.exchange_declare(fx, "fanout")
    ch.exchange_declare(dx, "direct")
    q1, q2 = ctx.q("q1"), ctx.q("q2")
    ch.queue_declare(q1)
    ch.queue_declare(q2)
    ch.queue_bind(q1, fx, "a")
    ch.queue_bind(q2, fx, "b")
    ch.queue_bind(q1, dx, "k")
    ch.queue_bind(q1, dx, "k2")
    ch.queue_bind(q2, dx, "k")
    pub.basic_publish(fx, "zzz", b"fan")
    pub.basic_publish(dx, "k", b"direct-k")
    pub.basic_publish(dx, "k2", b"direct-k2")
    pub.basic_publish(dx, "K", b"direct-K")
    out = {"q1": drain(ch, q1), "q2": drain(ch, q2)}
    # a queue bound twice by two keys gets one copy of a message routed by both (fanout)
    ch.queue_bind(q1, fx, "c")
    pub.basic_publish(fx, "", b"fan2")
    out["q1_bound_twice_to_fanout"] = drain(ch, q1)
    ch.queue_unbind(q1, fx, "a")
    ch.queue_unbind(q1, fx, "c")
    pub.basic_publish(fx, "", b"fan3")
    out["after_unbind"] = {"q1": drain(ch, q1), "q2": drain(ch, q2)}
    # internal exchange refuses publishes
    ix = ctx.x("internal")
    ch.exchange_declare(ix, "fanout", internal=True)
    pch = c.channel()
    pch.basic_publish(ix, "", b"x")
    out["publish_to_internal"] = attempt(pch.basic_qos, prefetch_count=0)
    # alternate exchange
    ae = ctx.x("ae")
    ch.exchange_declare(ae, "fanout")
    aq = ctx.q("aq")
    ch.queue_declare(aq)
    ch.queue_bind(aq, ae, "")
    wx = ctx.x("with-ae")
    ch.exchange_declare(wx, "direct", arguments={"alternate-exchange": ae})
    pub.basic_publish(wx, "unrouted", b"to-ae")
    out["alternate_exchange"] = get(ch, aq, auto_ack=True)
    return out


@scenario
def exchange_to_exchange(ctx):
    c = ctx.conn()
    ch = c.channel()
    pub = confirmed_channel(c)
    x1, x2 = ctx.x("x1"), ctx.x("x2")
    ch.exchange_declare(x1, "direct")
    ch.exchange_declare(x2, "fanout")
    q = ctx.q("q")
    ch.queue_declare(q)
    ch.queue_bind(q, x2, "")
    out = {"bind": attempt(ch.exchange_bind, x2, x1, "k")}
    pub.basic_publish(x1, "k", b"via-x1")
    pub.basic_publish(x1, "other", b"not-routed")
    out["delivered"] = get(ch, q, auto_ack=True)
    out["then"] = get(ch, q, auto_ack=True)
    # a queue reachable twice (directly and via x2) gets one copy
    ch.queue_bind(q, x1, "k")
    pub.basic_publish(x1, "k", b"twice")
    out["reachable_twice"] = drain(ch, q)
    # a cycle x1 -> x2 -> x1 does not loop
    ch.exchange_bind(x1, x2, "k")
    pub.basic_publish(x1, "k", b"cycle")
    out["cycle"] = drain(ch, q)
    out["unbind"] = attempt(ch.exchange_unbind, x2, x1, "k")
    ch.queue_unbind(q, x1, "k")
    pub.basic_publish(x1, "k", b"after-unbind")
    out["after_unbind"] = drain(ch, q)
    return out


@scenario
def basic_get_and_counts(ctx):
    c = ctx.conn()
    ch = c.channel()
    pub = confirmed_channel(c)
    q = ctx.q("q")
    out = {"declare": declare_ok(ch.queue_declare(q))}
    out["get_empty"] = get(ch, q)
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    r.send(1, spec.Basic.Get(queue=q))
    out["raw_get_empty"] = r.until({"Basic.GetEmpty", "Basic.GetOk"})
    for b in (b"1", b"2", b"3"):
        pub.basic_publish("", q, b, properties=spec.BasicProperties(
            content_type="text/plain", content_encoding="utf-8",
            headers={"s": "str", "i": 7, "l": 2 ** 40, "b": True, "f": {"n": 1}, "a": [1, "x"]},
            delivery_mode=2, priority=1, correlation_id="c", reply_to="r", expiration="60000",
            message_id="m", timestamp=1700000000, type="t", user_id="guest", app_id="app",
            cluster_id="cl"))
    out["declare_with_3"] = declare_ok(ch.queue_declare(q, passive=True))
    out["get_1"] = get(ch, q)
    out["get_2_auto_ack"] = get(ch, q, auto_ack=True)
    out["declare_after_gets"] = declare_ok(ch.queue_declare(q, passive=True))
    seen = []
    collector(c, ch, q, "c", seen)
    pump(c, lambda: len(seen) >= 1)
    out["declare_with_consumer"] = declare_ok(ch.queue_declare(q, passive=True))
    out["consumer_delivery"] = seen
    ch.basic_cancel(n("c"))
    pub.basic_publish("", q, b"4")
    pub.basic_publish("", q, b"5")
    out["purge"] = attempt(lambda: declare_ok(ch.queue_purge(q)))
    out["delete"] = attempt(lambda: declare_ok(ch.queue_delete(q)))
    ch2 = c.channel()
    ch2.basic_publish("", q, b"x", properties=spec.BasicProperties(user_id="someone-else"))
    out["publish_wrong_user_id"] = attempt(ch2.basic_qos, prefetch_count=0)
    return out


@scenario
def server_named_queue(ctx):
    c = ctx.conn()
    ch = c.channel()
    ok = ch.queue_declare("", exclusive=True)
    name = ok.method.queue
    out = {"prefix": name[:8], "length": len(name),
           "suffix_charset_base64url": bool(re.fullmatch(r"[A-Za-z0-9_\-]+", name[8:])),
           "declare_ok": declare_ok(ok)}
    out["second_differs"] = ch.queue_declare("", exclusive=True).method.queue != name
    ok3 = ch.queue_declare("")
    ctx.queues.append(ok3.method.queue)
    out["non_exclusive_server_named"] = declare_ok(ok3)
    # "" refers to the last declared queue on this channel in bind/consume/get/purge/delete
    pub = confirmed_channel(c)
    pub.basic_publish("", ok3.method.queue, b"m")
    out["get_empty_name_means_last_declared"] = attempt(get, ch, "")
    ch2 = c.channel()
    out["get_empty_name_fresh_channel"] = attempt(get, ch2, "")
    ch3 = c.channel()
    out["purge_empty_name_fresh_channel"] = attempt(ch3.queue_purge, "")
    # raw: server-generated consumer tag
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    r.send(1, spec.Queue.Declare(queue="", exclusive=True))
    r.until({"Queue.DeclareOk"})
    r.send(1, spec.Basic.Consume(queue="", consumer_tag=""))
    out["raw_consume_empty_names"] = r.until({"Basic.ConsumeOk", "Channel.Close"})
    return out


@scenario
def channel_max_exceeded(ctx):
    out = {}
    try:
        c = ctx.conn(channel_max=2)
        out["pika_negotiated_channel_max"] = c._impl.params.channel_max  # pylint: disable=W0212
        chans = []
        for i in range(3):
            chans.append(attempt(lambda: c.channel().channel_number))
        out["pika_open_3"] = chans
    except Exception as e:  # pylint: disable=broad-except
        out["pika"] = {"exception": type(e).__name__, "args": norm([str(a) for a in e.args])}
    r = ctx.raw()
    out["raw_handshake_tune"] = [f for f in r.handshake(channel_max=2)
                                 if isinstance(f, dict) and f.get("method") == "Connection.Tune"]
    out["raw_open_1"] = r.open_channel(1)
    out["raw_open_2"] = r.open_channel(2)
    out["raw_open_3"] = r.open_channel(3)
    r = ctx.raw()
    r.handshake(channel_max=2)
    out["raw_open_channel_3_first"] = r.open_channel(3)
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    out["raw_open_channel_1_twice"] = r.open_channel(1)
    r = ctx.raw()
    r.handshake()
    r.send(5, spec.Queue.Declare(queue="x"))
    out["raw_method_on_unopened_channel"] = r.until({"Connection.Close", "Channel.Close"})
    r = ctx.raw()
    r.handshake()
    out["raw_open_channel_2048_with_channel_max_2047"] = r.open_channel(2048)
    r = ctx.raw()
    r.handshake()
    out["raw_open_channel_0"] = r.open_channel(0)
    r = ctx.raw()
    r.handshake()
    r.send(1, spec.Channel.Open())
    r.send(1, spec.Channel.Open())
    out["raw_open_same_channel_pipelined"] = r.until({"Connection.Close"})
    for label, cm in (("0", 0), ("4000", 4000)):
        r = ctx.raw()
        t0 = time.monotonic()
        out["raw_tune_ok_channel_max_" + label] = r.handshake(channel_max=cm)[2:]
        out["raw_tune_ok_channel_max_" + label + "_seconds"] = round(time.monotonic() - t0)
    return out


@scenario
def frame_max_negotiation(ctx):
    out = {}
    try:
        params = pika.URLParameters(ctx.url)
        params.frame_max = 4095
        out["pika_frame_max_4095"] = "accepted by pika"
    except Exception as e:  # pylint: disable=broad-except
        out["pika_frame_max_4095"] = {"refused_client_side": type(e).__name__,
                                      "args": [str(a) for a in e.args]}
    for label, fm in (("4095", 4095), ("4096", 4096), ("0", 0), ("131073", 131073),
                      ("8", 8)):
        r = ctx.raw()
        t0 = time.monotonic()
        out["raw_tune_ok_frame_max_" + label] = r.handshake(frame_max=fm)[2:]
        out["raw_tune_ok_frame_max_" + label + "_seconds"] = round(time.monotonic() - t0)
    # a frame larger than the negotiated frame_max
    r = ctx.raw()
    r.handshake(frame_max=4096)
    r.open_channel(1)
    big = b"x" * 5000
    data = pframe.Method(1, spec.Basic.Publish(exchange="amq.direct", routing_key="k")).marshal()
    data += pframe.Header(1, len(big), spec.BasicProperties()).marshal()
    data += struct.pack(">BHI", 3, 1, len(big)) + big + b"\xce"
    r.send_bytes(data)
    out["raw_body_frame_over_frame_max"] = r.until({"Connection.Close"})
    # heartbeat negotiation
    r = ctx.raw()
    r.handshake(heartbeat=1)
    t0 = time.monotonic()
    fr = r.recv(3.0)
    out["raw_heartbeat_1_first_frame"] = describe(fr)
    out["raw_heartbeat_1_within_2s"] = time.monotonic() - t0 < 2.0
    return out


@scenario
def authentication(ctx):
    out = {}
    try:
        ctx.conn(credentials=pika.PlainCredentials("guest", "wrong-password"))
        out["pika_bad_password"] = "connected"
    except Exception as e:  # pylint: disable=broad-except
        out["pika_bad_password"] = {"exception": type(e).__name__,
                                    "args": norm([repr(a) for a in e.args])}
    try:
        ctx.conn(credentials=pika.PlainCredentials(n("nobody"), "x"))
        out["pika_unknown_user"] = "connected"
    except Exception as e:  # pylint: disable=broad-except
        out["pika_unknown_user"] = {"exception": type(e).__name__,
                                    "args": norm([repr(a) for a in e.args])}
    try:
        ctx.conn(virtual_host=n("nope"))
        out["pika_unknown_vhost"] = "connected"
    except Exception as e:  # pylint: disable=broad-except
        out["pika_unknown_vhost"] = {"exception": type(e).__name__,
                                     "args": norm([repr(a) for a in e.args])}
    r = ctx.raw()
    t0 = time.monotonic()
    out["raw_bad_password_with_auth_failure_close"] = r.handshake(password="wrong")[1:]
    out["raw_bad_password_close_after_seconds"] = round(time.monotonic() - t0)
    r.send(0, spec.Connection.CloseOk())
    out["raw_bad_password_after_close_ok"] = r.eof_delay()
    r = ctx.raw()
    t0 = time.monotonic()
    out["raw_bad_password_without_capability"] = r.handshake(password="wrong",
                                                             capabilities={})[1:]
    out["raw_bad_password_without_capability_seconds"] = round(time.monotonic() - t0)
    r = ctx.raw()
    out["raw_unknown_vhost"] = r.handshake(vhost=n("nope"))[2:]
    r.send(0, spec.Connection.CloseOk())
    out["raw_unknown_vhost_after_close_ok"] = r.eof_delay()
    r = ctx.raw()
    r.send_bytes(b"AMQP\x00\x00\x09\x01")
    r.recv_method()
    r.send(0, spec.Connection.StartOk(client_properties={}, mechanism="NOPE",
                                      response=b"\x00guest\x00guest", locale="en_US"))
    t0 = time.monotonic()
    out["raw_unknown_mechanism"] = r.until({"Connection.Close"})
    out["raw_unknown_mechanism_seconds"] = round(time.monotonic() - t0)
    r = ctx.raw()
    r.send_bytes(b"AMQP\x00\x00\x09\x01")
    r.recv_method()
    r.send(0, spec.Connection.StartOk(client_properties={}, mechanism="AMQPLAIN",
                                      response=b"", locale="en_US"))
    out["raw_amqplain_empty_response"] = r.until({"Connection.Close"})
    return out


@scenario
def basic_recover(ctx):
    c = ctx.conn()
    ch = c.channel()
    pub = confirmed_channel(c)
    q = ctx.q("q")
    ch.queue_declare(q)
    for b in (b"A", b"B", b"C"):
        pub.basic_publish("", q, b)
    a = get(ch, q)
    b = get(ch, q)
    out = {"held_tags": [a["delivery_tag"], b["delivery_tag"]]}
    out["recover_requeue_true"] = attempt(ch.basic_recover, requeue=True)
    out["after_recover"] = [body_of({"ok": g}) for g in (get(ch, q, auto_ack=True) for _ in range(4))]
    # with a consumer: requeue=True, then requeue=False (a connection error in RabbitMQ)
    ch3 = c.channel()
    seen3 = []
    q2 = ctx.q("q2")
    ch3.queue_declare(q2)
    pub.basic_publish("", q2, b"P")
    pub.basic_publish("", q2, b"Q")
    collector(c, ch3, q2, "c3", seen3)
    pump(c, lambda: len(seen3) >= 2)
    out["recover_true_with_consumer"] = attempt(ch3.basic_recover, requeue=True)
    pump(c, lambda: len(seen3) >= 4)
    settle(c)
    out["consumer_deliveries_recover_true"] = [[s["body"], s["delivery_tag"], s["redelivered"]]
                                               for s in seen3]
    c2 = ctx.conn()
    for b2 in (b"X", b"Y"):
        c2.channel().basic_publish("", q, b2)
    ch2 = c2.channel()
    seen = []
    collector(c2, ch2, q, "c", seen)
    pump(c2, lambda: len(seen) >= 2)
    out["recover_false_with_consumer"] = attempt(ch2.basic_recover, requeue=False)
    out["connection_open_after_recover_false"] = c2.is_open
    out["consumer_deliveries_before_recover_false"] = [
        [s["body"], s["delivery_tag"], s["redelivered"]] for s in seen]
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    r.send(1, spec.Basic.RecoverAsync(requeue=True))
    out["raw_recover_async"] = r.until({"Connection.Close", "Channel.Close"}, timeout=1.0)
    r.send(1, spec.Basic.Qos(prefetch_count=1))
    out["raw_recover_async_then_qos"] = r.until({"Basic.QosOk", "Connection.Close",
                                                 "Channel.Close"})
    return out


@scenario
def channel_flow(ctx):
    c = ctx.conn()
    ch = c.channel()
    out = {"flow_true": attempt(ch.flow, True)}
    out["flow_false"] = attempt(ch.flow, False)
    out["connection_open_after"] = c.is_open
    return out


@scenario
def update_secret(ctx):
    c = ctx.conn()
    out = {"same_secret": attempt(c.update_secret, "guest", "scenario")}
    out["connection_open_after"] = c.is_open
    r = ctx.raw()
    r.handshake()
    r.send(0, spec.Connection.UpdateSecret(new_secret=b"wrong", reason="scenario"))
    out["raw_wrong_secret"] = r.until({"Connection.UpdateSecretOk", "Connection.Close"},
                                      timeout=3.0)
    out["raw_wrong_secret_then_open_channel"] = r.open_channel(1)
    return out


@scenario
def consumer_cancel_notification(ctx):
    c = ctx.conn()
    ch = c.channel()
    q = ctx.q("q")
    ch.queue_declare(q)
    cancels = []
    ch.add_on_cancel_callback(lambda fr: cancels.append(method_dict(fr.method)))
    collector(c, ch, q, "c", [])
    other = c.channel()
    out = {"delete": attempt(lambda: declare_ok(other.queue_delete(q)))}
    pump(c, lambda: cancels)
    out["cancel_received"] = cancels
    out["channel_open_after"] = ch.is_open
    # raw: exact frames, also for a client without the consumer_cancel_notify capability
    for label, caps in (("raw_with_capability", None), ("raw_without_capability", {})):
        r = ctx.raw()
        r.handshake(capabilities=caps)
        r.open_channel(1)
        q2 = ctx.q("q-" + label)
        r.send(1, spec.Queue.Declare(queue=q2))
        r.until({"Queue.DeclareOk"})
        r.send(1, spec.Basic.Consume(queue=q2, consumer_tag=n("rc")))
        r.until({"Basic.ConsumeOk"})
        r.send(2, spec.Channel.Open())
        r.until({"Channel.OpenOk"})
        r.send(2, spec.Queue.Delete(queue=q2))
        frames = r.until({"Queue.DeleteOk"})
        extra = r.recv_method(timeout=SETTLE * 2)
        if not isinstance(extra, str):
            frames.append(describe(extra))
        # RabbitMQ sends basic.cancel (channel 1) and queue.delete-ok (channel 2) in either
        # order: the output lists them sorted by channel
        out[label] = sorted(frames, key=lambda f: f["channel"])
    # consumer cancelled by the client: basic.cancel-ok
    q3 = ctx.q("q3")
    ch.queue_declare(q3)
    collector(c, ch, q3, "c3", [])
    out["client_cancel"] = attempt(ch.basic_cancel, n("c3"))
    return out


@scenario
def channel_and_connection_close(ctx):
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    r.send(1, spec.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    out = {"client_channel_close": r.until({"Channel.CloseOk"})}
    out["reopen_same_number"] = r.open_channel(1)
    # a method after the server closed the channel is ignored until close-ok
    r.send(1, spec.Queue.Declare(queue=n("missing"), passive=True))
    out["server_channel_close"] = r.until({"Channel.Close"})
    r.send(1, spec.Queue.Declare(queue=n("missing2"), passive=True))
    r.send(1, spec.Channel.CloseOk())
    out["after_close_ok_reopen"] = r.open_channel(1)
    # unexpected method: connection.start-ok on an open connection
    r.send(0, spec.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=0))
    out["tune_ok_after_open"] = r.until({"Connection.Close"})
    r = ctx.raw()
    r.handshake()
    r.send_bytes(struct.pack(">BHI", 1, 0, 4) + struct.pack(">HH", 999, 10) + b"\xce")
    t0 = time.monotonic()
    out["unknown_class_method"] = r.until({"Connection.Close"})
    out["unknown_class_method_eof_after_seconds"] = round(time.monotonic() - t0)
    r = ctx.raw()
    r.handshake()
    r.send_bytes(struct.pack(">BHI", 1, 0, 4) + struct.pack(">HH", 20, 10) + b"\x00")
    out["bad_frame_end"] = r.until({"Connection.Close"})
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    r.send_bytes(pframe.Header(1, 3, spec.BasicProperties()).marshal())
    out["header_without_method"] = r.until({"Connection.Close", "Channel.Close"})
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    r.send_bytes(pframe.Method(1, spec.Basic.Publish(exchange="amq.direct", routing_key="k"))
                 .marshal())
    r.send(1, spec.Basic.Qos(prefetch_count=1))
    out["method_instead_of_header"] = r.until({"Connection.Close", "Channel.Close"})
    r = ctx.raw()
    r.handshake()
    r.open_channel(1)
    # queue.declare whose arguments stop after reserved-1 (a short uint)
    r.send_bytes(struct.pack(">BHI", 1, 1, 6) + struct.pack(">HH", 50, 10) + b"\x00\x00\xce")
    out["truncated_method_args"] = r.until({"Connection.Close", "Channel.Close"})
    return out


# ---------------------------------------------------------------------------------------------

def run(url, only):
    for name, fn in SCENARIOS:
        if only and name not in only:
            continue
        ctx = Ctx(url)
        try:
            result = fn(ctx)
            line = {"scenario": name, "result": result}
        except Exception as e:  # pylint: disable=broad-except
            line = {"scenario": name, "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc().splitlines()[-4:]}
        finally:
            try:
                ctx.cleanup()
            except Exception as e:  # pylint: disable=broad-except
                print(f"cleanup of {name} failed: {e!r}", file=sys.stderr)
        print(json.dumps(norm(line), sort_keys=True), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", nargs="?", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--list", action="store_true", help="print the scenario names and exit")
    args = ap.parse_args()
    if args.list:
        for name, _fn in SCENARIOS:
            print(name)
        return
    only = set(args.only.split(",")) if args.only else None
    if only:
        unknown = only - {name for name, _ in SCENARIOS}
        if unknown:
            sys.exit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    run(args.url, only)


if __name__ == "__main__":
    main()

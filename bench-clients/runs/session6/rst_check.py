"""Pipeline N queue.declare + connection.close + junk at a broker, read slowly; count replies."""
import socket, struct, sys, threading, time
HOST, PORT = "127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 5672
N = 20000
def shortstr(s): b = s.encode(); return bytes([len(b)]) + b
def longstr(b): return struct.pack(">I", len(b)) + b
def method(ch, cls, mid, args): p = struct.pack(">HH", cls, mid) + args; return struct.pack(">BHI", 1, ch, len(p)) + p + b"\xce"
s = socket.create_connection((HOST, PORT))
buf = b""
def read_frame():
    global buf
    while True:
        if len(buf) >= 7:
            t, ch, size = struct.unpack(">BHI", buf[:7])
            if len(buf) >= 8 + size:
                f = (t, ch, buf[7:7+size]); buf = buf[8+size:]; return f
        d = s.recv(65536)
        if not d: raise EOFError
        buf += d
s.sendall(b"AMQP\x00\x00\x09\x01")
read_frame()  # start
s.sendall(method(0, 10, 11, struct.pack(">I", 0) + shortstr("PLAIN") + longstr(b"\x00guest\x00guest") + shortstr("en_US")))
t, ch, p = read_frame()  # tune
s.sendall(method(0, 10, 31, struct.pack(">HIH", 2047, 131072, 0)))
s.sendall(method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
read_frame()  # open-ok
s.sendall(method(1, 20, 10, shortstr("")))
read_frame()  # channel.open-ok
name = "rst-check-" + "q" * 190
out = b"".join(method(1, 50, 10, struct.pack(">H", 0) + shortstr(name) + b"\x00" + struct.pack(">I", 0)) for _ in range(N))
out += method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0))
out += b"\xce" * (8 * 1024 * 1024)
write_result = {}
def writer():
    try: s.sendall(out); write_result["r"] = "ok"
    except OSError as e: write_result["r"] = repr(e)
th = threading.Thread(target=writer); th.start()
data = buf; err = None
while True:
    try:
        d = s.recv(16384)
    except OSError as e:
        err = repr(e); break
    if not d: break
    data += d
    time.sleep(0.001)
th.join(timeout=15)
oks = closeok = 0; i = 0
while i + 7 <= len(data):
    t, ch, size = struct.unpack(">BHI", data[i:i+7])
    if i + 8 + size > len(data): break
    cls, mid = struct.unpack(">HH", data[i+7:i+11])
    if (cls, mid) == (50, 11): oks += 1
    if (cls, mid) == (10, 51): closeok += 1
    i += 8 + size
print(f"port {PORT}: declare-oks {oks}/{N}, close-ok {closeok}, read ended {err or 'EOF'}, leftover {len(data)-i}, write {write_result.get('r')}")

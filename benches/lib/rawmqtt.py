"""Minimal MQTT 3.1.1 over a raw socket, and a Tern process on a free port, for the bench
scripts that need exact control (offline-sessions, memory-limit). Loopback only."""

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def packet(header, body):
    """A packet: fixed header byte, remaining length, body."""
    out = bytearray([header])
    n = len(body)
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out) + body


def lp(b):
    """A length-prefixed string."""
    return len(b).to_bytes(2, "big") + b


def connect(client_id, clean=False, keep_alive=60):
    flags = 0x02 if clean else 0x00
    body = lp(b"MQTT") + bytes([4, flags]) + keep_alive.to_bytes(2, "big") + lp(client_id)
    return packet(0x10, body)


def subscribe(packet_id, topic, qos):
    return packet(0x82, packet_id.to_bytes(2, "big") + lp(topic) + bytes([qos]))


def publish_qos1(packet_id, topic, payload):
    return packet(0x32, lp(topic) + packet_id.to_bytes(2, "big") + payload)


def puback(packet_id):
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


DISCONNECT = b"\xe0\x00"


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def split_packets(buf):
    """Complete packets at the start of `buf`: ([(first byte, body)], rest)."""
    out = []
    while True:
        n, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return out, buf
            byte = buf[i]
            n += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
        if len(buf) < i + n:
            return out, buf
        out.append((buf[0], buf[i:i + n]))
        buf = buf[i + n:]


def start_tern(binary, cwd, extra_args=(), preexec=None):
    """Starts tern with its defaults on a free loopback port; returns (process, port)."""
    broker = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "-p", "0", *extra_args],
        cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=preexec,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        line = broker.stderr.readline()
        if "listening on" in line:
            port = int(line.split("listening on ")[1].split()[0].rstrip(",").rsplit(":", 1)[1])
            # Keep reading its log so it never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in broker.stderr], daemon=True).start()
            return broker, port
        if not line and broker.poll() is not None:
            break
    broker.kill()
    sys.exit("tern did not start")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")

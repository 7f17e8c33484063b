"""Helpers of the security tests: which TCP ports a process listens on (from /proc), raw
protocol probes, and a capture of every TCP payload on the loopback interface."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections import defaultdict
from pathlib import Path


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (IPv4 and IPv6), from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def recv_all(sock: socket.socket, limit_s: float = 3.0) -> bytes:
    """Everything the peer sends until it closes or is silent for ``limit_s``."""
    sock.settimeout(limit_s)
    out = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            out += chunk
    return out


def plain_nats_connect(host: str, port: int, user: str, password: str) -> tuple[bytes, bytes]:
    """A NATS CONNECT in clear text: (the server's INFO line, what came after it)."""
    with socket.create_connection((host, port), timeout=3) as s:
        s.settimeout(3)
        info = b""
        while b"\r\n" not in info:
            chunk = s.recv(4096)
            if not chunk:
                break
            info += chunk
        hello = (
            f'CONNECT {{"verbose":false,"pedantic":false,"user":"{user}","pass":"{password}",'
            '"protocol":1}\r\nPING\r\n'
        )
        with contextlib.suppress(OSError):
            s.sendall(hello.encode())
        return info, recv_all(s)


def plain_mqtt_connect(host: str, port: int, user: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT in clear text; what the server answered (a CONNACK starts 0x20)."""

    def field(b: bytes) -> bytes:
        return struct.pack("!H", len(b)) + b

    var = field(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30)
    payload = field(b"plain-probe") + field(user.encode()) + field(password.encode())
    body = var + payload
    packet = bytes([0x10, len(body)]) + body
    with socket.create_connection((host, port), timeout=3) as s:
        with contextlib.suppress(OSError):
            s.sendall(packet)
        return recv_all(s)


class LoopbackCapture:
    """Every TCP payload that crosses ``lo`` while it runs, by server port (needs CAP_NET_RAW:
    an AF_PACKET socket on the loopback interface, as tcpdump opens)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self._by_port: dict[int, bytearray] = defaultdict(bytearray)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoopbackCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(262144)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == socket.PACKET_OUTGOING:
                continue  # on lo every packet is seen twice: outgoing and incoming
            self._take(frame)

    def _take(self, frame: bytes) -> None:
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":  # IPv4 only (we use 127.0.0.1)
            return
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6:  # TCP
            return
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport, dport = struct.unpack("!HH", tcp[:4])
        offset = (tcp[12] >> 4) * 4
        data = tcp[offset:]
        if data:
            with self._lock:
                self._by_port[sport] += data
                self._by_port[dport] += data

    def seen(self, port: int) -> bytes:
        """Every payload byte to or from ``port``, both directions."""
        with self._lock:
            return bytes(self._by_port.get(port, b""))

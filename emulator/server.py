"""Serve a world's emulated instruments over real transports on loopback.

Each SCPI instrument listens as raw SCPI over TCP (``TCPIP0::127.0.0.1::<port>::SOCKET`` for
pyvisa-py or any VISA), with block-aware framing in both directions; the serial switch is
offered on a pseudo-terminal (pyserial opens the slave path; pyvisa-py as
``ASRL/dev/pts/N::INSTR``) or as a ``socket://127.0.0.1:<port>`` URL for
``serial.serial_for_url``. One thread per listener and per connection; every firmware call
holds the world's lock, so clients may come one after another or at the same time.

Only loopback addresses are accepted (the emulator never listens on a network).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import termios
import threading
import tty
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from emulator.backend import Firmware, InputFramer

__all__ = ["ServerHandle", "role_of", "serve"]

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
MAX_PENDING = 1 << 30
"""Bytes a connection may hold for one unfinished message (a block up to ~1 GB)."""
_ROLE_WORDS = (
    ("transmitter", "transmitter"),
    ("receiver", "receiver"),
    ("otdr", "otdr"),
    ("power meter", "powermeter"),
    ("powermeter", "powermeter"),
    ("switch", "switch"),
)


def role_of(firmware: Any, resource: str) -> str:
    """The role an instrument plays, from its ``*IDN?`` model field (or its resource)."""
    text = str(getattr(firmware, "idn", "") or "")
    if not text:
        reply = None
        with contextlib.suppress(Exception):
            reply = firmware.handle(b"*IDN?\n")
        text = (reply or b"").decode("latin-1", "replace")
    parts = text.split(",")
    model = (parts[1] if len(parts) > 1 else text).lower()
    for word, role in _ROLE_WORDS:
        if word in model:
            return role
    if resource.upper().startswith("ASRL"):
        return "switch"
    return "instrument"


def _is_serial(firmware: Any, resource: str) -> bool:
    from emulator.scpi import SerialDevice

    return isinstance(firmware, SerialDevice) or resource.upper().startswith("ASRL")


@dataclass
class ServerHandle:
    """A running server: ``resources`` maps each original resource string and each role
    (``transmitter``, ``receiver``, ``receiver2`` ...) to the address a client opens."""

    resources: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _sockets: list[socket.socket] = field(default_factory=list, repr=False)
    _fds: list[int] = field(default_factory=list, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def close(self) -> None:
        """Stop listening, drop every connection and wait for the threads."""
        self._stop.set()
        with self._lock:
            socks = list(self._sockets)
            fds = list(self._fds)
            self._sockets.clear()
            self._fds.clear()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=2.0)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._sockets:
                self._sockets.remove(sock)

    def _spawn(self, target: Any, *args: Any, name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()


def _serve_connection(
    handle: ServerHandle, conn: socket.socket, fw: Firmware, lock: threading.RLock
) -> None:
    framer = InputFramer()
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not handle._stop.is_set():
            try:
                data = conn.recv(1 << 20)
            except OSError:
                break
            if not data:
                break
            for message in framer.feed(data):
                with lock:
                    response = fw.handle(message)
                if response:
                    conn.sendall(response)
            if framer.pending > MAX_PENDING:
                break  # a message larger than any instrument accepts: drop the client
    except OSError:
        pass
    finally:
        handle._untrack(conn)
        with contextlib.suppress(OSError):
            conn.close()


def _accept_loop(
    handle: ServerHandle, listener: socket.socket, fw: Firmware, lock: threading.RLock, name: str
) -> None:
    while not handle._stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            break
        if handle._stop.is_set():
            conn.close()
            break
        handle._track(conn)
        handle._spawn(_serve_connection, handle, conn, fw, lock, name=f"qkdsim-conn-{name}")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(8)
    return sock


def _serve_pty(handle: ServerHandle, master: int, fw: Firmware, lock: threading.RLock) -> None:
    framer = InputFramer()
    while not handle._stop.is_set():
        try:
            ready, _, _ = select.select([master], [], [], 0.2)
        except (OSError, ValueError):
            break
        if not ready:
            continue
        try:
            data = os.read(master, 1 << 16)
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EBADF):
                break
            continue
        if not data:
            break
        for message in framer.feed(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")):
            with lock:
                response = fw.handle(message)
            if response:
                with contextlib.suppress(OSError):
                    os.write(master, response)


def serve(
    world: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    serial: str = "socket",
) -> ServerHandle:
    """Serve every instrument of ``world`` on loopback; return the running handle.

    ``port`` 0 lets the OS pick a free port per instrument; otherwise instruments get
    ``port``, ``port + 1``, ... in the order of ``world.instruments()``. ``serial`` chooses
    how the serial switch is offered: ``"socket"`` (``socket://`` URL) or ``"pty"``.
    """
    if host not in _LOOPBACK:
        raise ValueError(f"emulator server listens on loopback only, not {host!r}")
    if serial not in ("socket", "pty"):
        raise ValueError(f"serial must be 'socket' or 'pty', got {serial!r}")
    instruments: Mapping[str, Firmware] = world.instruments()
    lock = getattr(world, "lock", None)
    if lock is None:
        lock = threading.RLock()
    bind_host = "127.0.0.1" if host == "localhost" else host
    shown_host = f"[{bind_host}]" if ":" in bind_host else bind_host
    handle = ServerHandle()
    counts: dict[str, int] = {}
    try:
        for i, (resource, fw) in enumerate(instruments.items()):
            role = role_of(fw, resource)
            counts[role] = counts.get(role, 0) + 1
            key = role if counts[role] == 1 else f"{role}{counts[role]}"
            if _is_serial(fw, resource) and serial == "pty":
                master, slave = os.openpty()
                tty.setraw(slave, termios.TCSANOW)
                address = os.ttyname(slave)
                handle._fds.extend([master, slave])
                handle._spawn(_serve_pty, handle, master, fw, lock, name=f"qkdsim-pty-{key}")
            else:
                listener = _listen(bind_host, 0 if port == 0 else port + i)
                handle._track(listener)
                bound = listener.getsockname()[1]
                if _is_serial(fw, resource):
                    address = f"socket://{shown_host}:{bound}"
                else:
                    address = f"TCPIP0::{bind_host}::{bound}::SOCKET"
                handle._spawn(
                    _accept_loop, handle, listener, fw, lock, key, name=f"qkdsim-listen-{key}"
                )
            handle.resources[resource] = address
            handle.resources[key] = address
            handle.roles[key] = resource
    except BaseException:
        handle.close()
        raise
    return handle

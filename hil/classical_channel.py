"""The classical channel of key distillation over ZeroMQ (Bob REQ -> Alice REP).

The distillation messages are already authenticated one by one (:mod:`dsp.mac`), so the
transport only carries bytes: a lost or late reply becomes ``None`` and the frame is
discarded by both parties, exactly as for a rejected message. Bob's host drives with
:class:`ZmqBobChannel` (pass it to :func:`dsp.distill.bob_run_block`); Alice's host runs
:class:`ZmqAliceServer`. Endpoints are the caller's; tests use loopback only.
"""

from __future__ import annotations

import threading

import zmq

from dsp.distill import Alice

__all__ = ["ZmqAliceServer", "ZmqBobChannel"]

_MAX_MSG = 1 << 30


class ZmqBobChannel:
    """Bob's end: sends a request, waits up to ``timeout_s`` for Alice's reply.

    Parameters
    ----------
    endpoint
        Alice's ZeroMQ endpoint, e.g. ``"tcp://127.0.0.1:5599"``.
    timeout_s
        Reply timeout; after a timeout the socket is recreated (REQ lock-step).
    """

    def __init__(self, endpoint: str, timeout_s: float = 60.0) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_s * 1000)
        self._ctx = zmq.Context.instance()
        self._sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, _MAX_MSG)
        sock.connect(self.endpoint)
        return sock

    def exchange(self, data: bytes) -> bytes | None:
        """Send ``data`` to Alice; her reply, or ``None`` on timeout or empty reply."""
        self._sock.send(data)
        if not self._sock.poll(self.timeout_ms, zmq.POLLIN):
            self._sock.close()
            self._sock = self._connect()
            return None
        reply = self._sock.recv()
        return reply or None

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ZmqBobChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ZmqAliceServer:
    """Alice's end: answers every request with ``alice.handle`` (in a thread or inline).

    Parameters
    ----------
    alice
        Alice's party object; call ``alice.load_block(x)`` before a block starts.
    endpoint
        Bind address, e.g. ``"tcp://127.0.0.1:5599"`` (``"tcp://127.0.0.1:*"`` picks a
        free port, see :attr:`endpoint` after construction).
    """

    def __init__(self, alice: Alice, endpoint: str) -> None:
        self.alice = alice
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, _MAX_MSG)
        self._sock.bind(endpoint)
        self.endpoint: str = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def serve_once(self, timeout_s: float = 1.0) -> bool:
        """Answer one request if one arrives within ``timeout_s``; ``True`` if answered."""
        if not self._sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            return False
        data = self._sock.recv()
        try:
            reply = self.alice.handle(data)
        except Exception:
            self.errors += 1
            reply = b""
        self._sock.send(reply)
        return True

    def serve_forever(self) -> None:
        """Answer requests until :meth:`stop`."""
        while not self._stop.is_set():
            self.serve_once(0.1)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._sock.close()

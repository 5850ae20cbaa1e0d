"""ZeroMQ bridge: the QKD node's durable outbox (DEALER) and the KME's receiver (ROUTER).

Both ends use CurveZMQ: the KME is a Curve server whose ZAP handler (``zmq.auth``
ThreadAuthenticator) admits only the configured client public keys; the node pins the
KME's public key. A block is written to the node's SQLite outbox (fsync'd) before
``push`` returns, sent, and deleted from the outbox only when the KME's ACK says its
store committed it (or already had it: the KME deduplicates by (link id, block id)).
Unacknowledged blocks are resent with exponential backoff; after ``max_attempts`` a block
is parked (kept, not lost) until a heartbeat shows the KME is back. Key buffers (the
node's frame and the KME's received frame) are zeroed once the block is acknowledged.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from kms_bridge import protocol as wire
from kms_bridge.store import KeySink

log = logging.getLogger(__name__)

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    block_id INTEGER PRIMARY KEY,
    link_id TEXT NOT NULL,
    digest BLOB NOT NULL,
    frame BLOB NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
);
CREATE TABLE IF NOT EXISTS done (
    block_id INTEGER PRIMARY KEY,
    digest BLOB NOT NULL,
    status INTEGER NOT NULL,
    ts REAL NOT NULL
);
"""


def load_curve_keys(path: str) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys from a ``zmq.auth`` certificate file."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot load CurveZMQ key file {path}: {exc}") from None
    return public, secret


def _wipe(buf: bytearray | memoryview | None) -> None:
    if buf is not None and len(buf):
        buf[:] = bytes(len(buf))


# =============================================================================== KME side
class _Allowlist:
    """ZAP credentials provider: admits only configured client keys, counts refusals."""

    def __init__(self, allowed: dict[str, bytes]):
        self.names = {bytes(k): name for name, k in allowed.items()}
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = bytes(key) in self.names
        if not ok:
            self.denied += 1
            log.warning("bridge: refused CurveZMQ client key %s", bytes(key).decode())
        return ok


@dataclass
class BridgeStats:
    blocks_committed: int = 0
    blocks_duplicate: int = 0
    blocks_conflict: int = 0
    blocks_full: int = 0
    blocks_forbidden: int = 0
    keys_committed: int = 0
    garbled: int = 0
    oversized: int = 0
    heartbeats: int = 0
    errors: int = 0
    last_heartbeat: dict[str, float] = field(default_factory=dict)


class BridgeServer:
    """The KME end: a Curve ROUTER feeding a :class:`KeySink`.

    ``allowed`` maps a client name (used as the audit identity) to its z85 public key.
    ``link_nodes`` (link id -> client name), if not empty, restricts each link to its
    node: a block for another or an undeclared link is answered FORBIDDEN and not stored.
    Frames longer than ``max_frame_bytes`` are counted as oversized and dropped; frames
    that do not decode (bad magic/version, bad digest, truncated, extra parts) are counted
    as garbled and dropped; the loop goes on either way.
    """

    def __init__(
        self,
        sink: KeySink,
        bind: str,
        server_public: bytes,
        server_secret: bytes,
        allowed: dict[str, bytes],
        max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES,
        drain: int = 512,
        link_nodes: dict[str, str] | None = None,
    ):
        self.sink = sink
        self.bind = bind
        self.max_frame_bytes = int(max_frame_bytes)
        self.link_nodes = dict(link_nodes or {})
        self.stats = BridgeStats()
        self._keys = (server_public, server_secret)
        self._allow = _Allowlist(allowed)
        self._drain = drain
        self._ctx = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.endpoint = ""
        self._thread = threading.Thread(target=self._run, name="kme-bridge", daemon=True)

    def start(self, timeout: float = 10.0) -> str:
        """Bind and start serving; return the bound endpoint."""
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=self._allow)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise OSError(f"bridge could not bind {self.bind}: {self._error}")
        return self.endpoint

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def stats_dict(self) -> dict[str, Any]:
        d = dict(self.stats.__dict__)
        d["last_heartbeat"] = dict(self.stats.last_heartbeat)
        d["curve_denied"] = self._allow.denied
        return d

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        try:
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = self._keys
            sock.linger = 0
            # A hard cap far above the protocol limit: libzmq drops a connection that
            # exceeds it; everything between the two is counted here as oversized.
            sock.maxmsgsize = 4 * self.max_frame_bytes
            sock.router_mandatory = False
            sock.bind(self.bind)
            self.endpoint = sock.get(zmq.LAST_ENDPOINT).decode()
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            sock.close()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                try:
                    self._serve_batch(sock)
                except Exception as exc:  # a bug must not stop the bridge: log and go on
                    log.exception("bridge: error while serving: %s", exc)
                    self.stats.errors += 1
        finally:
            sock.close()

    def _serve_batch(self, sock: zmq.Socket) -> None:
        pending: list[
            tuple[list[zmq.Frame], wire.KeyBlock, cf.Future[wire.AckStatus] | wire.AckStatus]
        ]
        pending = []
        for _ in range(self._drain):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            item = self._handle(sock, parts)
            if item is not None:
                pending.append(item)
        for parts, block, res in pending:
            try:
                status = res.result() if isinstance(res, cf.Future) else res
            except Exception as exc:
                log.error("bridge: store failed on block %s: %s", block.block_id, exc)
                self.stats.errors += 1
                status = wire.AckStatus.ERROR
            self._count(status, block)
            ack = wire.Ack(block.link_id, block.block_id, status)
            with contextlib.suppress(zmq.ZMQError):
                sock.send_multipart([parts[0], wire.encode_ack(ack)], zmq.NOBLOCK)
            block.wipe()
            _wipe(parts[-1].buffer)

    def _count(self, status: wire.AckStatus, block: wire.KeyBlock) -> None:
        s = self.stats
        if status == wire.AckStatus.COMMITTED:
            s.blocks_committed += 1
            s.keys_committed += len(block.keys)
        elif status == wire.AckStatus.DUPLICATE:
            s.blocks_duplicate += 1
        elif status == wire.AckStatus.CONFLICT:
            s.blocks_conflict += 1
        elif status == wire.AckStatus.FULL:
            s.blocks_full += 1
        elif status == wire.AckStatus.FORBIDDEN:
            s.blocks_forbidden += 1

    def _handle(
        self, sock: zmq.Socket, parts: list[zmq.Frame]
    ) -> tuple[list[zmq.Frame], wire.KeyBlock, cf.Future[wire.AckStatus] | wire.AckStatus] | None:
        if len(parts) != 2:
            self.stats.garbled += 1
            return None
        ident, frame = parts
        if len(frame) > self.max_frame_bytes:
            self.stats.oversized += 1
            _wipe(frame.buffer)
            return None
        peer_key = (frame.get("User-Id") or "").encode()
        peer = self._allow.names.get(peer_key, peer_key.decode())
        try:
            mtype = wire.peek_type(frame.buffer)
            if mtype == wire.MsgType.HEARTBEAT:
                seq = wire.decode_heartbeat(frame.buffer)
                self.stats.heartbeats += 1
                self.stats.last_heartbeat[peer] = time.time()
                sock.send_multipart([ident, wire.encode_heartbeat(seq, ack=True)], zmq.NOBLOCK)
                return None
            if mtype == wire.MsgType.STATS_REQ:
                sock.send_multipart(
                    [ident, wire.encode_json(wire.MsgType.STATS, self.stats_dict())], zmq.NOBLOCK
                )
                return None
            if mtype != wire.MsgType.BLOCK:
                raise wire.ProtocolError(f"unexpected message type {mtype.name} at the KME")
            block = wire.decode_block(frame.buffer)
        except wire.ProtocolError as exc:
            self.stats.garbled += 1
            log.warning("bridge: dropped garbled frame from %s: %s", peer, exc)
            _wipe(frame.buffer)
            return None
        except zmq.ZMQError:
            return None
        if self.link_nodes and self.link_nodes.get(block.link_id) != peer:
            log.warning("bridge: %s may not feed link %r", peer, block.link_id)
            return parts, block, wire.AckStatus.FORBIDDEN
        submit = getattr(self.sink, "commit_block_async", None)
        if submit is not None:
            return parts, block, submit(block, peer)
        try:
            return parts, block, self.sink.commit_block(block, peer)
        except Exception as exc:
            log.error("bridge: sink failed on block %s: %s", block.block_id, exc)
            self.stats.errors += 1
            return parts, block, wire.AckStatus.ERROR


# ============================================================================== node side
@dataclass
class _Inflight:
    frame: bytearray
    t_push: float
    attempts: int = 0
    next_at: float = 0.0
    sent_at: float = 0.0


class BridgeNode:
    """The QKD node's end: durable outbox + Curve DEALER sender thread.

    ``push`` returns once the block is committed (fsync'd) in the outbox; the sender
    thread delivers it and removes it on ACK. Restarting a node on the same outbox file
    resumes delivery of everything not yet acknowledged.
    """

    def __init__(
        self,
        outbox_path: str,
        endpoint: str,
        server_public: bytes,
        client_public: bytes,
        client_secret: bytes,
        link_id: str,
        *,
        window: int = 32,
        ack_timeout: float = 0.5,
        max_attempts: int = 8,
        backoff_max: float = 2.0,
        heartbeat_interval: float = 1.0,
        max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES,
    ):
        self.link_id = link_id
        self.max_frame_bytes = max_frame_bytes
        self.endpoint = endpoint
        self.window = window
        self.ack_timeout = ack_timeout
        self.max_attempts = max_attempts
        self.backoff_max = backoff_max
        self.heartbeat_interval = heartbeat_interval
        self._keys = (server_public, client_public, client_secret)
        self._path = outbox_path
        self._con = self._open()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._inflight: dict[int, _Inflight] = {}
        self._parked: set[int] = set()
        self.latencies: collections.deque[float] = collections.deque(maxlen=100_000)
        self.counters = collections.Counter[str]()
        self.last_seen = 0.0
        self._push_times: dict[int, float] = {}
        self._dirty_at = 0.0  # when acknowledged blocks were last deleted (0: checkpointed)
        self._thread = threading.Thread(target=self._run, name=f"node-{link_id}", daemon=True)
        self._thread.start()

    def _open(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA secure_delete=ON")
            con.execute("PRAGMA busy_timeout=5000")
            con.executescript(OUTBOX_SCHEMA)
        except sqlite3.Error as exc:
            raise OSError(f"cannot open outbox {self._path}: {exc}") from None
        return con

    # ------------------------------------------------------------------ public API
    def push(
        self,
        block_id: int,
        keys: Sequence[tuple[str, bytes | bytearray]],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Commit one key block to the outbox (durably) and queue it for delivery.

        Pushing the same block again (same id, same content) is a no-op, so a caller
        that crashed around ``push`` may simply repeat it; the same id with other content
        raises ``ValueError``.
        """
        t0 = time.perf_counter()
        frame = wire.encode_block(self.link_id, block_id, keys, metadata)
        if len(frame) > self.max_frame_bytes:
            size = len(frame)
            _wipe(frame)
            raise ValueError(
                f"block {block_id} encodes to {size} bytes, above the bridge limit of "
                f"{self.max_frame_bytes}: split it into smaller blocks"
            )
        digest = hashlib.sha256(frame).digest()
        try:
            with self._lock:
                for table in ("outbox", "done"):
                    row = self._con.execute(
                        f"SELECT digest FROM {table} WHERE block_id = ?", (block_id,)
                    ).fetchone()
                    if row is not None:
                        if row[0] != digest:
                            raise ValueError(
                                f"block id {block_id} already used on link {self.link_id} "
                                "with different keys"
                            )
                        return
                try:
                    self._con.execute("BEGIN IMMEDIATE")
                    self._con.execute(
                        "INSERT INTO outbox (block_id, link_id, digest, frame, created)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (block_id, self.link_id, digest, bytes(frame), time.time()),
                    )
                    self._con.execute("COMMIT")
                except sqlite3.Error as exc:
                    if self._con.in_transaction:
                        self._con.execute("ROLLBACK")
                    raise OSError(
                        f"outbox {self._path}: cannot store block {block_id}: {exc}"
                    ) from None
                self._push_times[block_id] = t0
        finally:
            _wipe(frame)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def _count(self, state: str) -> int:
        with self._lock:
            q = "SELECT COUNT(*) FROM outbox WHERE state = ?"
            return int(self._con.execute(q, (state,)).fetchone()[0])

    def pending(self) -> int:
        """Blocks in the outbox not yet acknowledged (including parked ones)."""
        return self._count("pending")

    def rejected(self) -> int:
        """Blocks the KME refused (CONFLICT, FORBIDDEN, ERROR): kept in the outbox, never
        resent; an operator must look at them (table ``outbox``, state 'rejected')."""
        return self._count("rejected")

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every pushed block is acknowledged. False on timeout, and False if
        the outbox holds rejected blocks (those keys were not delivered)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.pending() == 0:
                return self.rejected() == 0
            if time.monotonic() >= deadline:
                return False
            with self._idle:
                self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic())))

    def health(self) -> dict[str, Any]:
        """Link state: connected (heartbeat answered recently), queue sizes, counters."""
        age = time.time() - self.last_seen if self.last_seen else None
        return {
            "link_id": self.link_id,
            "connected": age is not None and age < 3 * self.heartbeat_interval,
            "last_heartbeat_age_s": age,
            "pending": self.pending(),
            "rejected": self.rejected(),
            "inflight": len(self._inflight),
            "parked": len(self._parked),
            **self.counters,
        }

    def request_stats(self, timeout: float = 2.0) -> dict[str, Any]:
        """Ask the KME for its bridge counters (own short-lived socket)."""
        ctx = zmq.Context.instance()
        sock = self._socket(ctx)
        try:
            sock.send(wire.encode_json(wire.MsgType.STATS_REQ, {}))
            if not sock.poll(int(timeout * 1000)):
                raise TimeoutError(f"KME at {self.endpoint} did not answer a stats request")
            return wire.decode_json(sock.recv())
        finally:
            sock.close(0)

    def close(self) -> None:
        """Stop the sender; everything unacknowledged stays in the outbox."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")
        self._thread.join(timeout=5)
        for inf in self._inflight.values():
            _wipe(inf.frame)
        self._inflight.clear()
        self._checkpoint()
        with self._lock:
            self._con.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> BridgeNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _checkpoint(self) -> None:
        """Outbox drained and idle for 1 s: truncate the WAL so that the pre-images of
        acknowledged keys go too."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            if self._con.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is None:
                self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ------------------------------------------------------------------ sender thread
    def _socket(self, ctx: zmq.Context) -> zmq.Socket:
        server_public, client_public, client_secret = self._keys
        sock = ctx.socket(zmq.DEALER)
        sock.curve_serverkey = server_public
        sock.curve_publickey = client_public
        sock.curve_secretkey = client_secret
        sock.linger = 0
        sock.immediate = True
        sock.reconnect_ivl = 50
        sock.reconnect_ivl_max = 1000
        sock.connect(self.endpoint)
        return sock

    def _backoff(self, attempts: int) -> float:
        return min(self.backoff_max, self.ack_timeout * 2 ** max(0, attempts - 1))

    def _fill(self) -> None:
        room = self.window - len(self._inflight)
        if room <= 0:
            return
        skip = set(self._inflight) | self._parked
        with self._lock:
            rows = self._con.execute(
                "SELECT block_id, frame, created FROM outbox WHERE state = 'pending'"
                " ORDER BY block_id LIMIT ?",
                (room + len(skip),),
            ).fetchall()
        now = time.monotonic()
        for block_id, frame, created in rows:
            if block_id in skip or len(self._inflight) >= self.window:
                continue
            t_push = self._push_times.pop(block_id, None)
            if t_push is None:
                t_push = time.perf_counter() - max(0.0, time.time() - created)
            self._inflight[block_id] = _Inflight(bytearray(frame), t_push, next_at=now)

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = self._socket(ctx)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        hb_seq = 0
        next_hb = 0.0
        refill = True
        try:
            while not self._stop.is_set():
                try:
                    now = time.monotonic()
                    if refill:
                        self._fill()
                        refill = False
                    for block_id, inf in list(self._inflight.items()):
                        if block_id in self._parked or inf.next_at > now:
                            continue
                        if inf.attempts >= self.max_attempts:
                            self._parked.add(block_id)
                            self.counters["parked"] += 1
                            continue
                        try:
                            sock.send(inf.frame, zmq.NOBLOCK, copy=True)
                            self.counters["sent"] += 1
                        except zmq.Again:
                            self.counters["send_blocked"] += 1
                        if inf.attempts:
                            self.counters["retries"] += 1
                        inf.attempts += 1
                        inf.sent_at = now
                        inf.next_at = now + self._backoff(inf.attempts)
                    if self._dirty_at and not self._inflight and now - self._dirty_at > 1.0:
                        self._checkpoint()
                        self._dirty_at = 0.0
                    if now >= next_hb:
                        hb_seq += 1
                        with contextlib.suppress(zmq.Again):
                            sock.send(wire.encode_heartbeat(hb_seq), zmq.NOBLOCK)
                        next_hb = now + self.heartbeat_interval
                    deadlines = [next_hb] + [
                        i.next_at for b, i in self._inflight.items() if b not in self._parked
                    ]
                    wait = max(0.0, min(deadlines) - time.monotonic())
                    events = dict(poller.poll(int(wait * 1000) + 1))
                    if self._wake_r in events:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        refill = True
                    if sock in events:
                        refill |= self._receive(sock)
                except Exception as exc:  # keep delivering: log, count, retry later
                    log.exception("node %s: sender error: %s", self.link_id, exc)
                    self.counters["sender_errors"] += 1
                    time.sleep(0.1)
                    refill = True
        finally:
            sock.close(0)
            ctx.term()

    def _receive(self, sock: zmq.Socket) -> bool:
        done: list[tuple[int, wire.AckStatus]] = []
        rejected: list[int] = []
        seen: set[int] = set()
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                mtype = wire.peek_type(msg)
                if mtype == wire.MsgType.HEARTBEAT_ACK:
                    gap = time.time() - self.last_seen if self.last_seen else 0.0
                    self.last_seen = time.time()
                    if self._parked or gap > 2 * self.heartbeat_interval:
                        self._resume_all()
                    continue
                if mtype != wire.MsgType.ACK:
                    continue
                ack = wire.decode_ack(msg)
            except wire.ProtocolError:
                self.counters["garbled_replies"] += 1
                continue
            self.last_seen = time.time()
            inf = self._inflight.get(ack.block_id)
            if inf is None or ack.block_id in seen:
                continue  # a late or repeated ACK (the block was sent more than once)
            seen.add(ack.block_id)
            if ack.status in (wire.AckStatus.COMMITTED, wire.AckStatus.DUPLICATE):
                done.append((ack.block_id, ack.status))
                self.latencies.append(time.perf_counter() - inf.t_push)
                self.counters["acked"] += 1
            elif ack.status in (wire.AckStatus.FULL, wire.AckStatus.ERROR):
                # The KME has no room, or its store failed: keep the block, retry later.
                seen.discard(ack.block_id)
                self.counters["kme_full" if ack.status == wire.AckStatus.FULL else "kme_error"] += 1
                inf.next_at = time.monotonic() + self.backoff_max
            else:
                rejected.append(ack.block_id)
                self.counters["rejected"] += 1
                log.error("node %s: KME rejected block %s (%s)", self.link_id, ack.block_id, ack)
        if not done and not rejected:
            return False
        with self._lock:
            try:
                self._con.execute("BEGIN IMMEDIATE")
                for block_id, status in done:
                    self._con.execute(
                        "INSERT OR REPLACE INTO done (block_id, digest, status, ts)"
                        " SELECT block_id, digest, ?, ? FROM outbox WHERE block_id = ?",
                        (int(status), time.time(), block_id),
                    )
                    self._con.execute("DELETE FROM outbox WHERE block_id = ?", (block_id,))
                for block_id in rejected:
                    self._con.execute(
                        "UPDATE outbox SET state = 'rejected' WHERE block_id = ?", (block_id,)
                    )
                self._con.execute("COMMIT")
            except sqlite3.Error:
                # Not recorded: the blocks stay in flight and are resent; the KME answers
                # DUPLICATE, so nothing is lost or doubled.
                if self._con.in_transaction:
                    self._con.execute("ROLLBACK")
                raise
        for block_id in [b for b, _ in done] + rejected:
            inf = self._inflight.pop(block_id)
            _wipe(inf.frame)
            self._parked.discard(block_id)
        self._dirty_at = time.monotonic()
        with self._idle:
            self._idle.notify_all()
        return True

    def _resume_all(self) -> None:
        now = time.monotonic()
        for block_id, inf in self._inflight.items():
            if inf.attempts:
                inf.next_at = now
            if block_id in self._parked:
                inf.attempts = 0
        self._parked.clear()

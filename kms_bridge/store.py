"""KME key store: the sink interface the bridge feeds, and the default SQLite store.

The bridge only needs a :class:`KeySink`: ``commit_block`` must make the block durable
before it returns (the ACK is sent after it), and must recognise a block it already has
(the node retries after a crash or a lost ACK). A site's own KMS is fed by writing a small
``KeySink`` adapter; see docs/kms.md.

:class:`SqliteKeyStore` is the default sink and also serves ETSI GS QKD 014: SQLite in WAL
mode with ``synchronous=FULL`` (fsync on every commit) and ``secure_delete`` (erased keys
are overwritten in the database file). One writer thread owns the connection and commits
concurrent operations together (group commit: one fsync for many requests); each
operation runs in its own savepoint, so one failing operation does not undo the others.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from kms_bridge import audit
from kms_bridge.protocol import AckStatus, KeyBlock

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    link_id TEXT NOT NULL,
    block_id INTEGER NOT NULL,
    digest BLOB NOT NULL,
    n_keys INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    peer TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (link_id, block_id)
);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    link_id TEXT NOT NULL,
    block_id INTEGER NOT NULL,
    nbits INTEGER NOT NULL,
    key BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_by_link ON keys (link_id, nbits);
CREATE TABLE IF NOT EXISTS spent (
    key_id TEXT PRIMARY KEY,
    link_id TEXT NOT NULL,
    sae TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS link_count (
    link_id TEXT PRIMARY KEY,
    stored INTEGER NOT NULL
);
"""


class KeySink(Protocol):
    """What the bridge feeds. Implement this to hand keys to an existing KMS."""

    def commit_block(self, block: KeyBlock, peer: str) -> AckStatus:
        """Store ``block`` durably, then return COMMITTED; DUPLICATE if this (link, block id)
        with the same digest is already stored; CONFLICT if stored with another digest;
        FULL if there is no room (the node keeps it and retries later)."""
        ...

    def close(self) -> None: ...


class RefusedError(Exception):
    """A request the KME refuses; ``status`` is the HTTP status the 014 API answers with."""

    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


@dataclass
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: cf.Future[Any]


@dataclass(frozen=True)
class StoreCounts:
    stored_key_count: int
    max_key_count: int


class SqliteKeyStore:
    """Default KME store (and :class:`KeySink`) with a group-committing writer thread.

    Parameters: ``path`` of the database file; ``max_key_count`` per link (capacity
    reported by the status call; a block that does not fit is answered FULL);
    ``batch`` the largest number of operations committed together.
    """

    def __init__(self, path: str, max_key_count: int = 1_000_000, batch: int = 256):
        self.path = path
        self.max_key_count = int(max_key_count)
        self._batch = batch
        self._q: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        try:
            self._con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.execute("PRAGMA secure_delete=ON")
            self._con.execute("PRAGMA busy_timeout=5000")
            self._con.executescript(SCHEMA)
            audit.ensure_schema(self._con)
        except sqlite3.Error as exc:
            raise OSError(f"cannot open key store {path}: {exc}") from None
        self._chain = audit.Chain()
        self.checkpoint_idle_s = 1.0
        self._closed = False
        self._thread = threading.Thread(target=self._writer, name="kme-store", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- writer thread
    def _writer(self) -> None:
        con = self._con
        dirty = False
        while True:
            try:
                op = self._q.get(timeout=self.checkpoint_idle_s if dirty else None)
            except queue.Empty:
                # Idle: fold the WAL into the database and truncate it, so the pre-images
                # of erased keys do not linger in the log (secure_delete zeroes the pages).
                with contextlib.suppress(sqlite3.Error):
                    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                dirty = False
                continue
            if op is None:
                break
            ops = [op]
            stop = False
            while len(ops) < self._batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                ops.append(nxt)
            self._run_batch(con, ops)
            dirty = True
            if stop:
                break
        if dirty:
            with contextlib.suppress(sqlite3.Error):
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()

    def _run_batch(self, con: sqlite3.Connection, ops: list[_Op]) -> None:
        results: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            con.execute("BEGIN IMMEDIATE")
            for op in ops:
                con.execute("SAVEPOINT op")
                try:
                    r = op.fn(con)
                    con.execute("RELEASE op")
                    results.append((op, r, None))
                except Exception as exc:
                    self._chain.invalidate()
                    con.execute("ROLLBACK TO op")
                    con.execute("RELEASE op")
                    results.append((op, None, exc))
            con.execute("COMMIT")
        except Exception as exc:
            self._chain.invalidate()
            if con.in_transaction:
                con.execute("ROLLBACK")
            for op in ops:
                op.future.set_exception(OSError(f"key store commit failed: {exc}"))
            return
        for op, r, err in results:
            if err is not None:
                op.future.set_exception(err)
            else:
                op.future.set_result(r)

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> cf.Future[T]:
        """Run ``fn(con)`` in the next group commit; the future resolves after COMMIT."""
        if self._closed:
            raise RuntimeError(f"key store {self.path} is closed")
        fut: cf.Future[T] = cf.Future()
        self._q.put(_Op(fn, fut))
        return fut

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._q.put(None)
            self._thread.join(timeout=10)

    # ---------------------------------------------------------------- ingest
    def commit_block_async(self, block: KeyBlock, peer: str) -> cf.Future[AckStatus]:
        def op(con: sqlite3.Connection) -> AckStatus:
            row = con.execute(
                "SELECT digest FROM blocks WHERE link_id = ? AND block_id = ?",
                (block.link_id, block.block_id),
            ).fetchone()
            if row is not None:
                return AckStatus.DUPLICATE if row[0] == block.digest else AckStatus.CONFLICT
            stored = _stored(con, block.link_id)
            if stored + len(block.keys) > self.max_key_count:
                self._chain.append(
                    con,
                    "refusal",
                    peer,
                    block.link_id,
                    [],
                    {"block_id": block.block_id, "reason": "store full"},
                )
                return AckStatus.FULL
            con.executemany(
                "INSERT INTO keys (key_id, link_id, block_id, nbits, key) VALUES (?, ?, ?, ?, ?)",
                [(k, block.link_id, block.block_id, 8 * len(v), bytes(v)) for k, v in block.keys],
            )
            con.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    block.link_id,
                    block.block_id,
                    block.digest,
                    len(block.keys),
                    json.dumps(block.metadata, sort_keys=True),
                    peer,
                    time.time(),
                ),
            )
            _add_count(con, block.link_id, len(block.keys))
            self._chain.append(
                con,
                "ingest",
                peer,
                block.link_id,
                [k for k, _ in block.keys],
                {"block_id": block.block_id, "n_keys": len(block.keys)},
            )
            return AckStatus.COMMITTED

        return self.submit(op)

    def commit_block(self, block: KeyBlock, peer: str) -> AckStatus:
        return self.commit_block_async(block, peer).result()

    # ---------------------------------------------------------------- ETSI 014 side
    def counts(self, link_id: str) -> cf.Future[StoreCounts]:
        return self.submit(lambda con: StoreCounts(_stored(con, link_id), self.max_key_count))

    def take_new(
        self, link_id: str, number: int, nbits: int, sae: str, peer: str, request: dict[str, Any]
    ) -> cf.Future[list[tuple[str, bytes]] | RefusedError]:
        """Hand out ``number`` fresh keys of ``nbits`` and erase them (master, ``enc_keys``)."""

        def op(con: sqlite3.Connection) -> list[tuple[str, bytes]] | RefusedError:
            self._chain.append(con, "request", sae, peer, [], request)
            rows = con.execute(
                "SELECT key_id, key FROM keys WHERE link_id = ? AND nbits = ?"
                " ORDER BY rowid LIMIT ?",
                (link_id, nbits, number),
            ).fetchall()
            if len(rows) < number:
                ref = RefusedError(
                    503,
                    "not enough key material",
                    [{"available": len(rows), "requested": number, "size": nbits}],
                )
                self._chain.append(
                    con, "refusal", sae, peer, [], {"reason": ref.message, **request}
                )
                return ref
            _erase(con, rows, link_id, sae)
            ids = [r[0] for r in rows]
            self._chain.append(con, "delivery", sae, peer, ids, {"path": request.get("path", "")})
            return [(r[0], r[1]) for r in rows]

        return self.submit(op)

    def take_ids(
        self, link_id: str, key_ids: Sequence[str], sae: str, peer: str, request: dict[str, Any]
    ) -> cf.Future[list[tuple[str, bytes]] | RefusedError]:
        """Hand out exactly these keys and erase them (slave, ``dec_keys``): all or none."""

        def op(con: sqlite3.Connection) -> list[tuple[str, bytes]] | RefusedError:
            self._chain.append(con, "request", sae, peer, list(key_ids), request)
            found: dict[str, bytes] = {}
            for kid in key_ids:
                row = con.execute(
                    "SELECT key FROM keys WHERE key_id = ? AND link_id = ?", (kid, link_id)
                ).fetchone()
                if row is not None:
                    found[kid] = row[0]
            missing = [k for k in key_ids if k not in found]
            if missing:
                spent = {
                    r[0]
                    for k in missing
                    for r in con.execute("SELECT key_id FROM spent WHERE key_id = ?", (k,))
                }
                details = [
                    {"key_ID": k, "reason": "already delivered" if k in spent else "unknown"}
                    for k in missing
                ]
                ref = RefusedError(400, "key_ID not available", details)
                self._chain.append(
                    con, "refusal", sae, peer, missing, {"reason": ref.message, **request}
                )
                return ref
            rows = [(k, found[k]) for k in key_ids]
            _erase(con, rows, link_id, sae)
            self._chain.append(
                con, "delivery", sae, peer, list(key_ids), {"path": request.get("path")}
            )
            return rows

        return self.submit(op)

    def audit_event(
        self,
        event: str,
        identity: str,
        peer: str,
        key_ids: Sequence[str] = (),
        detail: dict[str, Any] | None = None,
    ) -> cf.Future[str]:
        """Append one audit record (e.g. a refusal decided before the store is touched)."""
        return self.submit(
            lambda con: self._chain.append(con, event, identity, peer, key_ids, detail)
        )


def _stored(con: sqlite3.Connection, link_id: str) -> int:
    row = con.execute("SELECT stored FROM link_count WHERE link_id = ?", (link_id,)).fetchone()
    return int(row[0]) if row else 0


def _add_count(con: sqlite3.Connection, link_id: str, delta: int) -> None:
    con.execute(
        "INSERT INTO link_count (link_id, stored) VALUES (?, ?)"
        " ON CONFLICT(link_id) DO UPDATE SET stored = stored + excluded.stored",
        (link_id, delta),
    )


def _erase(con: sqlite3.Connection, rows: Sequence[Any], link_id: str, sae: str) -> None:
    now = time.time()
    con.executemany("DELETE FROM keys WHERE key_id = ?", [(r[0],) for r in rows])
    con.executemany(
        "INSERT INTO spent (key_id, link_id, sae, ts) VALUES (?, ?, ?, ?)",
        [(r[0], link_id, sae, now) for r in rows],
    )
    _add_count(con, link_id, -len(rows))

"""Append-only, hash-chained audit log in an SQLite table.

Each record holds time, event (``ingest``, ``request``, ``delivery``, ``refusal``),
identity, peer, key IDs and a small JSON detail (never key bytes). Its hash is
``SHA-256(prev_hash || canonical JSON of the record)``, so editing, deleting or
reordering any record breaks the chain at that point; triggers refuse UPDATE and
DELETE through SQLite itself. Records are appended inside the caller's transaction, so a
delivery and its audit record commit (or vanish) together.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
# One encoder for every canonical form (json.dumps with options builds a new one per call).
_COMPACT = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=True)
EVENTS = ("ingest", "request", "delivery", "refusal")

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    event TEXT NOT NULL,
    identity TEXT NOT NULL,
    peer TEXT NOT NULL,
    key_ids TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"""


def record_hash(
    prev_hash: str,
    seq: int,
    ts: float,
    event: str,
    identity: str,
    peer: str,
    key_ids: str,
    detail: str,
) -> str:
    """Chain hash of one record (the canonical form documented in docs/kms.md)."""
    canon = _COMPACT.encode([seq, repr(ts), event, identity, peer, key_ids, detail])
    return hashlib.sha256(prev_hash.encode() + canon.encode()).hexdigest()


def ensure_schema(con: sqlite3.Connection) -> None:
    con.executescript(SCHEMA)


class Chain:
    """The chain head (last seq and hash) cached by the single writer of a database.

    Saves one query per record; :meth:`invalidate` after any rollback so that the next
    append reads the head from the table again.
    """

    def __init__(self) -> None:
        self.head: tuple[int, str] | None = None

    def invalidate(self) -> None:
        self.head = None

    def append(
        self,
        con: sqlite3.Connection,
        event: str,
        identity: str,
        peer: str = "",
        key_ids: Iterable[str] = (),
        detail: dict[str, Any] | None = None,
    ) -> str:
        """Append one record inside the caller's open write transaction; return its hash."""
        h = append(con, event, identity, peer, key_ids, detail, head=self.head)
        self.head = (self.head[0] + 1 if self.head else _last_seq(con), h)
        return h


def _last_seq(con: sqlite3.Connection) -> int:
    return int(con.execute("SELECT MAX(seq) FROM audit").fetchone()[0])


def append(
    con: sqlite3.Connection,
    event: str,
    identity: str,
    peer: str = "",
    key_ids: Iterable[str] = (),
    detail: dict[str, Any] | None = None,
    head: tuple[int, str] | None = None,
) -> str:
    """Append one record inside the caller's open write transaction; return its hash.

    ``head`` is the known (seq, hash) of the last record; None reads it from the table.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}; expected one of {EVENTS}")
    if head is None:
        row = con.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
    else:
        seq, prev = head[0] + 1, head[1]
    ts = time.time()
    kids = _COMPACT.encode(list(key_ids))
    det = _COMPACT.encode(detail or {})
    h = record_hash(prev, seq, ts, event, identity, peer, kids, det)
    con.execute(
        "INSERT INTO audit (seq, ts, event, identity, peer, key_ids, detail, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, ts, event, identity, peer, kids, det, prev, h),
    )
    return h


@dataclass
class VerifyResult:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    reason: str = ""


def verify(con: sqlite3.Connection) -> VerifyResult:
    """Walk the chain from the genesis; report the first record that does not verify."""
    prev = GENESIS
    expected_seq = 1
    n = 0
    cur = con.execute(
        "SELECT seq, ts, event, identity, peer, key_ids, detail, prev_hash, hash"
        " FROM audit ORDER BY seq"
    )
    for seq, ts, event, identity, peer, kids, det, prev_hash, h in cur:
        if seq != expected_seq:
            return VerifyResult(False, n, expected_seq, f"record {expected_seq} is missing")
        if prev_hash != prev:
            return VerifyResult(False, n, seq, "prev_hash does not match the previous record")
        if record_hash(prev, seq, ts, event, identity, peer, kids, det) != h:
            return VerifyResult(False, n, seq, "record content does not match its hash")
        prev = h
        expected_seq += 1
        n += 1
    return VerifyResult(True, n)


def verify_file(path: str) -> VerifyResult:
    """Verify the audit chain of a KME database file (opened read-only)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise FileNotFoundError(f"cannot open audit database {path}: {exc}") from None
    try:
        return verify(con)
    except sqlite3.Error as exc:
        raise ValueError(f"{path} has no readable audit table: {exc}") from None
    finally:
        con.close()


def records(con: sqlite3.Connection, event: str | None = None) -> list[dict[str, Any]]:
    """Audit records as dicts (for tests and the CLI), oldest first."""
    q = "SELECT seq, ts, event, identity, peer, key_ids, detail FROM audit"
    args: tuple[Any, ...] = ()
    if event:
        q += " WHERE event = ?"
        args = (event,)
    out = []
    for seq, ts, ev, identity, peer, kids, det in con.execute(q + " ORDER BY seq", args):
        out.append(
            {
                "seq": seq,
                "ts": ts,
                "event": ev,
                "identity": identity,
                "peer": peer,
                "key_ids": json.loads(kids),
                "detail": json.loads(det),
            }
        )
    return out

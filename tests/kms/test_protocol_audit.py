"""Bridge codec, audit chain and store unit tests (in-process, no network)."""

from __future__ import annotations

import os
import pathlib
import sqlite3
import uuid

import pytest

from hil import cli
from kms_bridge import audit
from kms_bridge import protocol as wire
from kms_bridge.store import RefusedError, SqliteKeyStore


def _keys(n: int, size: int = 32) -> list[tuple[str, bytes]]:
    return [(str(uuid.uuid4()), os.urandom(size)) for _ in range(n)]


def test_block_roundtrip_and_wipe() -> None:
    keys = _keys(5)
    frame = wire.encode_block("link-1", 2**40 + 7, keys, {"qber": 0.01, "frame": 3})
    block = wire.decode_block(bytes(frame))
    assert (block.link_id, block.block_id) == ("link-1", 2**40 + 7)
    assert [(k, bytes(v)) for k, v in block.keys] == keys
    assert block.metadata == {"frame": 3, "qber": 0.01}
    block.wipe()
    assert all(v == bytearray(len(v)) for _, v in block.keys)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: f[:-1],  # truncated
        lambda f: f[:20] + bytes([f[20] ^ 1]) + f[21:],  # one bit flipped
        lambda f: b"XYZ" + f[3:],  # bad magic
        lambda f: f[:3] + bytes([9]) + f[4:],  # unknown version
        lambda f: os.urandom(len(f)),  # noise
        lambda f: b"",
    ],
)
def test_garbled_block_is_rejected(mutate) -> None:
    frame = bytes(wire.encode_block("l", 1, _keys(3)))
    with pytest.raises(wire.ProtocolError):
        wire.decode_block(mutate(frame))


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="not a UUID"):
        wire.encode_block("l", 1, [("nope", b"k")])
    kid = str(uuid.uuid4())
    with pytest.raises(ValueError, match="twice"):
        wire.encode_block("l", 1, [(kid, b"a"), (kid, b"b")])


def _store_with_keys(path: str, n: int = 8) -> tuple[SqliteKeyStore, list[tuple[str, bytes]]]:
    store = SqliteKeyStore(path)
    keys = _keys(n)
    block = wire.decode_block(bytes(wire.encode_block("link-1", 1, keys)))
    assert store.commit_block(block, "alice") == wire.AckStatus.COMMITTED
    again = wire.decode_block(bytes(wire.encode_block("link-1", 1, keys)))
    assert store.commit_block(again, "alice") == wire.AckStatus.DUPLICATE
    other = wire.decode_block(bytes(wire.encode_block("link-1", 1, _keys(2))))
    assert store.commit_block(other, "alice") == wire.AckStatus.CONFLICT
    return store, keys


def test_store_hands_out_once_and_audits_without_key_bytes(tmp_path) -> None:
    db = str(tmp_path / "kme.sqlite")
    store, keys = _store_with_keys(db)
    got = store.take_new("link-1", 3, 256, "SAE-A", "SAE-B", {"path": "enc"}).result()
    assert got == keys[:3]
    ids = [k for k, _ in got]
    again = store.take_ids("link-1", ids[:1], "SAE-B", "SAE-A", {}).result()
    assert isinstance(again, RefusedError) and again.status == 400
    assert again.details == [{"key_ID": ids[0], "reason": "already delivered"}]
    short = store.take_new("link-1", 100, 256, "SAE-A", "SAE-B", {}).result()
    assert isinstance(short, RefusedError) and short.status == 503
    store.close()
    # Erased means erased: the delivered keys' bytes are nowhere in the database files.
    raw = b"".join(pathlib.Path(p).read_bytes() for p in (db, db + "-wal") if os.path.exists(p))
    assert all(k not in raw for _, k in got) and all(k in raw for _, k in keys[3:])
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM keys").fetchone()[0] == len(keys) - 3
    assert audit.verify(con).ok
    events = [r["event"] for r in audit.records(con)]
    assert events[:3] == ["ingest", "request", "delivery"] and "refusal" in events
    dump = "\n".join(str(r) for r in con.execute("SELECT * FROM audit"))
    for _, k in keys:
        assert k.hex() not in dump and k not in dump.encode()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE audit SET identity = 'mallory' WHERE seq = 2")
    con.close()


@pytest.fixture
def cli_main(monkeypatch):
    """``qkd-hil`` with only the kme area registered (the other areas' imports are slow)."""
    monkeypatch.setattr(cli, "AREAS", ("kms_bridge.cli",))
    return cli.main


def test_audit_verify_finds_an_edited_record(tmp_path, capsys, cli_main) -> None:
    db = str(tmp_path / "kme.sqlite")
    store, _ = _store_with_keys(db)
    store.take_new("link-1", 2, 256, "SAE-A", "SAE-B", {}).result()
    store.close()
    assert cli_main(["kme", "audit", "verify", "--db", db]) == 0
    # An attacker with file access drops the trigger and rewrites who got the keys.
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER audit_no_update")
    con.execute("UPDATE audit SET identity = 'SAE-X' WHERE event = 'delivery'")
    con.commit()
    bad_seq = con.execute("SELECT seq FROM audit WHERE event = 'delivery'").fetchone()[0]
    con.close()
    capsys.readouterr()
    assert cli_main(["kme", "audit", "verify", "--db", db]) == 1
    assert f"BROKEN at record {bad_seq}" in capsys.readouterr().err


def test_store_capacity_limit_answers_full_and_is_reported(tmp_path) -> None:
    store = SqliteKeyStore(str(tmp_path / "kme.sqlite"), max_key_count=10)
    try:
        fits = wire.decode_block(bytes(wire.encode_block("l", 1, _keys(8))))
        assert store.commit_block(fits, "alice") == wire.AckStatus.COMMITTED
        too_many = wire.decode_block(bytes(wire.encode_block("l", 2, _keys(3))))
        assert store.commit_block(too_many, "alice") == wire.AckStatus.FULL
        counts = store.counts("l").result()
        assert (counts.stored_key_count, counts.max_key_count) == (8, 10)
        store.take_new("l", 5, 256, "SAE-A", "SAE-B", {}).result()
        assert store.commit_block(too_many, "alice") == wire.AckStatus.COMMITTED
    finally:
        store.close()


def test_cli_keygen_certs_and_config_errors(tmp_path, capsys, cli_main) -> None:
    out = str(tmp_path)
    assert cli_main(["kme", "keygen", "node", "--out", out]) == 0
    assert cli_main(["kme", "keygen", "node", "--out", out]) == 2  # never overwrite a secret
    assert cli_main(["kme", "certs", "--out", out, "--kme", "KME-A", "--sae", "SAE-A"]) == 0
    assert {"ca.crt", "KME-A.crt", "SAE-A.key", "node.key", "node.key_secret"} <= set(
        os.listdir(out)
    )
    assert oct(os.stat(os.path.join(out, "SAE-A.key")).st_mode & 0o777) == "0o600"
    bad = tmp_path / "bad.yaml"
    bad.write_text("kme_id: KME-A\ndata_dir: d\nbridge: {bind: 'tcp://127.0.0.1:1'}\n")
    capsys.readouterr()
    assert cli_main(["kme", "audit", "verify", "--config", str(bad)]) == 2
    assert "bad.yaml: bridge: missing field" in capsys.readouterr().err


class _RecordingSink:
    """A stand-in for a site's own KMS, fed through the sink interface."""

    def __init__(self) -> None:
        self.blocks: list[wire.KeyBlock] = []
        self.copies: dict[str, bytes] = {}

    def commit_block(self, block: wire.KeyBlock, peer: str) -> wire.AckStatus:
        if any(b.block_id == block.block_id for b in self.blocks):
            return wire.AckStatus.DUPLICATE
        self.blocks.append(block)
        self.copies.update((k, bytes(v)) for k, v in block.keys)
        return wire.AckStatus.COMMITTED

    def close(self) -> None:
        pass


def test_custom_sink_is_fed_and_key_buffers_are_wiped_after_ack(tmp_path) -> None:
    import zmq

    from kms_bridge.bridge import BridgeNode, BridgeServer

    server_pub, server_sec = zmq.curve_keypair()
    node_pub, node_sec = zmq.curve_keypair()
    sink = _RecordingSink()
    srv = BridgeServer(sink, "tcp://127.0.0.1:0", server_pub, server_sec, {"alice": node_pub})
    endpoint = srv.start()
    keys = _keys(20)
    try:
        with BridgeNode(
            str(tmp_path / "outbox.sqlite"), endpoint, server_pub, node_pub, node_sec, "l"
        ) as node:
            node.push(1, keys[:10], {"frame": 1})
            node.push(2, keys[10:], {"frame": 2})
            node.push(2, keys[10:], {"frame": 2})  # repeating a push is a no-op
            with pytest.raises(ValueError, match="different keys"):
                node.push(2, keys[:10], {})
            node.max_frame_bytes = 500
            with pytest.raises(ValueError, match="split it"):
                node.push(3, keys, {})
            assert node.flush(10)
            assert node.health()["pending"] == 0
    finally:
        srv.stop()
    assert sink.copies == dict(keys)
    # Exactly once each; arrival order is not promised (a retry after a reconnect may overtake).
    assert sorted(b.block_id for b in sink.blocks) == [1, 2]
    for b in sink.blocks:  # the KME's decoded key buffers were zeroed after the ACK
        assert all(v == bytearray(len(v)) for _, v in b.keys)
    outbox = tmp_path / "outbox.sqlite"
    raw = b"".join(p.read_bytes() for p in (outbox, tmp_path / "outbox.sqlite-wal") if p.exists())
    assert all(k not in raw for _, k in keys)  # the node's copies are gone from its outbox
    con = sqlite3.connect(str(outbox))
    assert con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    con.close()


def test_bounded_retries_park_a_block_until_the_kme_answers_again(tmp_path) -> None:
    import socket
    import time

    import zmq

    from kms_bridge.bridge import BridgeNode, BridgeServer

    with socket.socket() as s:  # a loopback port with nobody listening (yet)
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    server_pub, server_sec = zmq.curve_keypair()
    node_pub, node_sec = zmq.curve_keypair()
    sink = _RecordingSink()
    node = BridgeNode(
        str(tmp_path / "outbox.sqlite"),
        endpoint,
        server_pub,
        node_pub,
        node_sec,
        "l",
        ack_timeout=0.02,
        max_attempts=3,
        backoff_max=0.05,
        heartbeat_interval=0.1,
    )
    srv = None
    try:
        keys = _keys(4)
        node.push(7, keys, {})
        deadline = time.monotonic() + 5
        while node.health()["parked"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        health = node.health()
        assert health["parked"] == 1 and health["pending"] == 1 and not health["connected"]
        assert node.counters["send_blocked"] == 3  # exactly max_attempts tries, then parked
        srv = BridgeServer(sink, endpoint, server_pub, server_sec, {"alice": node_pub})
        srv.start()
        assert node.flush(10)  # the first answered heartbeat resumes the parked block
        assert sink.copies == dict(keys) and node.health()["connected"]
    finally:
        node.close()
        if srv is not None:
            srv.stop()

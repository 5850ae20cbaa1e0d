"""Bridge faults with real processes (acceptance criterion 2).

KME crash (SIGKILL) in the middle of a 10,000-key stream, node crash with a resumed
outbox, a peer with the wrong Curve key, garbled and oversized frames.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import uuid

import pytest
import zmq

from kms_bridge import audit
from kms_bridge import protocol as wire
from kms_bridge.bridge import BridgeNode, load_curve_keys
from kms_bridge.site import LabSites

pytestmark = pytest.mark.xdist_group("kms_faults")


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    s = LabSites.start(str(tmp_path_factory.mktemp("faults")))
    yield s
    s.stop()


def _node_keys(sites: LabSites, side: str = "alice") -> tuple[bytes, bytes, bytes]:
    server = load_curve_keys(sites.curve["kme-a" if side == "alice" else "kme-b"][0])[0]
    pub, sec = load_curve_keys(sites.curve[side][1])
    assert sec is not None
    return server, pub, sec


def _kme_blocks(sites: LabSites, first: int, last: int) -> tuple[int, list[str], bool]:
    con = sqlite3.connect(f"file:{sites.db_path('A')}?mode=ro", uri=True)
    try:
        nb = con.execute(
            "SELECT COUNT(*) FROM blocks WHERE block_id BETWEEN ? AND ?", (first, last)
        ).fetchone()[0]
        ids = [
            r[0]
            for r in con.execute(
                "SELECT key_id FROM keys WHERE block_id BETWEEN ? AND ?", (first, last)
            )
        ]
        return nb, ids, audit.verify(con).ok
    finally:
        con.close()


def test_kme_sigkill_mid_stream_keeps_every_key_exactly_once(sites, tmp_path) -> None:
    server, pub, sec = _node_keys(sites)
    n_blocks, per_block, first = 100, 100, 10_000
    node = BridgeNode(
        str(tmp_path / "outbox.sqlite"),
        sites.kme("A").info["bridge"],
        server,
        pub,
        sec,
        sites.link_id,
        window=4,
        ack_timeout=0.3,
    )
    expected: set[str] = set()
    try:
        for b in range(first, first + n_blocks):
            keys = [(str(uuid.uuid4()), secrets.token_bytes(32)) for _ in range(per_block)]
            expected.update(k for k, _ in keys)
            node.push(b, keys, {"block": b})
            if b == first + 40:
                # SIGKILL once the KME has acknowledged part of the stream, while the
                # node still has blocks in flight and the rest is yet to be pushed.
                deadline = time.monotonic() + 10
                while node.counters["acked"] < 10 and time.monotonic() < deadline:
                    time.sleep(0.005)
                acked_at_kill = node.counters["acked"]
                sites.kill_kme("A")
        assert 10 <= acked_at_kill < n_blocks and node.pending() > 0
        sites.restart_kme("A")
        assert node.flush(30), node.health()
    finally:
        node.close()
    nb, ids, chain_ok = _kme_blocks(sites, first, first + n_blocks - 1)
    assert nb == n_blocks
    assert len(ids) == len(set(ids)) == 10_000 and set(ids) == expected
    assert chain_ok


NODE_SCRIPT = r"""
import json, os, secrets, sys, time, uuid
from kms_bridge.bridge import BridgeNode
a = json.loads(sys.argv[1])
node = BridgeNode(a["outbox"], a["endpoint"], a["server"].encode(), a["pub"].encode(),
                  a["sec"].encode(), a["link"], ack_timeout=0.2, heartbeat_interval=0.2)
if a["mode"] == "push":
    ids = []
    for b in range(a["first"], a["first"] + a["n"]):
        keys = [(str(uuid.uuid4()), secrets.token_bytes(32)) for _ in range(50)]
        node.push(b, keys, {"b": b})
        ids += [k for k, _ in keys]
    with open(a["ids"], "w") as fh:
        json.dump(ids, fh)
    print("PUSHED", flush=True)
    time.sleep(60)
else:
    print("FLUSHED" if node.flush(20) else "TIMEOUT", node.pending(), flush=True)
    node.close()
"""


def test_node_killed_and_restarted_resumes_its_outbox(sites, tmp_path) -> None:
    server, pub, sec = _node_keys(sites)
    args = {
        "outbox": str(tmp_path / "node-outbox.sqlite"),
        "endpoint": sites.kme("A").info["bridge"],
        "server": server.decode(),
        "pub": pub.decode(),
        "sec": sec.decode(),
        "link": sites.link_id,
        "first": 20_000,
        "n": 20,
        "ids": str(tmp_path / "ids.json"),
    }
    env = dict(os.environ, PYTHONPATH=os.getcwd())

    def run(mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", NODE_SCRIPT, json.dumps({**args, "mode": mode})],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    sites.kill_kme("A")  # KME down: every pushed block must wait in the node's outbox
    proc = run("push")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "PUSHED"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sites.restart_kme("A")
    out, _ = run("resume").communicate(timeout=40)
    assert out.split() == ["FLUSHED", "0"]
    with open(args["ids"]) as fh:
        expected = json.load(fh)
    nb, ids, chain_ok = _kme_blocks(sites, 20_000, 20_019)
    assert nb == 20 and sorted(ids) == sorted(expected) and chain_ok


def _stats(sites: LabSites) -> dict:
    server, pub, sec = _node_keys(sites)
    with BridgeNode(":memory:", sites.kme("A").info["bridge"], server, pub, sec, "stats") as n:
        return n.request_stats()


def _dealer(ctx: zmq.Context, sites: LabSites, pub: bytes, sec: bytes) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.curve_serverkey = load_curve_keys(sites.curve["kme-a"][0])[0]
    s.curve_publickey, s.curve_secretkey = pub, sec
    s.linger = 0
    s.connect(sites.kme("A").info["bridge"])
    return s


def test_peer_with_wrong_curve_key_is_refused(sites) -> None:
    before = _stats(sites)
    ctx = zmq.Context()
    pub, sec = zmq.curve_keypair()
    s = _dealer(ctx, sites, pub, sec)
    try:
        keys = [(str(uuid.uuid4()), secrets.token_bytes(32))]
        s.send(bytes(wire.encode_block(sites.link_id, 30_000, keys)))
        assert not s.poll(1000), "an unknown Curve key must get no answer"
    finally:
        s.close()
        ctx.term()
    after = _stats(sites)
    assert after["curve_denied"] > before["curve_denied"]
    assert after["blocks_committed"] == before["blocks_committed"]
    assert _kme_blocks(sites, 30_000, 30_000)[0] == 0


def test_garbled_and_oversized_frames_are_counted_and_dropped(sites) -> None:
    before = _stats(sites)
    _, pub, sec = _node_keys(sites)
    good = bytes(wire.encode_block(sites.link_id, 40_000, [(str(uuid.uuid4()), os.urandom(32))]))
    garbled = [
        os.urandom(64),
        good[:-5],
        good[:30] + bytes([good[30] ^ 0xFF]) + good[31:],
        good[:3] + b"\x02" + good[4:],
        wire.encode_heartbeat(1)[:-1],
    ]
    ctx = zmq.Context()
    s = _dealer(ctx, sites, pub, sec)
    try:
        for g in garbled:
            s.send(g)
        s.send_multipart([good, b"extra part"])
        s.send(b"\0" * (wire.DEFAULT_MAX_FRAME_BYTES + 1))  # LabSites uses the default limit
        s.send(good)  # the service goes on
        assert s.poll(5000)
        ack = wire.decode_ack(s.recv())
        assert (ack.block_id, ack.status) == (40_000, wire.AckStatus.COMMITTED)
        other_link = wire.encode_block("link-9", 40_001, [(str(uuid.uuid4()), os.urandom(32))])
        s.send(bytes(other_link))  # alice may only feed her own link
        assert s.poll(5000)
        ack = wire.decode_ack(s.recv())
        assert (ack.block_id, ack.status) == (40_001, wire.AckStatus.FORBIDDEN)
        s.send(good)  # a retried block is acknowledged again, without a second copy
        assert s.poll(5000)
        ack = wire.decode_ack(s.recv())
        assert (ack.block_id, ack.status) == (40_000, wire.AckStatus.DUPLICATE)
    finally:
        s.close()
        ctx.term()
    after = _stats(sites)
    assert after["garbled"] - before["garbled"] == len(garbled) + 1
    assert after["oversized"] - before["oversized"] == 1
    assert after["blocks_duplicate"] - before["blocks_duplicate"] == 1
    assert after["blocks_forbidden"] - before["blocks_forbidden"] == 1
    assert len(_kme_blocks(sites, 40_000, 40_000)[1]) == 1

"""Key delivery benchmarks: durable ingest rate, push-to-ACK latency, enc_keys rate over mTLS.

Everything runs against two real KME processes (``kms_bridge.site.LabSites``) on
loopback, each figure beside an fsync'd single-row SQLite commit measured in the same run
(``ref_sqlite_fsync_seconds``): the ratios say how many durable commits' worth of time a
figure costs, which stays meaningful on a slower disk.
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
import time
import uuid
from typing import Any

from hil.bench import Row, ref_sqlite_fsync_seconds

AREA = "kms"


def _keys(n: int) -> list[tuple[str, bytes]]:
    return [(str(uuid.uuid4()), secrets.token_bytes(32)) for _ in range(n)]


def _ingest(sites: Any, blocks: list[list[tuple[str, bytes]]], first: int) -> float:
    """Keys per second from the first push to the last ACK (outbox and KME both fsync)."""
    node = sites.node("alice")
    t0 = time.perf_counter()
    for i, keys in enumerate(blocks):
        node.push(first + i, keys, {"bench": True})
    if not node.flush(120):
        raise RuntimeError("ingest benchmark: outbox did not drain in 120 s")
    return sum(len(b) for b in blocks) / (time.perf_counter() - t0)


def _latency(sites: Any, n: int, first: int) -> list[float]:
    """Push-to-ACK latency of single 100-key blocks pushed one at a time."""
    node = sites.node("alice")
    node.latencies.clear()
    for i in range(n):
        node.push(first + i, _keys(100), {})
        if not node.flush(10):
            raise RuntimeError("latency benchmark: block not acknowledged in 10 s")
    return sorted(node.latencies)


def _enc_worker(args: tuple[str, str, str, str, str, float]) -> int:
    """One keep-alive mutual-TLS connection issuing ``POST enc_keys`` (one key) in a loop.

    It uses the standard library's ``http.client`` (a light client), so that on a 2-core
    machine the load generator takes as little CPU from the KME as possible.
    """
    import http.client
    import json
    from urllib.parse import urlsplit

    from kms_bridge.client import sae_ssl_context

    url, ca, cert, key, slave, seconds = args
    u = urlsplit(url)
    conn = http.client.HTTPSConnection(
        u.hostname, u.port, context=sae_ssl_context(ca, cert, key), timeout=10
    )
    body = json.dumps({"number": 1}).encode()
    headers = {"Content-Type": "application/json"}
    path = f"/api/v1/keys/{slave}/enc_keys"

    def one() -> None:
        conn.request("POST", path, body, headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"enc_keys answered {r.status}: {data[:200]!r}")

    one()  # handshake outside the timed window
    n = 0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        one()
        n += 1
    conn.close()
    return n


def _enc_rate(sites: Any, clients: int, seconds: float) -> float:
    """Requests/s of ``clients`` keep-alive connections in parallel threads."""
    from concurrent.futures import ThreadPoolExecutor

    a = sites.pki[sites.master_id]
    args = (sites.url("A"), sites.pki["ca"].cert, a.cert, a.key, sites.slave_id, seconds)
    with ThreadPoolExecutor(clients) as pool:
        counts = list(pool.map(_enc_worker, [args] * clients))
    return sum(counts) / seconds


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by these processes (-1 if unavailable)."""
    try:
        import psutil

        total = 0.0
        for pid in pids:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        return total
    except Exception:
        return -1.0


def run(quick: bool) -> list[Row]:
    """Durable ingest, push-to-ACK latency and enc_keys rate on two real KME processes.

    Beside each wall-clock rate, a "per CPU second" row divides by the CPU time the
    processes involved actually got: on a shared 2-core machine under load the wall-clock
    rates fall with the load, the per-CPU figures do not.
    """
    from kms_bridge.site import LabSites

    ref = ref_sqlite_fsync_seconds(100 if quick else 300)
    ref_rate = 1.0 / ref
    ref_name = "fsync'd SQLite 1-row commits/s"
    rows: list[Row] = []
    me = os.getpid()
    with tempfile.TemporaryDirectory() as d, LabSites.start(d) as sites:
        kme_a = sites.kme("A").proc
        assert kme_a is not None
        n_blocks = 20 if quick else 100
        blocks = [_keys(1000) for _ in range(n_blocks)]  # drawn before the timed window
        c0 = _cpu_seconds([me, kme_a.pid])
        rate = _ingest(sites, blocks, 1)
        cpu = _cpu_seconds([me, kme_a.pid]) - c0
        rows.append(
            Row(
                AREA,
                "ingest_keys_per_s_256bit_durable",
                rate,
                "keys/s",
                ref_name,
                ref_rate,
                target=">= 10000 keys/s",
            )
        )
        if c0 >= 0 and cpu > 0:
            rows.append(
                Row(
                    AREA,
                    "ingest_keys_per_cpu_s_node_plus_kme",
                    n_blocks * 1000 / cpu,
                    "keys/CPU-s",
                    ref_name,
                    ref_rate,
                )
            )
        lat = _latency(sites, 50 if quick else 300, 1_000_000)
        p50 = statistics.quantiles(lat, n=100)[49] if len(lat) > 2 else lat[0]
        p99 = statistics.quantiles(lat, n=100)[98] if len(lat) > 2 else lat[-1]
        for name, v in (("push_to_ack_p50_ms", p50), ("push_to_ack_p99_ms", p99)):
            rows.append(
                Row(AREA, name, 1e3 * v, "ms", "fsync'd SQLite 1-row commit (ms)", 1e3 * ref)
            )
        seconds = 2.0 if quick else 5.0
        c0 = _cpu_seconds([kme_a.pid])
        rate = _enc_rate(sites, clients=8, seconds=seconds)
        cpu = _cpu_seconds([kme_a.pid]) - c0
        rows.append(
            Row(
                AREA,
                "enc_keys_requests_per_s_mtls",
                rate,
                "req/s",
                ref_name,
                ref_rate,
                target=">= 500 req/s",
            )
        )
        if c0 >= 0 and cpu > 0:
            rows.append(
                Row(
                    AREA,
                    "enc_keys_requests_per_kme_cpu_s",
                    rate * seconds / cpu,
                    "req/CPU-s",
                    ref_name,
                    ref_rate,
                )
            )
    return rows

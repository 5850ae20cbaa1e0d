"""Two KME processes fed by two bridges; SAEs over mutual TLS (acceptance criteria 1, 2, 4)."""

from __future__ import annotations

import base64
import os
import secrets
import sqlite3
import ssl
import time
import uuid

import httpx
import pytest

from kms_bridge import audit, pki
from kms_bridge.client import KmeError, sae_ssl_context
from kms_bridge.config import parse_config
from kms_bridge.etsi import create_app
from kms_bridge.site import LabSites
from kms_bridge.store import SqliteKeyStore

pytestmark = pytest.mark.xdist_group("kms_sites")


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    s = LabSites.start(str(tmp_path_factory.mktemp("sites")))
    yield s
    s.stop()


def _push_both(sites: LabSites, first_block: int, n_blocks: int, per_block: int):
    """The same keys (from a cryptographic source) under the same IDs into both sites."""
    alice, bob = sites.node("alice"), sites.node("bob")
    pushed = {}
    for b in range(first_block, first_block + n_blocks):
        keys = [(str(uuid.uuid4()), secrets.token_bytes(32)) for _ in range(per_block)]
        alice.push(b, keys, {"frame": b})
        bob.push(b, keys, {"frame": b})
        pushed.update(keys)
    assert alice.flush(20) and bob.flush(20)
    return pushed


def test_heartbeats_report_the_link_up(sites) -> None:
    alice = sites.node("alice")
    deadline = time.monotonic() + 5
    while alice.request_stats().get("heartbeats", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alice.request_stats()["heartbeats"] >= 1
    assert alice.health()["connected"]


def _audit(sites: LabSites, site: str, event: str) -> list[dict]:
    con = sqlite3.connect(f"file:{sites.db_path(site)}?mode=ro", uri=True)
    try:
        return audit.records(con, event)
    finally:
        con.close()


def test_master_and_slave_get_identical_keys_once(sites) -> None:
    pushed = _push_both(sites, 1, 4, 25)
    master, slave = sites.sae_client("master"), sites.sae_client("slave")
    st = master.status(sites.slave_id)
    assert st["stored_key_count"] >= 100 and st["key_size"] == 256
    assert (st["source_KME_ID"], st["target_KME_ID"]) == ("KME-A", "KME-B")
    got_a = master.enc_keys(sites.slave_id, number=10, size=256)
    assert len({k for k, _ in got_a}) == 10
    assert all(pushed[k] == v for k, v in got_a)
    got_b = slave.dec_keys(sites.master_id, [k for k, _ in got_a])
    assert got_b == got_a
    # Each key is served once: a second request for the same ID is refused, at both KMEs.
    with pytest.raises(KmeError) as err:
        slave.dec_keys(sites.master_id, [got_a[0][0]])
    assert err.value.status == 400 and err.value.details[0]["reason"] == "already delivered"
    again = master.enc_keys(sites.slave_id, number=10)
    assert not {k for k, _ in again} & {k for k, _ in got_a}
    assert master.status(sites.slave_id)["stored_key_count"] == st["stored_key_count"] - 20
    delivered = [k for r in _audit(sites, "B", "delivery") for k in r["key_ids"]]
    assert sorted(delivered) == sorted(k for k, _ in got_a)


def test_stock_etsi_client_calls_work_unchanged(sites) -> None:
    """The spec's calls, written with plain httpx: paths, query parameters and JSON bodies."""
    _push_both(sites, 100, 1, 8)
    ca = sites.pki["ca"].cert
    a, b = sites.pki[sites.master_id], sites.pki[sites.slave_id]
    with (
        httpx.Client(verify=sae_ssl_context(ca, a.cert, a.key)) as m,
        httpx.Client(verify=sae_ssl_context(ca, b.cert, b.key)) as s,
    ):
        kme_a, kme_b = sites.url("A"), sites.url("B")
        r = m.get(f"{kme_a}/api/v1/keys/SAE-B/status")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert set(r.json()) >= {"source_KME_ID", "stored_key_count", "max_SAE_ID_count"}
        r1 = m.post(f"{kme_a}/api/v1/keys/SAE-B/enc_keys", json={"number": 2, "size": 256})
        r2 = m.get(f"{kme_a}/api/v1/keys/SAE-B/enc_keys", params={"number": 1, "size": 256})
        r3 = m.get(f"{kme_a}/api/v1/keys/SAE-B/enc_keys")  # defaults: one key of key_size
        keys = [k for r in (r1, r2, r3) for k in r.json()["keys"]]
        assert len(keys) == 4 and all(len(base64.b64decode(k["key"])) == 32 for k in keys)
        ids = [k["key_ID"] for k in keys]
        # dec_keys: the path carries the MASTER SAE's ID.
        d1 = s.post(
            f"{kme_b}/api/v1/keys/SAE-A/dec_keys",
            json={"key_IDs": [{"key_ID": i} for i in ids[:3]]},
        )
        d2 = s.get(f"{kme_b}/api/v1/keys/SAE-A/dec_keys", params={"key_ID": ids[3]})
        assert d1.status_code == 200 and d2.status_code == 200
        assert d1.json()["keys"] + d2.json()["keys"] == keys
        # Malformed requests get the spec's error body with 400.
        bad = m.post(f"{kme_a}/api/v1/keys/SAE-B/enc_keys", json={"number": "many"})
        assert bad.status_code == 400 and set(bad.json()) == {"message", "details"}
        bad = m.post(f"{kme_a}/api/v1/keys/SAE-B/enc_keys", json={"number": 1, "size": 100})
        assert bad.status_code == 400 and "size" in bad.json()["message"]
        bad = s.get(f"{kme_b}/api/v1/keys/SAE-A/dec_keys", params={"key_ID": "not-a-uuid"})
        assert bad.status_code == 400


def test_sae_without_valid_cert_or_policy_is_refused_and_audited(sites, tmp_path) -> None:
    ca = sites.pki["ca"].cert
    url_a = sites.url("A")
    # No client certificate: the spec's 401 error body, and the refusal is audited.
    with httpx.Client(verify=sae_ssl_context(ca)) as anon:
        r = anon.post(f"{url_a}/api/v1/keys/SAE-B/enc_keys", json={"number": 1})
    assert r.status_code == 401 and set(r.json()) == {"message", "details"}
    assert any(
        x["identity"] == "" and x["detail"]["status"] == 401 for x in _audit(sites, "A", "refusal")
    )
    # A certificate from another CA does not get through the TLS handshake.
    rogue = pki.make_lab_pki(str(tmp_path / "rogue"), [], ["SAE-A"])["SAE-A"]
    with (
        httpx.Client(verify=sae_ssl_context(ca, rogue.cert, rogue.key)) as c,
        pytest.raises((httpx.TransportError, ssl.SSLError)),
    ):
        c.get(f"{url_a}/api/v1/keys/SAE-B/status")
    # Valid certificates, but the policy does not allow the pair/role.
    slave, master = sites.sae_client("slave"), sites.sae_client("master")
    with pytest.raises(KmeError) as err:
        slave.enc_keys(sites.master_id, 1)  # slave asking KME-B for enc_keys
    assert err.value.status == 401 and "policy" in str(err.value.details)
    with pytest.raises(KmeError) as err:
        master.dec_keys("SAE-C", [str(uuid.uuid4())])  # unknown peer
    assert err.value.status == 401
    b = sites.pki[sites.slave_id]
    with httpx.Client(verify=sae_ssl_context(ca, b.cert, b.key)) as c:
        r = c.get(f"{url_a}/api/v1/keys/SAE-A/status")  # SAE-B at KME-A: no rule
    assert r.status_code == 401 and r.json()["message"].startswith("unauthorized")
    refused_b = _audit(sites, "B", "refusal")
    assert any(x["identity"] == "SAE-B" and x["peer"] == "SAE-A" for x in refused_b)
    assert any(x["identity"] == "SAE-B" for x in _audit(sites, "A", "refusal"))


SPEC_FIELDS = {
    "Status": {
        "source_KME_ID",
        "target_KME_ID",
        "master_SAE_ID",
        "slave_SAE_ID",
        "key_size",
        "stored_key_count",
        "max_key_count",
        "max_key_per_request",
        "max_key_size",
        "min_key_size",
        "max_SAE_ID_count",
        "status_extension",
    },
    "KeyRequest": {
        "number",
        "size",
        "additional_slave_SAE_IDs",
        "extension_mandatory",
        "extension_optional",
    },
    "KeyContainer": {"keys", "key_container_extension"},
    "Key": {"key_ID", "key_ID_extension", "key", "key_extension"},
    "KeyIDs": {"key_IDs", "key_IDs_extension"},
    "KeyIDItem": {"key_ID", "key_ID_extension"},
    "Error": {"message", "details"},
}


def test_openapi_schema_uses_the_spec_field_names(tmp_path) -> None:
    cfg = parse_config(
        {
            "kme_id": "KME-A",
            "data_dir": str(tmp_path),
            "bridge": {"bind": "tcp://127.0.0.1:0", "secret_key_file": "x", "allowed_clients": {}},
            "links": {"l": {"peer_kme": "KME-B"}},
        },
        str(tmp_path),
    )
    store = SqliteKeyStore(os.path.join(tmp_path, "kme.sqlite"))
    try:
        schema = create_app(cfg, store).openapi()
    finally:
        store.close()
    comps = schema["components"]["schemas"]
    for name, fields in SPEC_FIELDS.items():
        assert set(comps[name]["properties"]) == fields, name
    assert comps["Status"]["required"] and "status_extension" not in comps["Status"]["required"]
    paths = schema["paths"]
    assert set(paths) == {
        "/api/v1/keys/{slave_SAE_ID}/status",
        "/api/v1/keys/{slave_SAE_ID}/enc_keys",
        "/api/v1/keys/{master_SAE_ID}/dec_keys",
    }
    assert set(paths["/api/v1/keys/{slave_SAE_ID}/enc_keys"]) == {"get", "post"}
    assert set(paths["/api/v1/keys/{master_SAE_ID}/dec_keys"]) == {"get", "post"}
    q = {p["name"] for p in paths["/api/v1/keys/{slave_SAE_ID}/enc_keys"]["get"]["parameters"]}
    assert q == {"slave_SAE_ID", "number", "size"}
    q = {p["name"] for p in paths["/api/v1/keys/{master_SAE_ID}/dec_keys"]["get"]["parameters"]}
    assert q == {"master_SAE_ID", "key_ID"}
    for item in paths.values():
        for op in item.values():
            assert {"200", "400", "401", "503"} <= set(op["responses"])
            assert "422" not in op["responses"]


def test_client_cert_required_refuses_at_the_handshake(sites, tmp_path) -> None:
    """``client_cert: required`` (uvicorn ``ssl_cert_reqs=CERT_REQUIRED``): no certificate,
    no TLS session; a valid SAE certificate still works."""
    import json
    import threading

    from kms_bridge.kme import serve

    _, sec = pki.curve_keypair(str(tmp_path), "kme-x")
    kme_a = sites.pki["KME-A"]
    cfg = parse_config(
        {
            "kme_id": "KME-X",
            "data_dir": str(tmp_path / "data"),
            "ready_file": str(tmp_path / "ready.json"),
            "bridge": {"bind": "tcp://127.0.0.1:0", "secret_key_file": sec, "allowed_clients": {}},
            "http": {
                "port": 0,
                "certfile": kme_a.cert,
                "keyfile": kme_a.key,
                "ca": sites.pki["ca"].cert,
                "client_cert": "required",
            },
            "links": {"l": {"peer_kme": "KME-Y"}},
            "policy": [{"sae": "SAE-A", "peer": "SAE-B", "role": "master", "link": "l"}],
        },
        str(tmp_path),
    )
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(cfg, stop), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(cfg.ready_file) and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(cfg.ready_file) as fh:
            url = f"https://127.0.0.1:{json.load(fh)['http_port']}/api/v1/keys/SAE-B/status"
        ca = sites.pki["ca"].cert
        with (
            httpx.Client(verify=sae_ssl_context(ca)) as anon,
            pytest.raises((httpx.TransportError, ssl.SSLError)),
        ):
            anon.get(url)
        a = sites.pki[sites.master_id]
        with httpx.Client(verify=sae_ssl_context(ca, a.cert, a.key)) as c:
            r = c.get(url)
        assert r.status_code == 200 and r.json()["stored_key_count"] == 0
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()

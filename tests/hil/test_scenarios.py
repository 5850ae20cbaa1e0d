"""Fault scenarios on the emulated bench: alarms, quarantine, the other links go on.

One run of a four-link point-to-multipoint bench (small frames, 2e5 symbols) with three
faults in the world's scenario format, each loaded into the world right after a chosen
frame of its link (so it appears between two frames of that link):

* ``bend``: 1 dB bend at 7.2 km on ``a``;
* ``tap``: 0.3 dB tap with 0.05 SNU excess noise at 3.0 km on ``b``;
* ``cut``: a cut at 5.5 km on ``c``;
* ``d`` (3 km) stays healthy.

The runner never reads the world's truth; only this test does (fault times, positions).
"""

from __future__ import annotations

import sqlite3

import pytest
from hil_benches import four_link_bench

from hil import bench_file
from hil.monitor import two_point_resolution_m
from hil.runner import Runner, RunOptions
from kms_bridge import audit

pytestmark = pytest.mark.xdist_group("hil_scenarios")

FAULT_AFTER_FRAME = 1  # the fault appears after frame 1 of its link (frames 0..2)
FAULTS = {
    "a": {"action": "bend", "position_km": 7.2, "loss_db": 1.0},
    "b": {"action": "tap", "position_km": 3.0, "loss_db": 0.3, "excess_noise": 0.05},
    "c": {"action": "cut", "position_km": 5.5},
}
EXPECTED = {"a": "new_nonreflective_event", "b": "new_nonreflective_event", "c": "cut"}


@pytest.fixture(scope="module")
def faulted_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("scen")
    bench = bench_file.validate(four_link_bench(), source="four-links.yaml")
    fired: dict[str, float] = {}

    def inject(runner: Runner, link: str, frame: int) -> None:
        if link in FAULTS and frame == FAULT_AFTER_FRAME:
            world = runner.session.world
            entry = dict(FAULTS[link], link=link, at_s=0.0)
            world.load_scenario([entry])  # the world's scenario format (a timeline)
            fired[link] = world.now

    runner = Runner(bench, RunOptions(results_dir=tmp / "res", sae_check=True), hooks=[inject])
    result = runner.run()
    return result, fired


def test_each_fault_raises_the_right_located_alarm_within_one_period(faulted_run) -> None:
    result, fired = faulted_run
    run = result.run
    res_m = two_point_resolution_m(100.0, 1.4682)
    frames = {(f["link"], f["frame"]): f for f in run["frames"]}
    for link, fault in FAULTS.items():
        alarms = [a for a in run["alarms"] if a["link"] == link]
        otdr = [a for a in alarms if "otdr" in a["sources"] or a["source"] == "otdr"]
        assert otdr, f"no OTDR alarm on {link}: {alarms}"
        first = min(otdr, key=lambda a: a["raised_at"])
        assert first["kind"] == EXPECTED[link], first
        # within one monitoring period: raised by the scan that follows the next frame
        assert first["raised_frame"] == FAULT_AFTER_FRAME + 1
        assert first["raised_at"] <= frames[(link, FAULT_AFTER_FRAME + 1)]["t_end"] + 60.0
        assert first["raised_at"] >= fired[link]
        # located within the OTDR's two-point resolution
        assert abs(first["location_km"] * 1e3 - fault["position_km"] * 1e3) <= res_m, first
        # the power meter saw it too, at the first reading after the fault
        pm = [a for a in alarms if a["source"] == "powermeter"]  # first seen by it
        assert pm and min(a["raised_frame"] for a in pm) == FAULT_AFTER_FRAME + 1


def test_no_key_from_an_affected_frame_and_the_other_links_go_on(faulted_run) -> None:
    result, fired = faulted_run
    run = result.run
    assert result.exit_code == 0, run.get("reason")
    frames = {(f["link"], f["frame"]): f for f in run["frames"]}
    delivered_blocks = [b for b in run["blocks"] if b["key_ids_delivered"]]
    for block in delivered_blocks:
        for f in block["frames"]:
            rec = frames[(block["link"], f)]
            assert rec["status"] == "clean"
            if block["link"] in fired:
                assert rec["t_end"] <= fired[block["link"]]
    for link in FAULTS:
        after = [frames[(link, f)] for f in range(FAULT_AFTER_FRAME + 1, 3)]
        assert all(r["status"] in ("quarantined", "failed") for r in after), after
        assert all(r.get("block") is None for r in after)
    # the healthy link ran all its frames and delivered keys
    assert run["links"]["d"]["status"] == "done" and len(run["keys"]["d"]) > 0
    assert [frames[("d", f)]["status"] for f in range(3)] == ["clean"] * 2 + [
        "clean (block incomplete)"
    ]
    delivered = {lk for lk, ids in run["keys"].items() if ids}
    assert delivered >= {"d"}
    ids = [k for ks in run["keys"].values() for k in ks]
    assert len(ids) == len(set(ids))
    assert run["sae_check"]["match"] is True
    # What the KMEs themselves ingested (their audit logs): exactly the delivered keys.
    for link in ("a", "b", "c", "d"):
        for site in ("a", "b"):
            db = result.directory / "kms" / link / f"kme-{site}" / "kme.sqlite"
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                ingested = [k for r in audit.records(con, "ingest") for k in r["key_ids"]]
            finally:
                con.close()
            assert sorted(ingested) == sorted(run["keys"][link]), (link, site)

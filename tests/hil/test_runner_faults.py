"""Runner robustness: an instrument that stops answering ends its link, the run goes on;
a scenario needs the emulator; the results folder re-renders (small frames, no KMEs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hil_benches import four_link_bench

from hil import bench_file, report
from hil.bench_file import BenchError
from hil.cli import main
from hil.runner import Runner, RunOptions

pytestmark = pytest.mark.xdist_group("hil_runner")


def small_bench(links: int = 2) -> bench_file.Bench:
    data = four_link_bench()
    keep = {lk["name"] for lk in data["links"][:links]}
    data["links"] = data["links"][:links]
    data["emulator"]["links"] = [lk for lk in data["emulator"]["links"] if lk["name"] in keep]
    used = (
        {"tx", "sw", "otdr"}
        | {lk["receiver"] for lk in data["links"]}
        | {lk["powermeter"] for lk in data["links"]}
    )
    data["instruments"] = {k: v for k, v in data["instruments"].items() if k in used}
    data["run"].update(frames=2, block_frames=2, symbols_per_frame=100_000)
    data["kms"] = {"mode": "none"}
    return bench_file.validate(data, source="small.yaml")


def test_receiver_that_stops_answering_ends_its_link_only(tmp_path: Path) -> None:
    bench = small_bench()
    dead = bench.instruments["rx2"].resource

    def kill_rx2(runner: Runner, link: str, frame: int) -> None:
        if link == "a" and frame == 0:
            fw = runner.session.world.instruments()[dead]
            fw.handle = lambda message: None  # answers nothing from now on

    result = Runner(bench, RunOptions(results_dir=tmp_path / "r"), hooks=[kill_rx2]).run()
    run = result.run
    assert result.exit_code == 0
    b = run["links"]["b"]
    assert b["status"] == "failed"
    assert "receiver rx2" in b["error"] and dead in b["error"]
    assert "links failed: b" in run["reason"]
    a = [f for f in run["frames"] if f["link"] == "a"]
    assert run["links"]["a"]["status"] == "done" and len(a) == 2
    assert all(f.get("T") is not None for f in a)
    # the results folder re-renders from itself
    for png in (tmp_path / "r").glob("*.png"):
        png.unlink()
    assert main(["report", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "otdr-a.png").exists() and (tmp_path / "r" / "timeline.png").exists()
    assert report.load(tmp_path / "r")["links"]["b"]["status"] == "failed"


def test_scenario_needs_the_emulator(tmp_path: Path) -> None:
    real = bench_file.load("template-real")
    scen = tmp_path / "s.yaml"
    scen.write_text("- {at_s: 1, action: cut, link: site1, position_km: 1}\n")
    with pytest.raises(BenchError, match="needs the emulator"):
        Runner(real, RunOptions(scenario=scen, results_dir=tmp_path / "r"))


def test_unknown_link_and_missing_scenario_are_usage_errors(tmp_path: Path, capsys) -> None:
    assert main(["run", "single-link", "--link", "nope", "--results", str(tmp_path)]) == 2
    assert "no link named nope" in capsys.readouterr().err
    assert main(["run", "single-link", "--scenario", str(tmp_path / "x.yaml")]) == 2
    assert "scenario file not found" in capsys.readouterr().err

"""The HIL run: bring-up to keys in the KMEs, with monitoring, on one bench.

:class:`Runner` drives a :class:`hil.procedures.Session` through the stages of a run:

1. bring-up (tune, set powers, check every instrument's error queue),
2. key delivery up (KME-A/KME-B per link on loopback, when ``kms.mode`` is ``lab``),
3. per link: route the switch, power-meter baseline, OTDR baseline, calibration,
   first choice of the modulation variance from the measured loss,
4. rounds: the switch serves the links in turn (point-to-multipoint); each link keeps
   its own calibration, monitor, modulation variance and finite-size block. One frame:
   power check -> waveform -> capture -> DSP -> power check -> (scheduled) OTDR scan ->
   frames released or quarantined -> full block: estimation, finite-size key rate,
   distillation, delivery to both KMEs,
5. optional SAE check over ETSI 014, results folder, summary.

A failing link-specific instrument (receiver, power meter) ends that link with its error;
the other links go on. A failing shared instrument (transmitter, switch, OTDR) ends the
run with a non-zero exit code and the reason.

The runner never reads the emulator's truth. With the emulator backend it uses the
world's virtual clock as the bench clock and, with ``--scenario``, hands the fault file
to the world's scenario API.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil import report
from hil.bench_file import Bench, BenchError, Link
from hil.monitor import Alarm, LinkMonitor

ProgressFn = Callable[..., None]


@dataclass
class RunOptions:
    """Overrides and extras for one run (``None`` = take the bench file's value)."""

    frames: int | None = None
    symbols_per_frame: int | None = None
    scenario: Path | None = None
    results_dir: Path | None = None
    sae_check: bool = False
    scpi_log: Path | None = None
    seed: int | None = None
    links: list[str] | None = None
    plots: bool = True


@dataclass
class RunResult:
    """What a run produced: the run record (``run.json``), its folder and exit code."""

    run: dict[str, Any]
    directory: Path
    exit_code: int


@dataclass
class LinkState:
    """Everything one link keeps between its frames."""

    link: Link
    monitor: LinkMonitor
    status: str = "waiting"  # waiting | running | done | failed
    error: str | None = None
    frames_done: int = 0
    calibration: Any = None
    calibrated_at_frame: int = -1
    v_a_target: float | None = None
    last_estimates: dict[str, Any] | None = None
    recent: list[dict[str, Any]] = field(default_factory=list)
    held: dict[int, Any] = field(default_factory=dict)
    block: list[Any] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    next_block: int = 0
    quarantined: int = 0
    plotted: bool = False
    parties: Any = None

    @property
    def name(self) -> str:
        return self.link.name

    @property
    def active(self) -> bool:
        return self.status in ("waiting", "running")


class Runner:
    """One run of a bench; see the module docstring for the stages.

    ``hooks`` (tests only) are called as ``hook(runner, link_name, frame_index)`` after
    each frame, e.g. to inject a fault through the world's API at a chosen moment.
    """

    def __init__(
        self,
        bench: Bench,
        options: RunOptions | None = None,
        progress: ProgressFn | None = None,
        hooks: list[Callable[..., None]] | None = None,
        session: Any = None,
    ) -> None:
        self.bench = bench
        self.options = options or RunOptions()
        self.progress = progress or (lambda kind, **data: None)
        self.hooks = list(hooks or [])
        self.session = session
        self.delivery: Any = None
        self.frames_per_link = self.options.frames or bench.run.frames
        self.symbols = self.options.symbols_per_frame or bench.run.symbols_per_frame
        links = bench.links
        if self.options.links:
            unknown = sorted(set(self.options.links) - {lk.name for lk in links})
            if unknown:
                raise BenchError(
                    bench.source,
                    "links",
                    f"no link named {', '.join(unknown)} (links: "
                    f"{', '.join(lk.name for lk in links)})",
                )
            links = [lk for lk in links if lk.name in self.options.links]
        self.states = {
            lk.name: LinkState(lk, LinkMonitor(lk.name, bench.monitoring)) for lk in links
        }
        if self.options.scenario is not None:
            if bench.backend != "emulator":
                raise BenchError(
                    bench.source,
                    "backend",
                    "--scenario needs the emulator backend (faults are "
                    "injected into the emulated world)",
                )
            if not Path(self.options.scenario).is_file():
                raise BenchError(str(self.options.scenario), "", "scenario file not found")
        self.directory = Path(self.options.results_dir or report.default_directory(bench.name))
        self.results = report.ResultsFolder(self.directory)
        self.frames: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.run_record: dict[str, Any] = {}
        self.t_wall0 = time.monotonic()
        self.pool: Any = None
        self.in_flight: list[tuple[LinkState, list[Any], Any, Any]] = []

    # ------------------------------------------------------------------ helpers
    def now(self) -> float:
        return float(self.session.clock()) if self.session is not None else 0.0

    def _stage(self, message: str) -> None:
        self.progress("stage", message=message)

    def _alarms(self, raised: list[Alarm]) -> None:
        for alarm in raised:
            self.progress("alarm", message=f"{alarm.describe()}: {alarm.message}")

    def _fail_link(self, state: LinkState, message: str) -> None:
        state.status = "failed"
        state.error = message
        # Frames not vouched for by monitoring are never delivered.
        state.quarantined += len(state.held)
        for rec in state.held.values():
            rec.record["status"] = "discarded"
        state.held.clear()
        self.errors.append(f"link {state.name}: {message}")
        self.progress("error", message=f"link {state.name} stopped: {message}")

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult:
        """Execute the whole run; never raises for instrument or link failures."""
        from hil import procedures

        exit_code = 0
        reason = ""
        self.run_record = self._new_record()
        try:
            if self.session is None:
                self._stage(f"opening bench {self.bench.name} ({self.bench.backend})")
                self.session = procedures.Session.open(
                    self.bench,
                    scpi_log=self.options.scpi_log,
                    seed=self.options.seed,
                )
            if self.options.scenario is not None:
                self._stage(f"loading fault scenario {self.options.scenario}")
                self.session.load_scenario(self.options.scenario)
            self._stage("bring-up: identify, tune, set powers, check errors")
            self.run_record["instruments"] = procedures.bring_up(self.session, list(self.states))
            self.delivery = procedures.KeyDelivery.start(
                self.bench,
                [s.link for s in self.states.values()],
                self.directory / "kms",
                progress=self.progress,
            )
            self.run_record["kms"] = self.delivery.describe()
            for state in self.states.values():
                self._prepare_link(state)
            self._rounds()
            self._finish_blocks()
            if self.in_flight:
                self._stage(f"waiting for the distillation of {len(self.in_flight)} block(s)")
                self._collect(wait=True)
            if self.delivery is not None:
                self._stage("waiting for the KMEs to acknowledge every key block")
                self.delivery.flush()
                if self.options.sae_check:
                    self._stage("SAE check: enc_keys at KME-A, dec_keys at KME-B")
                    self.run_record["sae_check"] = self.delivery.sae_check(
                        [s.link for s in self.states.values() if s.keys]
                    )
                    if not self.run_record["sae_check"].get("match"):
                        exit_code = 1
                        reason = self.run_record["sae_check"].get("message", "SAE check failed")
        except procedures.InstrumentFailureError as exc:  # a shared instrument failed
            exit_code, reason = 1, str(exc)
            self.errors.append(reason)
            self.progress("error", message=reason)
        except BenchError:
            raise
        except Exception as exc:  # the record of the run must still be written
            exit_code, reason = 1, f"{type(exc).__name__}: {exc}"
            self.errors.append(reason)
            self.errors.append(traceback.format_exc(limit=8))
            self.progress("error", message=reason)
        finally:
            self._close()
        if not exit_code:
            failed = [s.name for s in self.states.values() if s.status == "failed"]
            if failed and len(failed) == len(self.states):
                exit_code, reason = (
                    1,
                    "every link failed: "
                    + "; ".join(f"{s.name}: {s.error}" for s in self.states.values()),
                )
            elif failed:
                reason = "links failed: " + ", ".join(failed)
        self._finalise_record(exit_code, reason)
        return RunResult(self.run_record, self.directory, exit_code)

    def _close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
        if self.delivery is not None:
            try:
                self.delivery.stop()
            except Exception as exc:
                self.errors.append(f"stopping key delivery: {exc}")
        if self.session is not None:
            try:
                self.session.close()
            except Exception as exc:
                self.errors.append(f"closing instruments: {exc}")

    # ------------------------------------------------------------------ stages
    def _prepare_link(self, state: LinkState) -> None:
        from hil import procedures

        link = state.link
        self._stage(f"{link.name}: route, power and OTDR baselines, calibration")
        try:
            self.session.route(link.name)
            loss = self.session.link_loss_db(link.name)
            scan = None
            if self.bench.monitoring.enabled and self.session.has_otdr:
                scan = self.session.otdr_scan(link.name)
                self.results.save_otdr(link.name, "baseline", _trace(scan))
            state.monitor.set_baseline(scan, loss)
            state.calibration = procedures.calibrate(self.session, link.name)
            state.calibrated_at_frame = 0
            state.v_a_target = procedures.initial_modulation_variance(
                self.bench, state.calibration, loss, self.symbols
            )
        except procedures.InstrumentFailureError as exc:
            if exc.shared:
                raise
            self._fail_link(state, str(exc))
        except procedures.ProcedureError as exc:
            self._fail_link(state, str(exc))
        if state.active:
            self.progress("link_start", link=link.name, frames=self.frames_per_link)
            state.status = "running"

    def _rounds(self) -> None:
        """Point-to-multipoint: the switch serves every active link in turn, frame by frame."""
        for _ in range(self.frames_per_link):
            for state in self.states.values():
                if state.active:
                    self._one_frame(state)

    def _one_frame(self, state: LinkState) -> None:
        from hil import procedures

        link = state.link
        f = state.frames_done
        mon = self.bench.monitoring
        record: dict[str, Any] = {"link": link.name, "frame": f, "status": "pending", "alarms": []}
        self.frames.append(record)
        try:
            self.session.route(link.name)
            record["t_start"] = self.now()
            before = self.session.link_loss_db(link.name)
            self._alarms(state.monitor.check_power(before, self.now(), frame=f))
            every = self.bench.run.calibrate_every_frames
            if every and f > 0 and f - state.calibrated_at_frame >= every:
                cfo = state.calibration.cfo_hz if state.calibration is not None else 0.0
                state.calibration = procedures.calibrate(self.session, link.name, cfo)
                state.calibrated_at_frame = f
            try:
                data = procedures.key_frame(
                    self.session,
                    link.name,
                    state.calibration,
                    self.symbols,
                    state.v_a_target,
                    want_plot=not state.plotted and self.options.plots,
                )
            except procedures.FrameError as exc:
                data = None
                record["status"] = "failed"
                record["error"] = str(exc)
                self.progress("link_note", link=link.name, note=f"frame {f}: {exc}")
            record["t_end"] = self.now()
            after = self.session.link_loss_db(link.name)
            record["loss_db"] = after
            self._alarms(state.monitor.check_power(after, self.now(), frame=f))
            if data is not None:
                data.record = record
                record.update(data.summary)
                state.held[f] = data
                state.monitor.hold(f)
                if data.plot is not None:
                    self.results.save_capture(link.name, **data.plot)
                    state.plotted = True
            state.frames_done += 1
            if (
                mon.enabled
                and self.session.has_otdr
                and (
                    state.frames_done % mon.otdr_every_frames == 0
                    or state.frames_done == self.frames_per_link
                )
            ):
                scan = self.session.otdr_scan(link.name)
                self.results.save_otdr(link.name, "latest", _trace(scan))
                self._alarms(state.monitor.check_otdr(scan, self.now(), frame=f))
                self._release(state)
            elif not mon.enabled or not self.session.has_otdr:
                self._release(state)
            record["alarms"] = [a.id for a in state.monitor.active]
            if data is not None and record["status"] == "pending" and state.monitor.under_alarm:
                record["status"] = "held"
            if len(state.block) >= self.bench.run.block_frames:
                self._close_block(state)
            self._collect()
            for hook in self.hooks:
                hook(self, link.name, f)
            est = data.summary if data is not None else {}
            note = ""
            if est.get("T") is not None:
                note = f"T={est['T']:.3f} xi={est.get('xi', math.nan):.4f}"
            if state.monitor.under_alarm:
                note += " [ALARM]"
            self.progress("frame_done", link=link.name, note=note)
            if data is not None:
                state.recent = [*state.recent, data.summary][-self.bench.run.block_frames :]
            v_next = procedures.next_modulation_variance(
                self.bench, state.calibration, state.recent, state.v_a_target, self.symbols
            )
            if v_next is not None:
                state.v_a_target = v_next
        except procedures.InstrumentFailureError as exc:
            record["status"] = "failed"
            record["error"] = str(exc)
            if exc.shared:
                raise
            self._fail_link(state, str(exc))
        if state.active and state.frames_done >= self.frames_per_link:
            state.status = "done" if not state.held else state.status

    def _release(self, state: LinkState) -> None:
        clean, quarantined = state.monitor.release()
        for f in quarantined:
            data = state.held.pop(f, None)
            if data is not None:
                data.record["status"] = "quarantined"
                data.record["alarms"] = sorted(
                    {
                        a.id
                        for a in state.monitor.alarms
                        if a.raised_frame is None or a.raised_frame >= f
                    }
                    | {a.id for a in state.monitor.active}
                )
                state.quarantined += 1
        for f in clean:
            data = state.held.pop(f, None)
            if data is not None:
                data.record["status"] = "clean"
                state.block.append(data)

    def _finish_blocks(self) -> None:
        """End of the rounds: a partial block is kept for the next run, not distilled."""
        for state in self.states.values():
            if state.status == "failed":
                continue
            for data in state.held.values():
                data.record["status"] = "unverified"
            if state.block:
                for data in state.block:
                    data.record["status"] = "clean (block incomplete)"
            state.status = "done"

    def _close_block(self, state: LinkState) -> None:
        """A full block: estimate it now; distil it inline or in the worker process."""
        from hil import procedures

        frames = state.block[: self.bench.run.block_frames]
        state.block = state.block[self.bench.run.block_frames :]
        block_id = state.next_block
        state.next_block += 1
        for data in frames:
            data.record["block"] = block_id
        job = procedures.prepare_block(self.bench, state.link, block_id, frames, state.calibration)
        if isinstance(job, dict):
            self._block_done(state, frames, job)
            return
        self.progress("link_note", link=state.name, note=f"block {block_id}: distilling")
        pool = self._pool()
        if pool is None:
            self._wait_link(state)
            try:
                state.parties, result = procedures.distill_job(
                    self.bench, state.parties, job.x, job.y, job.snr, job.chi, job.segments
                )
            except procedures.ProcedureError as exc:
                self._block_done(state, frames, procedures.fail_block(job, exc))
                return
            out = procedures.finish_block(self.bench, state.link, job, result, self.delivery)
            self._block_done(state, frames, out)
            return
        # The link's parties travel with its blocks: wait for its previous block first.
        self._wait_link(state)
        parties, state.parties = state.parties, None
        future = pool.submit(
            procedures.distill_job,
            self.bench,
            parties,
            job.x,
            job.y,
            job.snr,
            job.chi,
            job.segments,
        )
        job.x = job.y = None  # type: ignore[assignment]  # the worker has its copy
        self.in_flight.append((state, frames, job, future))

    def _pool(self) -> Any:
        """The distillation worker process (``run.distill_workers`` > 0), started lazily."""
        if self.bench.run.distill_workers <= 0:
            return None
        if self.pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                max_workers=self.bench.run.distill_workers,
                mp_context=multiprocessing.get_context("spawn"),
            )
        return self.pool

    def _collect(self, wait: bool = False) -> None:
        """Finish the blocks the worker has distilled (all of them with ``wait``)."""
        from hil import procedures

        still = []
        for state, frames, job, future in self.in_flight:
            if not (wait or future.done()):
                still.append((state, frames, job, future))
                continue
            try:
                state.parties, result = future.result()
            except Exception as exc:  # the worker died or the protocol failed
                state.parties = None
                if not isinstance(exc, procedures.ProcedureError):
                    exc = procedures.ProcedureError(f"{type(exc).__name__}: {exc}")
                self._block_done(state, frames, procedures.fail_block(job, exc))
                continue
            try:
                out = procedures.finish_block(self.bench, state.link, job, result, self.delivery)
            except procedures.ProcedureError as exc:
                out = procedures.fail_block(job, exc)
            self._block_done(state, frames, out)
        self.in_flight = still

    def _wait_link(self, state: LinkState) -> None:
        """Block until the worker has returned this link's previous block (and parties)."""
        for s, _frames, _job, future in self.in_flight:
            if s is state:
                future.exception()  # waits; errors are handled by _collect
        self._collect()

    def _block_done(self, state: LinkState, frames: list[Any], result: dict[str, Any]) -> None:
        block_id = result["block"]
        for data in frames:
            data.record["block"] = block_id
            for key in ("key_rate_finite", "beta"):
                if result.get(key) is not None:
                    data.record[key] = result[key]
        state.blocks.append(result)
        state.keys.extend(result.get("key_ids_delivered", []))
        if result.get("estimates"):
            state.last_estimates = result["estimates"]
        if result.get("message"):
            self.progress("link_note", link=state.name, note=result["message"])
        elif result.get("keys"):
            k = result.get("key_rate_finite")
            self.progress(
                "link_note",
                link=state.name,
                note=f"block {block_id}: {len(result.get('key_ids_delivered', []))} keys "
                f"delivered (K={k:.3g} bit/symbol, beta={result.get('beta', 0):.3f}, "
                f"FER={result.get('fer', 0):.2f})",
            )

    # ------------------------------------------------------------------ record
    def _new_record(self) -> dict[str, Any]:
        b = self.bench
        return {
            "schema": report.SCHEMA,
            "bench": {
                "name": b.name,
                "source": b.source,
                "backend": b.backend,
                "description": b.description,
                "file": b.raw,
            },
            "versions": report.versions(),
            "started_utc": report.utc_now(),
            "options": {
                "frames_per_link": self.frames_per_link,
                "symbols_per_frame": self.symbols,
                "block_frames": b.run.block_frames,
                "scenario": str(self.options.scenario) if self.options.scenario else None,
                "seed": self.options.seed if self.options.seed is not None else b.seed,
                "sae_check": self.options.sae_check,
                "scpi_log": str(self.options.scpi_log) if self.options.scpi_log else None,
            },
        }

    def _finalise_record(self, exit_code: int, reason: str) -> None:
        rec = self.run_record
        rec["finished_utc"] = report.utc_now()
        rec["wall_seconds"] = time.monotonic() - self.t_wall0
        rec["bench_seconds"] = self.now() if self.session is not None else None
        rec["links"] = {name: self._link_summary(s) for name, s in self.states.items()}
        rec["frames"] = self.frames
        rec["blocks"] = [b for s in self.states.values() for b in s.blocks]
        rec["alarms"] = [a.to_json() for s in self.states.values() for a in s.monitor.alarms]
        rec["keys"] = {name: list(s.keys) for name, s in self.states.items()}
        rec["errors"] = self.errors
        rec["result"] = "ok" if exit_code == 0 else "failed"
        rec["reason"] = reason
        try:
            self.results.write(rec)
            if self.options.plots:
                report.render(self.directory)
        except Exception as exc:  # never lose the exit status for a plotting problem
            self.errors.append(f"writing the results folder: {exc}")
            self.results.write(rec)

    def _link_summary(self, state: LinkState) -> dict[str, Any]:
        last = state.blocks[-1] if state.blocks else {}
        est = last.get("estimates") or state.last_estimates or {}
        frames = [r for r in self.frames if r["link"] == state.name]
        if not est:
            good = [r for r in frames if r.get("T") is not None]
            est = good[-1] if good else {}
        return {
            "length_km": state.link.length_km,
            "channel": state.link.channel,
            "switch_port": state.link.switch_port,
            "status": state.status,
            "error": state.error,
            "frames": len(frames),
            "frames_quarantined": state.quarantined,
            "blocks": len(state.blocks),
            "sae": {"master": state.link.sae_master, "slave": state.link.sae_slave},
            "summary": {
                "T": est.get("T"),
                "xi": est.get("xi"),
                "snr": est.get("snr"),
                "v_a": est.get("V_A", est.get("v_a")),
                "beta": last.get("beta"),
                "key_rate_finite": last.get("key_rate_finite"),
                "key_rate_asymptotic": last.get("key_rate_asymptotic"),
                "key_rate_distilled": last.get("key_rate_distilled"),
                "keys_delivered": len(state.keys),
            },
        }


def _trace(scan: Any) -> dict[str, Any]:
    return {
        "distance_m": scan.distance_m,
        "level_db": scan.level_db,
        "time": scan.time,
        "events": [e.__dict__ for e in scan.events],
    }

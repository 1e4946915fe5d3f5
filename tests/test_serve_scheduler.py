"""The daemon's camera scheduler (`rtmw_edge.serve.scheduler`), on a simulated clock, then in the real daemon.

The plan rules by hand-made cases (oldest-due first, round-robin ties, admission within budgets, late frames that
set no limit, the bounded wait for a camera about to deliver — never for a stalled one); then a discrete-event
simulation of cameras and ticks (frames at each camera's period, the latest frame kept, a tick costing the sum of
its cameras' costs) for what must hold over time: a device that cannot serve every camera at its rate serves them
in equal shares; a stalled camera and a flooding one leave the others' rates as they are alone. Finally the real
daemon with stub inference and in-process sources (a camera at 10 FPS, a stalled one, a flooding one): the other
cameras keep their frame rate (margins from the configuration, for a loaded machine), drops are counted by
camera and reason, and bad budgets are one `error:` line, exit 2."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rtmw_edge.serve.scheduler import CameraView, Scheduler, check_budgets

ROOT = Path(__file__).resolve().parents[1]


def view(name, captured=None, owed=None, last=None, period=0.1, budget=0.1) -> CameraView:
    return CameraView(name, captured, owed if owed is not None else captured,
                      last if last is not None else captured, period, budget)


def serve(s: Scheduler, names, costs, now: float, period: float = 0.1) -> None:
    s.served([view(n, now, period=period) for n in names], costs, now)


# ------------------------------------------------------------------------------------------ the plan, by hand
def test_oldest_due_first_is_round_robin_with_configuration_order_last():
    s = Scheduler()
    views = [view("a", 1.00, owed=0.95), view("b", 1.00, owed=0.90), view("c", 1.00), view("d", 1.00)]
    assert s.plan(1.0, views).take == ["b", "a", "c", "d"]     # never served: waiting longest first (b's first
    serve(s, ["c"], [0.0], 1.0)                                 # frame was replaced), then configuration order
    serve(s, ["a", "d"], [0.0, 0.0], 1.1)
    views = [view(n, 1.3) for n in "abcd"]
    assert s.plan(1.3, views).take == ["c", "a", "d", "b"]      # c served at 1.0, a and d at 1.1, b waits since 1.3
    views[1] = view("b", 1.3, owed=0.9)
    assert s.plan(1.3, views).take[0] == "b"                    # ... or since 0.9 (its first frame was replaced)


def test_admission_keeps_every_admitted_frame_within_its_budget():
    s = Scheduler()
    serve(s, ["a", "b", "c"], [0.04, 0.04, 0.04], 0.0)
    views = [view("a", 1.00, budget=0.2), view("b", 1.00, budget=0.2), view("c", 1.00, budget=0.2)]
    plan = s.plan(1.01, views)                   # 200 ms budgets, ticks of 100 ms at most: two cameras of 40 ms fit
    assert plan.take == ["a", "b"] and plan.defer == ["c"] and plan.predicted_s == pytest.approx(0.08)
    assert plan.wait_s == 0.0                    # a full device waits for nobody
    serve(s, ["a", "b"], [0.04, 0.04], 1.01)
    plan = s.plan(1.10, [view("a", 1.09, budget=0.2), view("b", 1.09, budget=0.2),
                         view("c", 1.08, owed=1.00, budget=0.2)])
    assert plan.take[0] == "c"                   # the deferred camera is owed the longest: first in the next tick


def test_a_tick_never_runs_longer_than_half_the_smallest_budget_of_its_cameras():
    s = Scheduler()
    serve(s, ["a", "b", "c"], [0.04, 0.04, 0.04], 0.0)
    late = [view(n, 0.50, budget=0.2) for n in "abc"]                   # frames already past their budgets
    assert s.plan(1.0, late).take == ["a", "b"]                        # still 100 ms ticks at most
    assert s.plan(1.0, [view(n, 0.99) for n in "abc"]).take == ["a"]   # 100 ms budgets: 50 ms ticks, one camera
    tight = [view("a", 0.99, budget=0.5), view("b", 0.99, budget=0.1), view("c", 0.99, budget=0.5)]
    plan = s.plan(1.0, tight)                    # b's 100 ms budget caps the tick it is in at 50: a + b is 80 ms
    assert plan.take == ["a"] and plan.defer == ["b", "c"]
    tight = [view("a", 0.99, budget=0.1), view("b", 0.99, budget=0.5)]
    plan = s.plan(1.0, tight)                    # a's cap holds for the cameras after it too
    assert plan.take == ["a"] and plan.defer == ["b"]
    s = Scheduler()
    serve(s, ["x"], [0.5], 0.0)                  # a camera whose cost exceeds its budget is still served, alone
    plan = s.plan(1.0, [view("a", 0.99), view("x", 0.99)])
    assert plan.take == ["x"] and plan.defer == ["a"]


def test_the_tick_waits_for_a_camera_about_to_deliver_but_never_past_the_budgets_nor_for_a_stalled_one():
    s = Scheduler()
    serve(s, ["a", "b"], [0.01, 0.01], 0.0)
    # a holds a frame captured at 1.000 (budget 200 ms); b's last frame was at 0.970, its next is due at 1.070
    plan = s.plan(1.000, [view("a", 1.000, budget=0.2), view("b", last=0.970)])
    assert plan.take == ["a"] and plan.wait_s == pytest.approx(0.070 + 0.025)   # until due + a quarter period
    plan = s.plan(1.000, [view("a", 1.000), view("b", last=0.970)])             # a's budget: 100 ms
    assert plan.wait_s == pytest.approx(0.1 - 0.01 - 0.01)                      # capped: both still fit it
    plan = s.plan(1.060, [view("a", 1.000), view("b", last=0.970)])
    assert plan.wait_s == pytest.approx(0.1 - 0.06 - 0.02)
    plan = s.plan(1.000, [view("a", 1.000), view("b", last=0.880)])             # b's frame is 20 ms late
    assert plan.wait_s == pytest.approx(0.005)                                  # a quarter period's grace: 5 ms
    plan = s.plan(1.000, [view("a", 1.000), view("b", last=0.850)])             # 50 ms late: stalled
    assert plan.wait_s == 0.0
    plan = s.plan(1.000, [view("a", 1.000, budget=None), view("b", last=0.970)])
    assert plan.wait_s == 0.0                                                   # no budget: nothing to spend
    plan = s.plan(1.000, [view("a", 1.000), view("b", last=0.990, period=0.2)])  # due at 1.19: past a's budget
    assert plan.wait_s == 0.0


def test_a_camera_faster_than_its_rate_gets_its_rate():
    s = Scheduler()
    serve(s, ["f"], [0.01], 1.0)                     # its frame of 1.00 served, period 100 ms: next slot 1.10
    plan = s.plan(1.03, [view("f", 1.02), view("a", 1.02)])
    assert plan.take == ["a"] and plan.early == ["f"]            # 1.02 is more than half a period early
    assert s.plan(1.06, [view("f", 1.05)]).take == ["f"]         # half a period early: due (jitter)
    serve(s, ["f"], [0.01], 1.05)                    # on schedule: the next slot is 1.20, not 1.05 + 0.1
    assert s.next_due["f"] == pytest.approx(1.2)
    serve(s, ["f"], [0.01], 1.23)
    assert s.next_due["f"] == pytest.approx(1.3)
    serve(s, ["f"], [0.01], 3.0)                     # after an idle spell: the schedule restarts, no burst
    assert s.next_due["f"] == pytest.approx(3.05)


def test_costs_are_learned_per_camera_and_forgotten_with_the_camera():
    s = Scheduler(inference_s=0.05)
    assert s.cost("new") == 0.05                  # before any tick: one measured inference
    serve(s, ["a"], [0.02], 0.0)
    serve(s, ["a"], [0.04], 0.1)
    assert s.cost("a") == pytest.approx(0.02 + 0.3 * 0.02) and s.one_camera_s() == pytest.approx(0.026)
    s.forget({"b"})
    assert s.costs == {} and s.cost("a") == 0.05


# ------------------------------------------------------------------------------------------ over time, simulated
def simulate(cameras: dict, seconds: float = 20.0) -> dict:
    """Cameras name → dict(period, phase, cost, budget, until): frames at phase + k·period (until `until`), the
    latest one kept; the worker's loop (plan, bounded wait, tick = Σ costs). → name → [(capture, published)]."""
    s = Scheduler()
    arrivals = sorted((c["phase"] + k * c["period"], name) for name, c in cameras.items()
                      for k in range(int(seconds / c["period"]) + 1)
                      if c["phase"] + k * c["period"] < min(seconds, c.get("until", seconds)))
    held, owed, last = {}, {}, {}
    out = {name: [] for name in cameras}
    t, i = 0.0, 0

    def deliver(until):
        nonlocal i
        while i < len(arrivals) and arrivals[i][0] <= until:
            when, name = arrivals[i]
            owed.setdefault(name, when)
            held[name], last[name] = when, when
            i += 1

    def plan(now):
        views = [CameraView(n, held.get(n), owed.get(n), last.get(n), c.get("declared", c["period"]),
                            c.get("budget")) for n, c in cameras.items()]
        p = s.plan(now, views)
        p.views = views
        return p

    while t < seconds:
        deliver(t)
        p = plan(t)
        if not p.take:   # as the worker: until the next frame
            if i >= len(arrivals):
                break
            t = arrivals[i][0]
            continue
        until = t + p.wait_s
        while p.wait_s > 0:
            nxt = arrivals[i][0] if i < len(arrivals) else float("inf")
            was, t = t, min(t + p.wait_s, nxt, until)
            deliver(t)
            p = plan(t)
            if t >= until or t <= was:
                break
        cost = sum(cameras[n]["cost"] for n in p.take)
        views = {v.name: v for v in p.views}
        for n in p.take:
            out[n].append((held.pop(n), t + cost))
            owed.pop(n, None)
        s.served([views[n] for n in p.take], [cameras[n]["cost"] for n in p.take], t)
        t += cost
    return out


def test_an_overloaded_device_serves_every_camera_in_equal_shares():
    # four cameras at 10 FPS in close phases, 60 ms each: 16.7 frames/s for a demand of 40; 100 ms budgets
    cams = {f"c{k}": dict(period=0.1, phase=0.01 * k, cost=0.06, budget=0.1) for k in range(4)}
    served = {n: len(v) for n, v in simulate(cams).items()}
    assert max(served.values()) - min(served.values()) <= 1, served
    assert sum(served.values()) >= 0.95 * 20 / 0.06                 # the device is kept busy: no time lost


def test_a_stalled_and_a_flooding_camera_leave_the_others_rates_as_alone():
    others = {n: dict(period=0.1, phase=p, cost=0.01, budget=0.1) for n, p in (("a", 0.0), ("b", 0.037))}
    alone = {n: len(v) for n, v in simulate(others).items()}
    noisy = dict(others, stalled=dict(period=0.1, phase=0.05, cost=0.01, budget=0.1, until=3.0),
                 flood=dict(period=0.002, phase=0.001, declared=0.1, cost=0.01, budget=0.1))
    run = simulate(noisy)
    for n in others:
        assert len(run[n]) >= 0.9 * alone[n], (n, len(run[n]), alone[n])
        assert max(p - c for c, p in run[n]) <= 0.1 + 1e-9            # and within their budgets
    assert len(run["stalled"]) <= 31 and len(run["flood"]) > len(run["a"])


def test_waiting_for_a_camera_due_soon_batches_it_without_breaking_a_budget():
    cams = {"a": dict(period=0.1, phase=0.0, cost=0.01, budget=0.1), "b": dict(period=0.1, phase=0.03, cost=0.01,
                                                                               budget=0.1)}
    run = simulate(cams, 5.0)
    pairs = {round(p, 9) for n in run for _, p in run[n]}
    assert len(pairs) <= 0.6 * sum(len(v) for v in run.values())    # most ticks carry both cameras
    for n in cams:
        assert max(p - c for c, p in run[n]) <= 0.1 + 1e-9
        assert len(run[n]) >= 0.95 * 5.0 / 0.1


# ------------------------------------------------------------------------------------------ budgets in the config
def test_a_budget_under_one_inference_is_one_line():
    from rtmw_edge.serve.config import CameraConfig, ConfigError

    ok, tight = CameraConfig(name="a", max_latency_ms=50.0), CameraConfig(name="door", max_latency_ms=5.0)
    check_budgets([ok, CameraConfig(name="b")], 0.02, "d.toml")
    check_budgets([tight], None, "d.toml")                          # nothing measured: nothing to check
    with pytest.raises(ConfigError) as err:
        check_budgets([ok, tight], 0.02, "d.toml")
    assert str(err.value) == ("d.toml: cameras.door.max_latency_ms = 5 is under one inference of the model (20.0 ms, "
                              "measured at start-up): raise it, or leave it out (default: one frame period at the "
                              "camera's rate)")


@pytest.mark.parametrize("value, message", [("-5", "must be 0 or between 1 and 60000"),
                                            ("0.5", "must be 0 or between 1 and 60000"),
                                            ('"fast"', "expected a number")])
def test_a_bad_budget_in_the_file_is_one_error_line_and_exit_2(tmp_path, value, message):
    path = tmp_path / "d.toml"
    path.write_text(f'[cameras.front]\nsource = "clip.avi"\nmax_latency_ms = {value}\n')
    proc = subprocess.run([sys.executable, "-m", "rtmw_edge.cli", "serve", "--config", str(path), "--check"],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and f"cameras.front.max_latency_ms {message}" in lines[0]


# ------------------------------------------------------------------------------------------ the real daemon
class LiveSource:
    """An in-process live camera (a `sources.Source`): a 64×48 frame every INTERVAL seconds, declaring FPS;
    after STOP_AFTER frames it sends nothing more, without closing (a stalled camera)."""

    kind = "camera"
    live = True
    dropped = skipped = 0

    def __init__(self, fps: float, interval: float, stop_after: int | None = None) -> None:
        from types import SimpleNamespace

        self.fps, self.interval, self.stop_after = fps, interval, stop_after
        self.closed = threading.Event()
        self._frame = SimpleNamespace
        self.image = np.full((48, 64, 3), 90, np.uint8)

    def __iter__(self):
        n, next_at = 0, time.monotonic()
        while not self.closed.is_set():
            if self.stop_after is not None and n >= self.stop_after:
                self.closed.wait(0.05)
                continue
            next_at += self.interval
            self.closed.wait(max(0.0, next_at - time.monotonic()))
            yield self._frame(image=self.image, index=n, timestamp=time.monotonic())
            n += 1

    def close(self) -> None:
        self.closed.set()


SOURCES = {"a": dict(fps=10.0, interval=0.1), "b": dict(fps=10.0, interval=0.1),
           "stalled": dict(fps=10.0, interval=0.1, stop_after=5), "flood": dict(fps=10.0, interval=0.002)}


def _processed(port: int, names) -> dict[str, float]:
    from test_serve_support import metric, metrics

    samples = metrics(port)
    return {n: metric(samples, "rtmw_edge_frames_processed_total", camera=n) for n in names}


def _rates(tmp_path, names, seconds: float = 3.0) -> tuple[dict, dict]:
    """Frames per second of cameras NAMES over SECONDS (after a second of warm-up), and the metrics."""
    from test_serve_support import StubEstimator, config_from, metrics, wait_for

    from rtmw_edge.serve.daemon import DaemonThread

    tmp_path.mkdir(parents=True, exist_ok=True)
    cams = "".join(f'[cameras.{n}]\nsource = "{n}"\n' for n in names)
    cfg = config_from(tmp_path, f"[server]\nport = 0\n{cams}")
    opener = lambda spec, prefetch=1, loop=False, on_skip=None: LiveSource(**SOURCES[spec])  # noqa: E731
    with DaemonThread(cfg, estimator=StubEstimator(delay=0.005), opener=opener) as d:
        wait_for(lambda: all(v > 0 for v in _processed(d.port, ("a", "b")).values()), 20, what="a and b served")
        time.sleep(1.0)
        before, t0 = _processed(d.port, names), time.monotonic()
        time.sleep(seconds)
        after, t1 = _processed(d.port, names), time.monotonic()
        samples = metrics(d.port)
    return {n: (after[n] - before[n]) / (t1 - t0) for n in names}, samples


def test_a_stalled_and_a_flooding_camera_leave_the_others_frame_rate_in_the_daemon(tmp_path):
    from test_serve_support import metric

    alone, _ = _rates(tmp_path / "alone", ("a", "b"))
    noisy, samples = _rates(tmp_path / "noisy", ("a", "b", "stalled", "flood"))
    for n in ("a", "b"):
        # 10 FPS sources, 5 ms stub inference: the rate alone is about 10; margins for a machine shared with other runs
        assert alone[n] >= 7.0 and noisy[n] >= 0.8 * alone[n], (alone, noisy)
    assert metric(samples, "rtmw_edge_frames_processed_total", camera="stalled") <= 5
    assert 5.0 <= noisy["flood"] <= 12.0, noisy          # sending at 500 FPS, served at its declared 10
    flood_drops = {r: metric(samples, "rtmw_edge_frames_dropped_total", camera="flood", reason=r)
                   for r in ("stale", "rate")}
    assert sum(flood_drops.values()) > 100 and flood_drops["rate"] > 0, flood_drops  # above its 10 FPS: "rate"
    assert metric(samples, "rtmw_edge_latency_budget_seconds", camera="a") == pytest.approx(0.1)  # one frame period
    assert metric(samples, "rtmw_edge_ticks_total") > 0 and metric(samples, "rtmw_edge_tick_cameras_count") > 0


def test_a_budget_under_one_measured_inference_stops_the_start(tmp_path):
    from test_serve_support import StubEstimator, config_from

    from rtmw_edge.serve.config import ConfigError
    from rtmw_edge.serve.daemon import DaemonThread

    cfg = config_from(tmp_path, '[server]\nport = 0\n[cameras.a]\nsource = "a"\nmax_latency_ms = 10\n')
    opener = lambda spec, prefetch=1, loop=False, on_skip=None: LiveSource(**SOURCES[spec])  # noqa: E731
    with pytest.raises(ConfigError, match=r"cameras\.a\.max_latency_ms = 10 is under one inference of the model "
                                          r"\(([5-9][0-9]|[1-9][0-9]{2,})\.[0-9] ms"):
        DaemonThread(cfg, estimator=StubEstimator(delay=0.05), opener=opener).start()


def test_the_cli_says_a_budget_under_one_inference_in_one_error_line_and_exits_2(tmp_path, random_export):
    det = ROOT.parent / "shared" / "models" / "rtmdet-nano_person_e2e_dyn.onnx"
    if not det.is_file():
        pytest.skip("shared detector not found")
    from test_serve_support import write_video

    video = write_video(tmp_path / "front.avi", gray_frames=4)
    path = tmp_path / "d.toml"
    path.write_text(f'[server]\nport = 0\n[model]\ndet = "{det}"\npose = "{random_export("rtmpose-t-256x192")}"\n'
                    f'backend = "onnxruntime"\n[cameras.front]\nsource = "{video}"\nmax_latency_ms = 1\n')
    proc = subprocess.run([sys.executable, "-m", "rtmw_edge.cli", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "cameras.front.max_latency_ms = 1 is under one inference of the model" in lines[0]
    assert "Traceback" not in proc.stderr


def test_a_tick_that_raises_is_counted_on_its_cameras_and_the_loop_goes_on(tmp_path, monkeypatch):
    from test_serve_support import StubEstimator, config_from, metric, metrics, wait_for

    from rtmw_edge.multicam import StepCameraBatch
    from rtmw_edge.serve import worker as W
    from rtmw_edge.serve.daemon import DaemonThread

    class Faulty(StepCameraBatch):
        ticks = 0

        def tick(self, items):
            Faulty.ticks += 1
            if Faulty.ticks <= 2:
                raise RuntimeError("the batch itself broke")
            return super().tick(items)
    monkeypatch.setattr(W, "open_camera_batch", lambda estimator, batched=True: Faulty())
    cfg = config_from(tmp_path, '[server]\nport = 0\n[cameras.a]\nsource = "a"\n')
    opener = lambda spec, prefetch=1, loop=False, on_skip=None: LiveSource(**SOURCES[spec])  # noqa: E731
    with DaemonThread(cfg, estimator=StubEstimator(), opener=opener) as d:
        wait_for(lambda: metric(metrics(d.port), "rtmw_edge_frames_processed_total", camera="a") >= 3, 20,
                 what="frames after the faults")
        samples = metrics(d.port)
        assert d.daemon.worker.alive()
    assert metric(samples, "rtmw_edge_inference_errors_total", camera="a") == 2


def test_a_reload_with_a_budget_under_one_camera_s_cost_is_refused(tmp_path):
    from test_serve_support import StubEstimator, config_from, metric, metrics, wait_for

    from rtmw_edge.serve.daemon import DaemonThread

    base = '[server]\nport = 0\n[cameras.a]\nsource = "a"\n'
    cfg = config_from(tmp_path, base)
    new = {"text": base + "max_latency_ms = 10\n"}
    opener = lambda spec, prefetch=1, loop=False, on_skip=None: LiveSource(**SOURCES[spec])  # noqa: E731
    with DaemonThread(cfg, estimator=StubEstimator(delay=0.05), opener=opener,
                      reloader=lambda: config_from(tmp_path, new["text"])) as d:
        wait_for(lambda: metric(metrics(d.port), "rtmw_edge_frames_processed_total", camera="a") >= 3, 20,
                 what="three frames")                    # the scheduler has learned a's cost: about 50 ms
        assert d.call(d.daemon.reload()) is False        # 10 ms: under one camera's share of a tick
        assert d.daemon.config.cameras[0].max_latency_ms == 0
        new["text"] = base + "max_latency_ms = 400\n"
        assert d.call(d.daemon.reload()) is True
        samples = metrics(d.port)
    assert metric(samples, "rtmw_edge_config_reloads_total", result="failed") == 1
    assert metric(samples, "rtmw_edge_latency_budget_seconds", camera="a") == pytest.approx(0.4)

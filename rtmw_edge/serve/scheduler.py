"""Which cameras go into the next tick: a rate per camera, latency budgets, fair throttling, a bounded wait.

The worker asks `Scheduler.plan(now, views)` before each tick, with a `CameraView` of every camera (its latest
frame's capture time, since when it has been owed a result, its budget and frame period). The answer (`Plan`):

- **take**, in tick order: the cameras that hold a frame and are **due**, oldest-due first. A camera's results
  follow a schedule of capture times at its rate: the k-th at the first one's capture + k periods (restarted
  after an idle spell, so no burst builds up); a frame captured half a period or less before its slot is due.
  A camera at its rate with jitter under half a period thus loses no frame, and one sending faster than its
  rate (a flooding source) gets its rate and no more: its frames that are not due wait and are replaced by
  newer ones (``rate`` drops). Due cameras go oldest-due first: the one owed its turn the longest — since it
  was last served, or, never served yet, since its first waiting frame (`owed_since`; a frame replaced by a
  newer one keeps its place) — which is round-robin when every camera has frames; ties in configuration order;
- **defer**: due cameras left for a later tick. A tick never runs longer than half the smallest budget among its
  cameras: cameras are admitted in order while the tick's predicted time (Σ predicted costs) stays within half
  the budget of every admitted camera, so a frame that arrives just after a tick started — it waits for that
  tick, then runs in the next — is still published within its budget. The first camera in order is always
  taken (progress; a budget under twice one camera's cost then means one camera per tick). A deferred camera is
  first in the next tick (it is owed the longest), so a device that cannot serve every camera at its rate
  serves them in turn: each camera gets an equal share, and its frames replaced meanwhile are counted as
  ``throttled`` drops;
- **early**: cameras holding a frame that is not due yet (a frame captured before a camera's next slot that is
  replaced is a ``rate`` drop);
- **wait_s**: how long to wait first for cameras due soon, before the admitted frames' budgets would run out
  (DeepStream's ``batched-push-timeout``, bounded by the others' budgets): a camera whose frame is expected
  (last capture + its frame period; a held frame: its due time) within the slack of every admitted frame and
  within the tick's cap is waited for until a quarter period after that, at most — a frame later than that (a
  stalled source) is never waited for. 0 when nothing is worth waiting for, or when cameras were deferred (the
  device is full).

Costs are learned per camera (`served`: its share of each tick it was in, `multicam.TickReport.shares`, an
exponential average); a camera never served yet is assumed to cost one inference (`inference_s`, measured at
start-up), else the average of the cameras known.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..streams import open_stream
from .config import CameraConfig, ConfigError

log = logging.getLogger("rtmw_edge.serve.scheduler")

COST_ALPHA = 0.3         # weight of the newest tick in a camera's cost average
WARMUP_FRAME = (480, 640)  # the start-up measurement's frame (h, w): a gray picture, one person box


def measure_inference(estimator) -> float | None:
    """One inference of ESTIMATOR, in seconds: the detector on a 640×480 frame plus the pose of one person, the
    fastest of two runs after a first (warm-up) one. Estimators without separate detect and pose (the GPU
    pipeline, the Triton client, plain callables) run one frame on a throwaway stream (no person on the gray
    frame: the detector side only). None when it cannot run (a Triton server that is down): nothing to check."""
    image = np.full((*WARMUP_FRAME, 3), 114, np.uint8)
    box = np.array([[200, 80, 440, 420]], np.float32)
    split = callable(getattr(estimator, "detect", None)) and callable(getattr(estimator, "pose", None))
    stream = None
    try:
        if split:
            def once() -> float:
                t = time.perf_counter()
                estimator.detect(image)
                estimator.pose(image, box)
                return time.perf_counter() - t
        else:
            stream = open_stream(estimator)

            def once() -> float:
                t = time.perf_counter()
                stream.step(image)
                return time.perf_counter() - t
        once()
        return min(once(), once())
    except Exception as exc:  # noqa: BLE001 - no measurement: the budgets are not checked
        log.warning("could not measure one inference at start-up (%s: %s): latency budgets are not checked",
                    type(exc).__name__, exc, extra={"event": "warmup_failed"})
        return None
    finally:
        if stream is not None:
            stream.close()


def check_budgets(cameras: Sequence[CameraConfig], inference_s: float | None, where: str) -> None:
    """A camera whose `max_latency_ms` is under one inference can never be served within it: one line naming the
    camera, its budget and the measured time (ConfigError: exit 2 at start, a failed reload on SIGHUP)."""
    if inference_s is None:
        return
    for cam in cameras:
        if cam.max_latency_ms and cam.max_latency_ms / 1000.0 < inference_s:
            raise ConfigError(f"{where}: cameras.{cam.name}.max_latency_ms = {cam.max_latency_ms:g} is under one "
                              f"inference of the model ({inference_s * 1000:.1f} ms, measured at start-up): raise "
                              "it, or leave it out (default: one frame period at the camera's rate)")


@dataclass
class CameraView:
    name: str
    captured: float | None          # monotonic capture time of the frame it holds (None: no frame)
    owed_since: float | None        # since when it has had a frame waiting (kept when the frame is replaced)
    last_capture: float | None      # its latest capture, taken or not (when its next frame is expected)
    period_s: float | None          # its frame period (None: unknown, e.g. a file read as fast as inference)
    budget_s: float | None          # capture → result published (None: no budget)


@dataclass
class Plan:
    take: list[str] = field(default_factory=list)
    defer: list[str] = field(default_factory=list)
    early: list[str] = field(default_factory=list)
    wait_s: float = 0.0
    predicted_s: float = 0.0        # the predicted tick time of `take`


class Scheduler:
    def __init__(self, inference_s: float | None = None) -> None:
        self.inference_s = inference_s           # one inference (detector + pose of one person), measured
        self.costs: dict[str, float] = {}        # camera → its predicted share of a tick (seconds)
        self.next_due: dict[str, float] = {}     # camera → the capture time its next result is due at
        self.last_served: dict[str, float] = {}  # camera → when the last tick it was in started
        self.ticks = 0

    # -- costs
    def cost(self, name: str) -> float:
        if name in self.costs:
            return self.costs[name]
        if self.inference_s is not None:
            return self.inference_s
        return sum(self.costs.values()) / len(self.costs) if self.costs else 0.0

    def one_camera_s(self) -> float | None:
        """The smallest cost learned for a camera (one camera's share of a tick: about one inference), or None
        before any tick — what a reload checks new budgets against when nothing was measured at start-up."""
        costs = list(self.costs.values())   # read from another thread (a reload) while the worker updates it
        return min(costs) if costs else None

    def earliest(self, v: CameraView) -> float:
        """The earliest capture time of camera V's next result at its rate: half a period before its schedule
        (`next_due`: one period after the previous result's frame), so a camera at its rate with jitter under half a
        period never loses a frame, and one sending faster gets no more than its rate."""
        due = self.next_due.get(v.name)
        return float("-inf") if due is None else due - (v.period_s or 0.0) / 2

    def due(self, v: CameraView) -> float:
        """Since when camera V (due now) has been owed its turn: since it was last served, or — never served yet —
        since it has waited (`owed_since`: kept while its waiting frame is replaced by newer ones)."""
        if v.name in self.last_served:
            return self.last_served[v.name]
        return v.owed_since if v.owed_since is not None else v.captured

    def served(self, views: list[CameraView], shares: list[float], now: float) -> None:
        """After a tick that started at NOW: these cameras were in it, with these shares of its time."""
        self.ticks += 1
        for v, share in zip(views, shares):
            old = self.costs.get(v.name)
            self.costs[v.name] = share if old is None else old + COST_ALPHA * (share - old)
            self.last_served[v.name] = now
            if v.captured is not None:   # a schedule of captures: k-th result at the first + k periods, restarted
                period = v.period_s or 0.0  # after an idle spell (no burst to catch up); no rate: its last capture
                due = self.next_due.get(v.name)
                self.next_due[v.name] = v.captured + period if due is None else \
                    max(due + period, v.captured + period / 2)

    def forget(self, keep: set[str]) -> None:
        """Drop the state of cameras not in KEEP (removed by a reload)."""
        for table in (self.costs, self.next_due, self.last_served):
            for name in [n for n in table if n not in keep]:
                del table[name]

    # -- the plan
    def plan(self, now: float, views: list[CameraView]) -> Plan:
        order = {v.name: i for i, v in enumerate(views)}
        plan = Plan()
        ready, soon = [], []      # due now; (expected, view) of cameras due or delivering soon
        for v in views:
            if v.captured is not None and v.captured >= self.earliest(v):
                ready.append((self.due(v), v))
                continue
            if v.captured is not None:              # faster than its rate: its next frame will be due
                plan.early.append(v.name)
                soon.append((max(now, self.earliest(v)), v))
            elif v.period_s and v.last_capture is not None:   # its next frame is expected a period after its last
                soon.append((max(v.last_capture + v.period_s, self.earliest(v)), v))
        ready.sort(key=lambda e: (e[0], order[e[1].name]))
        cap = float("inf")            # half the smallest budget among the admitted cameras: the longest tick allowed
        limit = float("inf")          # the earliest deadline (capture + budget) among the admitted frames
        total = 0.0
        for k, (_, v) in enumerate(ready):
            cost = self.cost(v.name)
            budget = v.budget_s if v.budget_s is not None else float("inf")
            if plan.take and total + cost > min(cap, budget / 2):
                plan.defer = [w.name for _, w in ready[k:]]
                break
            plan.take.append(v.name)
            total += cost
            cap, limit = min(cap, budget / 2), min(limit, v.captured + budget)
        plan.predicted_s = total
        slack = limit - now - total
        if plan.defer or not plan.take or slack <= 0 or slack == float("inf"):
            return plan   # a full device waits for nobody; without a budget there is nothing to spend
        until, used = now, 0.0
        for expected, v in sorted(soon, key=lambda e: e[0]):
            cost = self.cost(v.name)
            budget = v.budget_s if v.budget_s is not None else float("inf")
            if max(expected - now, 0.0) + used + cost > slack or total + used + cost > min(cap, budget / 2):
                break                                      # it would not fit the others' budgets, or the tick's
            used += cost
            until = max(until, expected + v.period_s / 4)  # a quarter period of grace: a frame later than that
                                                           # (a stalled source) is never waited for
        plan.wait_s = max(0.0, min(until - now, slack - used))
        return plan

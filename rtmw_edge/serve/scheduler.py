"""Which cameras go into the next tick: latency budgets, fair throttling, a bounded wait for the batch to fill.

The worker asks `Scheduler.plan(now, views)` before each tick, with a `CameraView` of every camera (its latest
frame's capture time, since when it has been owed a result, its budget and frame period). The answer (`Plan`):

- **take**, in tick order: the cameras holding a frame, **oldest-due first** — the camera owed a result the
  longest (`owed_since`: the capture time of the first frame it has waited with since it was last served; a
  frame replaced by a newer one keeps the camera's place), ties in round-robin turn (served least recently
  first), then in configuration order;
- **defer**: cameras left for a later tick, so that the others stay within budget. A camera is admitted while
  the tick's predicted end (now + Σ predicted costs) keeps every admitted frame within its deadline (capture +
  `budget`). A frame that would miss its deadline even alone (already late, or a budget under the cost) sets no
  limit — it is served as soon as possible — but it is not admitted when it would push an attainable frame
  past its deadline. The first camera in order is always taken (progress). A deferred camera is first in the
  next tick (it is owed the longest), so a device that cannot serve every camera at its rate serves them in
  turn: each camera gets an equal share, and its frames replaced meanwhile are counted as ``throttled`` drops;
- **wait_s**: how long to wait first for cameras whose next frame is due before the admitted frames' budgets
  would run out (DeepStream's ``batched-push-timeout``, bounded by the others' budgets): only cameras whose
  frame is expected (last capture + its frame period) within the slack of every admitted frame, and not late
  by more than half a period (a stalled source is never waited for). 0 when nothing is worth waiting for.

Costs are learned per camera (`served`: its share of each tick it was in, `multicam.TickReport.shares`, an
exponential average); a camera never served yet is assumed to cost one inference (`inference_s`, measured at
start-up), else the average of the cameras known.
"""

from __future__ import annotations

from dataclasses import dataclass, field

COST_ALPHA = 0.3         # weight of the newest tick in a camera's cost average


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
    wait_s: float = 0.0
    predicted_s: float = 0.0        # the predicted tick time of `take`


class Scheduler:
    def __init__(self, inference_s: float | None = None) -> None:
        self.inference_s = inference_s           # one inference (detector + pose of one person), measured
        self.costs: dict[str, float] = {}        # camera → its predicted share of a tick (seconds)
        self.turn: dict[str, int] = {}           # camera → the tick number it was last served in
        self.ticks = 0

    # -- costs
    def cost(self, name: str) -> float:
        if name in self.costs:
            return self.costs[name]
        if self.inference_s is not None:
            return self.inference_s
        return sum(self.costs.values()) / len(self.costs) if self.costs else 0.0

    def served(self, names: list[str], shares: list[float]) -> None:
        """After a tick: these cameras were in it, with these shares of its time."""
        self.ticks += 1
        for name, share in zip(names, shares):
            old = self.costs.get(name)
            self.costs[name] = share if old is None else old + COST_ALPHA * (share - old)
            self.turn[name] = self.ticks

    def forget(self, keep: set[str]) -> None:
        """Drop the state of cameras not in KEEP (removed by a reload)."""
        for table in (self.costs, self.turn):
            for name in [n for n in table if n not in keep]:
                del table[name]

    # -- the plan
    def plan(self, now: float, views: list[CameraView]) -> Plan:
        order = {v.name: i for i, v in enumerate(views)}
        ready = [v for v in views if v.captured is not None]
        ready.sort(key=lambda v: (v.owed_since if v.owed_since is not None else v.captured,
                                  self.turn.get(v.name, 0), order[v.name]))
        plan = Plan()
        limit = float("inf")          # the earliest deadline among the attainable admitted frames
        total = 0.0
        for v in ready:
            cost = self.cost(v.name)
            deadline = v.captured + v.budget_s if v.budget_s is not None else float("inf")
            attainable = now + cost <= deadline
            end = now + total + cost
            if plan.take and (end > limit or (attainable and end > deadline)):
                plan.defer.append(v.name)
                continue
            plan.take.append(v.name)
            total += cost
            if attainable:
                limit = min(limit, deadline)
        plan.predicted_s = total
        if plan.defer:   # the device is full: nothing to wait for
            return plan
        slack = limit - now - total
        if not plan.take or slack <= 0 or slack == float("inf"):
            return plan
        expected = []
        for v in views:
            if v.captured is None and v.period_s and v.last_capture is not None:
                due = v.last_capture + v.period_s
                if now - due <= v.period_s / 2:            # late by more than half a period: stalled, not waited for
                    expected.append((due, v))
        until, used = now, 0.0
        for due, v in sorted(expected, key=lambda e: e[0]):
            cost = self.cost(v.name)
            if max(due - now, 0.0) + used + cost > slack:  # it would not fit before the others' budgets run out
                break
            used += cost
            until = max(until, due + v.period_s / 4)       # a quarter period of grace (its frame wakes us anyway)
        plan.wait_s = max(0.0, min(until - now, slack - used))
        return plan

"""Time budgets: ``train.minutes`` shortens the schedule to the steps that fit, on any machine.

After a few timed steps the schedule's length is fitted to the budget (never more than
``train.steps``), then refitted every 50 steps with the longer average while the learning rate
is still constant; under torchrun every rank uses the slowest rank's figures, so all fit the same
schedule. The first timing also tells the caller the seconds per step (``on_timing``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from medp2p.device import Dist

# Steps timed to fit a `train.minutes` budget: the first two (warm-up, allocator, oneDNN caches)
# are skipped, the next eight give a first fit, refined every 50 steps until the lr decay is near;
# the fitted schedule keeps a 3% margin.
WARMUP_STEPS, TIMED_STEPS, REFIT_EVERY, BUDGET_MARGIN = 2, 8, 50, 0.97


def fit_schedule(budget_s: float, elapsed_s: float, step: int, step_s: float, max_steps: int) -> int:
    """The schedule length that ends a run within ``budget_s``.

    ``step`` steps are done after ``elapsed_s``, ``step_s`` per further step; never more than
    ``max_steps`` nor less than ``step + 1``.

    Example:
        >>> fit_schedule(100.0, 10.0, 10, 1.0, 1000)
        97
    """
    fits = int(max(0.0, budget_s * BUDGET_MARGIN - elapsed_s) / max(step_s, 1e-9))
    return max(step + 1, min(max_steps, step + fits))


@dataclass
class TimeBudget:
    """Fits a run's schedule to ``minutes`` (None: no budget) as it goes.

    Args:
        minutes: the whole run's wall-time budget, or None.
        max_steps: ``train.steps``, the longest schedule.
        decay_start: where the learning-rate decay starts, as a fraction of the schedule.
        schedule: the run's ``{"steps", "fitted"}`` (shared with the lr schedules; updated in place).
        first_step: the step this process started at (a resumed run keeps its fitted schedule).
        ddp: this process's place (the fit is collective under torchrun).
        on_timing: called once with ``(seconds per step, schedule length)`` (not on resume).
        started: when the run started (``time.perf_counter()``).

    Example:
        >>> budget = TimeBudget(28.0, 8000, 0.5, trainer.schedule, trainer.step)
        >>> stop = budget.before_step(trainer.step, stop_at=8000)
    """

    minutes: float | None
    max_steps: int
    decay_start: float
    schedule: dict[str, int]
    first_step: int = 0
    ddp: Dist = field(default_factory=Dist)
    on_timing: Callable[[float, int], None] | None = None
    started: float = field(default_factory=time.perf_counter)
    refitted: dict[str, float] = field(default_factory=dict)  # the last fit, for the metrics log
    _timing_from: float | None = None
    _probe_from: float | None = None

    def __post_init__(self) -> None:
        self._fit_at = self.first_step + WARMUP_STEPS + TIMED_STEPS
        self._probe_at = self._fit_at if self.on_timing is not None and self.first_step == 0 else -1

    def before_step(self, step: int, stop_at: int) -> int:
        """Time and fit before ``step``; returns where the run stops (at most ``stop_at``)."""
        now = time.perf_counter()
        if step == self.first_step + WARMUP_STEPS:
            if self.minutes is not None and not self.schedule["fitted"]:
                self._timing_from = now
            if self._probe_at > 0:
                self._probe_from = now
        if self._probe_from is not None and step == self._probe_at and self.on_timing is not None:
            self.on_timing((now - self._probe_from) / TIMED_STEPS, self.schedule["steps"])
            self._probe_from = None
        if self._timing_from is not None and step == self._fit_at:
            self._fit(step, now)
        return min(stop_at, self.schedule["steps"])

    def _fit(self, step: int, now: float) -> None:
        assert self._timing_from is not None and self.minutes is not None
        times = self.ddp.gather((now - self.started, (now - self._timing_from) / (step - self.first_step - WARMUP_STEPS)))
        elapsed, step_s = max(x[0] for x in times), max(x[1] for x in times)
        fitted = fit_schedule(60.0 * self.minutes, elapsed, step, step_s, self.max_steps)
        if self.decay_start > 0:  # the decay must not start in the past
            fitted = max(fitted, math.ceil(step / self.decay_start))
        self.refitted = {"schedule_steps": float(fitted), "step_s": step_s} if fitted != self.schedule["steps"] else {}
        self.schedule.update(steps=fitted, fitted=1)
        self._fit_at = step + REFIT_EVERY
        if self._fit_at + REFIT_EVERY >= int(fitted * self.decay_start):
            self._timing_from = None  # the decay starts soon: the schedule is final

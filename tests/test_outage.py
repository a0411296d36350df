"""Outage windows: the pure per-check state machine (monitor.outage.CheckTracker).

The first half walks one tracker through a sequence of observations, Gatus
`alerting_test.go` style, and after every step pins the exact events, `state` and
`window`. Times are 0, 10, 20, ... (the step index times 10). The second half checks the
invariants of the docstring with hypothesis over random sequences of levels, random
`open_after`/`close_after` and strictly increasing times.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.outage import (
    LEVEL_OF_KIND,
    CheckTracker,
    Event,
    Level,
    OutageWindow,
    State,
    StateChanged,
    WindowClosed,
    WindowOpened,
    level_of,
    severity_for,
)
from monitor.reasons import Reason
from monitor.result import ProbeResult

SVC, CHECK = "openai", "chat"
G, DG, D, U = Level.GOOD, Level.DEGRADED, Level.DOWN, None
UP, DEGRADED, DOWN, UNKNOWN = State.UP, State.DEGRADED, State.DOWN, State.UNKNOWN

# One step: (level, reason, the exact events observe() returns, state after, window after).
Step = tuple[Level | None, str, list[Event], State, OutageWindow | None]


def win(kind: str, start: float, end: float | None = None, reason: str = "timeout",
        critical: bool = True) -> OutageWindow:
    return OutageWindow(SVC, CHECK, kind, start, end, reason, severity_for(kind, critical))


def opened(kind: str, start: float, reason: str = "timeout", critical: bool = True) -> WindowOpened:
    return WindowOpened(win(kind, start, None, reason, critical))


def closed(kind: str, start: float, end: float, reason: str = "timeout",
           critical: bool = True) -> WindowClosed:
    return WindowClosed(win(kind, start, end, reason, critical))


def changed(state: State, at: float) -> StateChanged:
    return StateChanged(SVC, CHECK, state.value, at)


def tracker(open_after: int = 3, close_after: int = 2, critical: bool = True,
            window: OutageWindow | None = None) -> CheckTracker:
    return CheckTracker(SVC, CHECK, open_after, close_after, critical, window)


def walk(t: CheckTracker, steps: list[Step], t0: float = 0) -> None:
    for i, (level, reason, events, state, window) in enumerate(steps):
        at = t0 + 10 * i
        where = f"step {i} (t={at}, level={level!r}, reason={reason!r})"
        assert t.observe(at, level, reason) == events, where
        assert t.state is state, where
        assert t.window == window, where


# --- step by step -----------------------------------------------------------------------


def test_new_tracker_is_unknown_without_window() -> None:
    t = tracker()
    assert (t.state, t.window) == (UNKNOWN, None)


def test_isolated_failures_never_open_a_window() -> None:
    walk(tracker(), [
        (G, "ok", [changed(UP, 0)], UP, None),
        (D, "timeout", [], UP, None),
        (G, "ok", [], UP, None),
        (D, "http_5xx", [], UP, None),
        (D, "http_5xx", [], UP, None),  # two in a row: still one short of open_after=3
        (G, "ok", [], UP, None),
        (D, "timeout", [], UP, None),
        (G, "ok", [], UP, None),
    ])


def test_open_after_failures_open_a_window_back_dated_to_the_first() -> None:
    down = win("down", 10)
    walk(tracker(), [
        (G, "ok", [changed(UP, 0)], UP, None),
        (D, "timeout", [], UP, None),
        (D, "timeout", [], UP, None),
        (D, "timeout", [opened("down", 10), changed(DOWN, 30)], DOWN, down),
        (D, "timeout", [], DOWN, down),  # further failures extend, emit nothing
        (D, "timeout", [], DOWN, down),
    ])


@pytest.mark.parametrize("open_after", [1, 2, 4, 5])
def test_open_after_other_values(open_after: int) -> None:
    t = tracker(open_after=open_after)
    steps: list[Step] = [(G, "ok", [changed(UP, 0)], UP, None)]
    steps += [(D, "dns", [], UP, None)] * (open_after - 1)
    at = 10 * open_after
    steps.append((D, "dns", [opened("down", 10, "dns"), changed(DOWN, at)], DOWN,
                  win("down", 10, reason="dns")))
    walk(t, steps)


def test_unknown_inside_a_failure_streak_neither_breaks_nor_extends_it() -> None:
    down = win("down", 10)
    walk(tracker(), [
        (G, "ok", [changed(UP, 0)], UP, None),
        (D, "timeout", [], UP, None),
        (U, "blocked", [changed(UNKNOWN, 20)], UNKNOWN, None),
        (D, "timeout", [changed(UP, 30)], UP, None),  # 2 failures: the unknown is not one
        (U, "blocked", [changed(UNKNOWN, 40)], UNKNOWN, None),
        (U, "blocked", [], UNKNOWN, None),
        (D, "timeout", [opened("down", 10), changed(DOWN, 60)], DOWN, down),
        # unknown while a window is open: the window stays, the state is unknown
        (U, "blocked", [changed(UNKNOWN, 70)], UNKNOWN, down),
        (G, "ok", [changed(DOWN, 80)], DOWN, down),
        (U, "blocked", [changed(UNKNOWN, 90)], UNKNOWN, down),  # ... and does not break the closing streak
        (G, "ok", [closed("down", 10, 80), changed(UP, 100)], UP, None),
    ])


def test_unknowns_do_not_count_as_failures() -> None:
    walk(tracker(), [
        (D, "timeout", [changed(UP, 0)], UP, None),
        (U, "blocked", [changed(UNKNOWN, 10)], UNKNOWN, None),
        (U, "blocked", [], UNKNOWN, None),
        (D, "timeout", [changed(UP, 30)], UP, None),
        (G, "ok", [], UP, None),  # breaks the streak of 2
        (D, "timeout", [], UP, None),
        (D, "timeout", [], UP, None),
    ])


def test_close_after_good_observations_end_at_the_first_good() -> None:
    down = win("down", 0)
    walk(tracker(), [
        (D, "timeout", [changed(UP, 0)], UP, None),
        (D, "timeout", [], UP, None),
        (D, "timeout", [opened("down", 0), changed(DOWN, 20)], DOWN, down),
        (G, "ok", [], DOWN, down),
        (G, "ok", [closed("down", 0, 30), changed(UP, 40)], UP, None),
        (G, "ok", [], UP, None),
        (D, "timeout", [], UP, None),  # a new streak starts from scratch
        (D, "timeout", [], UP, None),
        (D, "timeout", [opened("down", 60), changed(DOWN, 80)], DOWN, win("down", 60)),
    ])


@pytest.mark.parametrize("close_after", [1, 3, 5])
def test_close_after_other_values(close_after: int) -> None:
    t = tracker(open_after=2, close_after=close_after)
    down = win("down", 0)
    steps: list[Step] = [
        (D, "timeout", [changed(UP, 0)], UP, None),
        (D, "timeout", [opened("down", 0), changed(DOWN, 10)], DOWN, down),
    ]
    steps += [(G, "ok", [], DOWN, down)] * (close_after - 1)
    at = 10 * (close_after + 1)
    steps.append((G, "ok", [closed("down", 0, 20), changed(UP, at)], UP, None))
    walk(t, steps)


def test_a_failure_inside_the_closing_streak_restarts_it() -> None:
    down = win("down", 0)
    walk(tracker(close_after=3), [
        (D, "timeout", [changed(UP, 0)], UP, None),
        (D, "timeout", [], UP, None),
        (D, "timeout", [opened("down", 0), changed(DOWN, 20)], DOWN, down),
        (G, "ok", [], DOWN, down),
        (G, "ok", [], DOWN, down),
        (D, "timeout", [], DOWN, down),  # 2 of 3 good: back to zero
        (G, "ok", [], DOWN, down),
        (G, "ok", [], DOWN, down),
        (G, "ok", [closed("down", 0, 60), changed(UP, 80)], UP, None),
    ])


def test_degraded_window_opens_and_closes() -> None:
    deg = win("degraded", 10, reason="ok")
    walk(tracker(), [
        (G, "ok", [changed(UP, 0)], UP, None),
        (DG, "ok", [], UP, None),
        (DG, "ok", [], UP, None),
        (DG, "ok", [opened("degraded", 10, "ok"), changed(DEGRADED, 30)], DEGRADED, deg),
        (G, "ok", [], DEGRADED, deg),
        (DG, "ok", [], DEGRADED, deg),  # restarts the closing streak
        (G, "ok", [], DEGRADED, deg),
        (G, "ok", [closed("degraded", 10, 60, "ok"), changed(UP, 70)], UP, None),
    ])


def test_failures_mixed_with_slow_probes_open_a_degraded_window() -> None:
    # DEGRADED or worse, but not open_after DOWN in a row: degraded, not down.
    deg = win("degraded", 0, reason="http_5xx")
    walk(tracker(), [
        (D, "http_5xx", [changed(UP, 0)], UP, None),
        (DG, "ok", [], UP, None),
        (D, "http_5xx", [opened("degraded", 0, "http_5xx"), changed(DEGRADED, 20)], DEGRADED, deg),
        (D, "http_5xx", [], DEGRADED, deg),
        (G, "ok", [], DEGRADED, deg),
        (G, "ok", [closed("degraded", 0, 40, "http_5xx"), changed(UP, 50)], UP, None),
    ])


def test_degraded_escalates_to_down_without_overlap() -> None:
    deg = win("degraded", 0, reason="ok")
    down = win("down", 30)
    walk(tracker(), [
        (DG, "ok", [changed(UP, 0)], UP, None),
        (DG, "ok", [], UP, None),
        (DG, "ok", [opened("degraded", 0, "ok"), changed(DEGRADED, 20)], DEGRADED, deg),
        (D, "timeout", [], DEGRADED, deg),
        (D, "timeout", [], DEGRADED, deg),
        # The down window is back-dated to 30; the degraded one ends exactly there.
        (D, "timeout", [closed("degraded", 0, 30, "ok"), opened("down", 30), changed(DOWN, 50)],
         DOWN, down),
        (G, "ok", [], DOWN, down),
        (G, "ok", [closed("down", 30, 60), changed(UP, 70)], UP, None),
    ])


def test_escalation_whose_down_streak_started_before_the_degraded_window_opened() -> None:
    # The degraded window opened at t=20 on [0, 10, 20]; the down streak is [10, 20, 30],
    # so the degraded window is cut back to [0, 10), and its reason counts only t=0.
    deg = win("degraded", 0, reason="timeout")
    walk(tracker(), [
        (DG, "ok", [changed(UP, 0)], UP, None),
        (D, "timeout", [], UP, None),
        (D, "timeout", [opened("degraded", 0, "timeout"), changed(DEGRADED, 20)], DEGRADED, deg),
        (D, "timeout", [closed("degraded", 0, 10, "ok"), opened("down", 10), changed(DOWN, 30)],
         DOWN, win("down", 10)),
    ])


def test_escalation_does_not_charge_the_down_streak_to_the_degraded_window() -> None:
    # The degraded window [0, 30) saw http_5xx twice and ok once; the three timeouts of
    # [30, 50] belong to the down window, not to it.
    deg = win("degraded", 0, reason="http_5xx")
    walk(tracker(), [
        (D, "http_5xx", [changed(UP, 0)], UP, None),
        (D, "http_5xx", [], UP, None),
        (DG, "ok", [opened("degraded", 0, "http_5xx"), changed(DEGRADED, 20)], DEGRADED, deg),
        (D, "timeout", [], DEGRADED, deg),
        (D, "timeout", [], DEGRADED, deg),
        (D, "timeout",
         [closed("degraded", 0, 30, "http_5xx"), opened("down", 30), changed(DOWN, 50)],
         DOWN, win("down", 30)),
    ])


def test_down_recovers_through_degraded_when_recovery_is_slow() -> None:
    down = win("down", 0)
    deg = win("degraded", 30, reason="ok")
    walk(tracker(), [
        (D, "timeout", [changed(UP, 0)], UP, None),
        (D, "timeout", [], UP, None),
        (D, "timeout", [opened("down", 0), changed(DOWN, 20)], DOWN, down),
        (DG, "ok", [], DOWN, down),
        # close_after=2 below DOWN: the down window ends at 30; only 2 slow ones so far.
        (DG, "ok", [closed("down", 0, 30), changed(UP, 40)], UP, None),
        # The third slow one opens a degraded window starting where the down one ended.
        (DG, "ok", [opened("degraded", 30, "ok"), changed(DEGRADED, 50)], DEGRADED, deg),
        (G, "ok", [], DEGRADED, deg),
        (G, "ok", [closed("degraded", 30, 60, "ok"), changed(UP, 70)], UP, None),
    ])


def test_slow_recovery_with_close_after_above_open_after_leaves_no_gap() -> None:
    # The closing streak [20, 30, 40] is all slow: the degraded window starts at its first
    # observation (20, where the down window ends), not at the last open_after of it.
    down = win("down", 0)
    walk(tracker(open_after=2, close_after=3), [
        (D, "timeout", [changed(UP, 0)], UP, None),
        (D, "timeout", [opened("down", 0), changed(DOWN, 10)], DOWN, down),
        (DG, "ok", [], DOWN, down),
        (DG, "ok", [], DOWN, down),
        (DG, "ok", [closed("down", 0, 20), opened("degraded", 20, "ok"), changed(DEGRADED, 40)],
         DEGRADED, win("degraded", 20, reason="ok")),
    ])


def test_slow_recovery_broken_by_a_good_probe() -> None:
    down = win("down", 0)
    walk(tracker(open_after=2, close_after=3), [
        (D, "timeout", [changed(UP, 0)], UP, None),
        (D, "timeout", [opened("down", 0), changed(DOWN, 10)], DOWN, down),
        (DG, "ok", [], DOWN, down),
        (G, "ok", [], DOWN, down),
        (DG, "ok", [closed("down", 0, 20), changed(UP, 40)], UP, None),  # run of 1 < 2
        (DG, "ok", [opened("degraded", 40, "ok"), changed(DEGRADED, 50)], DEGRADED,
         win("degraded", 40, reason="ok")),
    ])


def test_open_and_close_after_one() -> None:
    walk(tracker(open_after=1, close_after=1), [
        (G, "ok", [changed(UP, 0)], UP, None),
        (D, "dns", [opened("down", 10, "dns"), changed(DOWN, 10)], DOWN, win("down", 10, reason="dns")),
        (DG, "ok", [closed("down", 10, 20, "dns"), opened("degraded", 20, "ok"), changed(DEGRADED, 20)],
         DEGRADED, win("degraded", 20, reason="ok")),
        (D, "tls", [closed("degraded", 20, 30, "ok"), opened("down", 30, "tls"), changed(DOWN, 30)],
         DOWN, win("down", 30, reason="tls")),
        (G, "ok", [closed("down", 30, 40, "tls"), changed(UP, 40)], UP, None),
    ])


def test_reason_is_the_most_common_failure_reason() -> None:
    at_open = win("down", 0, reason="http_5xx")
    walk(tracker(), [
        (D, "timeout", [changed(UP, 0)], UP, None),
        (D, "http_5xx", [], UP, None),
        (D, "http_5xx", [opened("down", 0, "http_5xx"), changed(DOWN, 20)], DOWN, at_open),
        (D, "timeout", [], DOWN, at_open),  # the open window keeps its opening reason
        (D, "timeout", [], DOWN, at_open),
        (D, "overloaded", [], DOWN, at_open),
        (G, "ok", [], DOWN, at_open),
        # timeout 3, http_5xx 2, overloaded 1; good probes are not counted
        (G, "ok", [closed("down", 0, 60, "timeout"), changed(UP, 70)], UP, None),
    ])


@pytest.mark.parametrize(("kind", "critical", "severity"), [
    ("down", True, "major_outage"),
    ("down", False, "partial_outage"),
    ("degraded", True, "degraded_performance"),
    ("degraded", False, "degraded_performance"),
])
def test_severity(kind: str, critical: bool, severity: str) -> None:
    assert severity_for(kind, critical) == severity
    t = tracker(open_after=2, critical=critical)
    level = LEVEL_OF_KIND[kind]
    t.observe(0, level, "timeout")
    events = t.observe(10, level, "timeout")
    assert events[0] == WindowOpened(OutageWindow(SVC, CHECK, kind, 0, None, "timeout", severity))
    t.observe(20, G, "ok")
    events = t.observe(30, G, "ok")
    assert events[0] == WindowClosed(OutageWindow(SVC, CHECK, kind, 0, 20, "timeout", severity))


def test_restored_open_window_continues_and_closes() -> None:
    # As after a restart: the window from before is open; the downtime is a monitor gap,
    # and the tracker neither reopens nor restarts the window.
    before = OutageWindow(SVC, CHECK, "down", 100, None, "timeout", "major_outage")
    t = tracker(window=before)
    assert (t.state, t.window) == (DOWN, before)
    walk(t, [
        (U, "blocked", [changed(UNKNOWN, 1000)], UNKNOWN, before),
        (D, "timeout", [changed(DOWN, 1010)], DOWN, before),
        (G, "ok", [], DOWN, before),
        (G, "ok", [WindowClosed(OutageWindow(SVC, CHECK, "down", 100, 1020, "timeout", "major_outage")),
                   changed(UP, 1030)], UP, None),
        (D, "timeout", [], UP, None),
    ], t0=1000)


def test_restored_window_keeps_its_reason_without_new_failures() -> None:
    before = OutageWindow(SVC, CHECK, "down", 100, None, "connect", "partial_outage")
    t = tracker(window=before, critical=False)
    walk(t, [
        (G, "ok", [], DOWN, before),
        (G, "ok", [WindowClosed(OutageWindow(SVC, CHECK, "down", 100, 1000, "connect", "partial_outage")),
                   changed(UP, 1010)], UP, None),
    ], t0=1000)


def test_restored_degraded_window_escalates_to_down() -> None:
    before = OutageWindow(SVC, CHECK, "degraded", 100, None, "ok", "degraded_performance")
    t = tracker(window=before)
    assert t.state is DEGRADED
    walk(t, [
        (D, "timeout", [], DEGRADED, before),
        (D, "timeout", [], DEGRADED, before),
        (D, "timeout",
         [WindowClosed(OutageWindow(SVC, CHECK, "degraded", 100, 1000, "ok", "degraded_performance")),
          opened("down", 1000), changed(DOWN, 1020)], DOWN, win("down", 1000)),
    ], t0=1000)


LEVEL_OF_REASON = [
    (reason, degraded,
     None if reason is Reason.BLOCKED else
     (DG if degraded else G) if reason is Reason.OK else D)
    for reason in Reason for degraded in (False, True)
]


@pytest.mark.parametrize(("reason", "degraded", "level"), LEVEL_OF_REASON)
def test_level_of(reason: Reason, degraded: bool, level: Level | None) -> None:
    result = ProbeResult(SVC, CHECK, 0.0, 0.1, reason, degraded=degraded)
    assert level_of(result) is level


def test_level_of_covers_the_reason_vocabulary() -> None:
    assert {r for r, _, _ in LEVEL_OF_REASON} == set(Reason)
    assert [r for r, _, lv in LEVEL_OF_REASON if lv is None] == [Reason.BLOCKED] * 2
    assert [(r, dg) for r, dg, lv in LEVEL_OF_REASON if lv is DG] == [(Reason.OK, True)]


def test_forget_pending_drops_failures_from_the_streak() -> None:
    t = tracker()
    walk(t, [
        (D, "timeout", [changed(UP, 0)], UP, None),
        (D, "dns", [], UP, None),  # the monitor's own outage, found out later
    ])
    t.forget_pending(10)
    assert t.observe(20, D, "timeout") == []  # [0, 20]: two, not three
    assert t.observe(30, D, "timeout") == [opened("down", 0), changed(DOWN, 30)]


def test_forget_pending_keeps_earlier_observations_and_is_idempotent() -> None:
    t = tracker()
    t.observe(0, D, "timeout")
    t.observe(10, D, "timeout")
    t.forget_pending(20)  # nothing at or after 20
    t.forget_pending(20)
    assert t.observe(20, D, "timeout") == [opened("down", 0), changed(DOWN, 20)]


def test_forget_pending_drops_good_probes_from_a_closing_streak() -> None:
    down = win("down", 0)
    t = tracker()
    walk(t, [
        (D, "timeout", [changed(UP, 0)], UP, None),
        (D, "timeout", [], UP, None),
        (D, "timeout", [opened("down", 0), changed(DOWN, 20)], DOWN, down),
        (G, "ok", [], DOWN, down),
    ])
    t.forget_pending(30)
    assert t.observe(40, G, "ok") == []
    assert t.observe(50, G, "ok") == [closed("down", 0, 40), changed(UP, 50)]


def test_forgotten_failures_do_not_set_the_reason_of_an_open_window() -> None:
    # The monitor went offline at t=20: its own dns failures must not become the reason.
    down = win("down", 0)
    t = tracker(open_after=2, close_after=4)
    walk(t, [
        (D, "timeout", [changed(UP, 0)], UP, None),
        (D, "timeout", [opened("down", 0), changed(DOWN, 10)], DOWN, down),
        (D, "dns", [], DOWN, down),
        (D, "dns", [], DOWN, down),
        (D, "dns", [], DOWN, down),
    ])
    t.forget_pending(20)
    walk(t, [
        (G, "ok", [], DOWN, down),
        (G, "ok", [], DOWN, down),
        (G, "ok", [], DOWN, down),
        (G, "ok", [closed("down", 0, 50, "timeout"), changed(UP, 80)], UP, None),
    ], t0=50)


# --- properties -------------------------------------------------------------------------

DOWN_REASONS = ("timeout", "http_5xx", "dns")
# One observation: its level, the seconds since the previous one, its reason if DOWN.
Draft = tuple[Level | None, int, str]
DRAFT = st.tuples(st.sampled_from([G, DG, D, U]), st.integers(1, 90), st.sampled_from(DOWN_REASONS))
# Independent observations, or runs of one (outages come in runs; these reach the
# escalations and slow recoveries far more often).
SEQUENCES = st.one_of(
    st.lists(DRAFT, max_size=40),
    st.lists(st.tuples(DRAFT, st.integers(1, 6)), max_size=10).map(
        lambda blocks: [draft for draft, n in blocks for _ in range(n)]),
)


@dataclass
class Run:
    """One tracker fed one random sequence, with everything it emitted."""

    open_after: int
    close_after: int
    obs: list[tuple[float, Level | None, str]]
    events: list[list[Event]]  # per observation
    states: list[State]  # after each observation
    windows: list[OutageWindow | None]  # after each observation

    @property
    def flat(self) -> list[Event]:
        return [e for step in self.events for e in step]

    def windows_in_order(self) -> list[OutageWindow]:
        """Every window, closed ones as closed, the open one (if any) last."""
        done = [e.window for e in self.flat if isinstance(e, WindowClosed)]
        last = self.windows[-1] if self.windows else None
        return done + ([last] if last is not None else [])

    def known(self) -> list[tuple[float, Level, str]]:
        return [(at, lv, r) for at, lv, r in self.obs if lv is not None]


def simulate(open_after: int, close_after: int, obs: list[tuple[float, Level | None, str]]) -> Run:
    t = CheckTracker(SVC, CHECK, open_after, close_after)
    run = Run(open_after, close_after, obs, [], [], [])
    for at, level, reason in obs:
        run.events.append(t.observe(at, level, reason))
        run.states.append(t.state)
        run.windows.append(t.window)
    return run


@st.composite
def runs(draw: st.DrawFn, drafts: st.SearchStrategy[list[Draft]] = SEQUENCES,
         min_open_after: int = 1) -> Run:
    open_after = draw(st.integers(min_open_after, 5), label="open_after")
    close_after = draw(st.integers(1, 5), label="close_after")
    at = draw(st.integers(0, 1000), label="t0")
    obs: list[tuple[float, Level | None, str]] = []
    for level, gap, why in draw(drafts, label="observations"):
        at += gap
        obs.append((at, level, why if level is D else "blocked" if level is U else "ok"))
    return simulate(open_after, close_after, obs)


# Each property test generates one run per example and checks every invariant below
# on it (generation is most of the cost). No example database: no .hypothesis/ files.
PROPS = settings(max_examples=300, deadline=None, database=None)


def check_windows_never_overlap_and_are_not_empty(run: Run) -> None:
    windows = run.windows_in_order()
    for w in windows:
        assert w.end is None or w.start < w.end, w
    for prev, nxt in pairwise(windows):
        assert prev.end is not None
        assert nxt.start >= prev.end, (prev, nxt)


def check_every_window_starts_on_a_full_streak_at_its_level(run: Run) -> None:
    """The start is a (known) observation, the first of open_after in a row at the
    window's level or worse. For a window closed by recovery (or still open), all of them
    lie within [start, end). A degraded window cut short by a down window (its end is that
    window's start) may hold fewer: the streak then runs on into the down window."""
    known = run.known()
    times = [at for at, _, _ in known]
    windows = run.windows_in_order()
    for i, w in enumerate(windows):
        level = LEVEL_OF_KIND[w.kind]
        assert w.start in times, w
        first = times.index(w.start)
        streak = known[first:first + run.open_after]
        assert len(streak) == run.open_after, w
        assert all(lv >= level for _, lv, _ in streak), (w, streak)
        superseded = (i + 1 < len(windows) and w.kind == "degraded"
                      and windows[i + 1].kind == "down" and windows[i + 1].start == w.end)
        if not superseded:
            inside = [o for o in known if o[0] >= w.start and (w.end is None or o[0] < w.end)]
            assert sum(lv >= level for _, lv, _ in inside) >= run.open_after, w


def check_every_window_is_back_dated_to_the_first_of_its_streak(run: Run) -> None:
    """The known observation before a window's start is below its level, unless the
    window starts where the previous one ended (degraded -> down, down -> degraded)."""
    known = run.known()
    times = [at for at, _, _ in known]
    windows = run.windows_in_order()
    for i, w in enumerate(windows):
        if i > 0 and windows[i - 1].end == w.start:
            continue
        first = times.index(w.start)
        if first > 0:
            assert known[first - 1][1] < LEVEL_OF_KIND[w.kind], (w, known[first - 1])


def check_every_closing_ends_on_a_full_good_streak(run: Run) -> None:
    """A window closed by recovery ends at a known observation, the first of close_after
    in a row below its level; one closed by escalation ends where the down window starts."""
    known = run.known()
    times = [at for at, _, _ in known]
    windows = run.windows_in_order()
    for i, w in enumerate(windows):
        if w.end is None:
            continue
        nxt = windows[i + 1] if i + 1 < len(windows) else None
        if w.kind == "degraded" and nxt is not None and nxt.kind == "down" and nxt.start == w.end:
            continue
        level = LEVEL_OF_KIND[w.kind]
        assert w.end in times, w
        first = times.index(w.end)
        streak = known[first:first + run.close_after]
        assert len(streak) == run.close_after, w
        assert all(lv < level for _, lv, _ in streak), (w, streak)


def check_window_reason_is_a_most_common_reason_inside_it(run: Run) -> None:
    known = run.known()
    for w in run.windows_in_order():
        if w.end is None:
            continue
        level = LEVEL_OF_KIND[w.kind]
        counts = Counter(r for at, lv, r in known if w.start <= at < w.end and lv >= level)
        assert counts[w.reason] == max(counts.values()), (w, counts)


def check_at_most_one_window_open_and_state_matches_it(run: Run) -> None:
    current: OutageWindow | None = None
    for (_, level, _), step, state, window in zip(run.obs, run.events, run.states, run.windows,
                                                  strict=True):
        for e in step:
            if isinstance(e, WindowOpened):
                assert current is None, "a second window opened"
                assert e.window.is_open
                current = e.window
            elif isinstance(e, WindowClosed):
                assert current is not None, "closed a window that was not open"
                assert e.window.end is not None
                assert (e.window.kind, e.window.start) == (current.kind, current.start)
                current = None
        assert window == current
        if window is not None:
            # an unknown observation makes the state unknown; the window stays open
            assert state.value == (UNKNOWN.value if level is None else window.kind)
        else:
            assert state in (UP, UNKNOWN)


def check_state_changes_alternate_and_match_the_state(run: Run) -> None:
    changes = [e for e in run.flat if isinstance(e, StateChanged)]
    states = [c.state for c in changes]
    assert all(a != b for a, b in pairwise(states)), states
    assert states[:1] != [UNKNOWN.value]  # the tracker starts unknown
    for (at, _, _), step, state in zip(run.obs, run.events, run.states, strict=True):
        mine = [e for e in step if isinstance(e, StateChanged)]
        assert all(c.at == at for c in mine)
        assert len(mine) <= 1
        if mine:
            assert mine[0].state == state.value
    if changes:
        assert changes[-1].state == run.states[-1].value


@settings(PROPS, max_examples=500)  # where the bugs were: a few more examples
@given(runs())
def test_window_invariants(run: Run) -> None:
    check_windows_never_overlap_and_are_not_empty(run)
    check_every_window_starts_on_a_full_streak_at_its_level(run)
    check_every_window_is_back_dated_to_the_first_of_its_streak(run)
    check_every_closing_ends_on_a_full_good_streak(run)
    check_window_reason_is_a_most_common_reason_inside_it(run)


@PROPS
@given(runs())
def test_event_and_state_invariants(run: Run) -> None:
    check_at_most_one_window_open_and_state_matches_it(run)
    check_state_changes_alternate_and_match_the_state(run)


def isolate(drafts: list[Draft]) -> list[Draft]:
    """GOOD and unknown, with single DOWNs that never have a DOWN as known neighbour."""
    out: list[Draft] = []
    last_known: Level | None = None
    for level, gap, why in drafts:
        if (level is D and last_known is D) or level is DG:
            level = G
        out.append((level, gap, why))
        if level is not None:
            last_known = level
    return out


@PROPS
@given(runs(st.lists(DRAFT, max_size=40).map(isolate), min_open_after=2))
def test_isolated_failures_never_open_a_window_with_open_after_2_or_more(run: Run) -> None:
    assert not [e for e in run.flat if isinstance(e, (WindowOpened, WindowClosed))]
    assert all(s in (UP, UNKNOWN) for s in run.states)


def test_thresholds_raised_by_a_reload_still_open_and_close_windows() -> None:
    """The pipeline changes open_after/close_after of a live tracker on reload; the
    history it keeps must grow with them (a fixed-size buffer made a raised open_after
    unreachable: the window never opened)."""
    t = CheckTracker(SVC, CHECK, open_after=2, close_after=1)
    t.observe(0.0, G)
    t.open_after, t.close_after = 4, 3
    for at in (10.0, 20.0, 30.0):
        assert t.observe(at, D, "timeout") == []
    assert opened("down", 10.0) in t.observe(40.0, D, "timeout")
    assert t.observe(50.0, G) == [] and t.observe(60.0, G) == []
    assert WindowClosed(win("down", 10.0, 50.0)) in t.observe(70.0, G)

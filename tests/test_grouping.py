"""The pure grouping core of notification targets, walked step by step with the clock
passed in: routing, min_duration, one message per service per group, restarts."""

from __future__ import annotations

from dataclasses import replace

from monitor.grouping import Digest, Grouper, Route
from monitor.outage import OutageWindow, WindowClosed, WindowOpened

T0 = 1_000_000.0


def down(check: str, start: float = T0, service: str = "deepseek", reason: str = "http_5xx",
         kind: str = "down") -> OutageWindow:
    return OutageWindow(service, check, kind, start, reason=reason, severity="major_outage")


def closed(w: OutageWindow, end: float) -> WindowClosed:
    return WindowClosed(replace(w, end=end))


def test_one_window_waits_for_the_group_then_is_one_digest() -> None:
    g = Grouper(Route(), group_wait=30)
    api = down("api")
    g.add(WindowOpened(api), now=T0 + 40)  # opened (back-dated) after open_after probes
    assert g.next_due() == T0 + 70
    assert g.due(T0 + 69.9) == []
    assert g.due(T0 + 70) == [Digest("deepseek", opened=(api,))]
    assert g.next_due() is None
    assert g.due(T0 + 1000) == []


def test_events_of_one_service_within_the_wait_make_one_digest_others_their_own() -> None:
    g = Grouper(Route(), group_wait=30)
    api, web = down("api"), down("website", T0 + 5)
    openai = down("api", service="openai")
    g.add(WindowOpened(api), now=T0 + 40)
    g.add(WindowOpened(openai), now=T0 + 50)
    g.add(WindowOpened(web), now=T0 + 69)  # within deepseek's 30 s
    assert g.due(T0 + 70) == [Digest("deepseek", opened=(api, web))]
    late = down("login", T0 + 60)
    g.add(WindowOpened(late), now=T0 + 71)  # after the message left: a new group
    assert g.due(T0 + 80) == [Digest("openai", opened=(openai,))]
    assert g.due(T0 + 101) == [Digest("deepseek", opened=(late,))]


def test_a_mass_outage_of_1000_checks_is_one_digest() -> None:
    g = Grouper(Route(), group_wait=30)
    windows = [down(f"c{i:04d}", T0 + i * 0.01) for i in range(1000)]
    for i, w in enumerate(windows):
        g.add(WindowOpened(w), now=T0 + 20 + i * 0.01)
    digests = g.due(T0 + 60)
    assert len(digests) == 1
    assert digests[0].opened == tuple(windows)
    for i, w in enumerate(windows):
        g.add(closed(w, T0 + 300 + i * 0.01), now=T0 + 320 + i * 0.01)
    digests = g.due(T0 + 400)
    assert len(digests) == 1 and len(digests[0].closed) == 1000 and not digests[0].opened


def test_min_duration_holds_the_opening_and_a_blip_sends_nothing() -> None:
    g = Grouper(Route(min_duration=120), group_wait=30)
    blip = down("api")
    g.add(WindowOpened(blip), now=T0 + 40)
    assert g.next_due() == T0 + 120  # it could be announced once it lasted 2 minutes
    g.add(closed(blip, T0 + 90), now=T0 + 100)  # closed after 90 s: a blip
    assert g.next_due() is None
    assert g.due(T0 + 10_000) == []


def test_min_duration_then_the_window_is_announced_and_its_closing_too() -> None:
    g = Grouper(Route(min_duration=120), group_wait=30)
    api = down("api")
    g.add(WindowOpened(api), now=T0 + 40)
    assert g.due(T0 + 119) == []
    assert g.due(T0 + 150) == [Digest("deepseek", opened=(api,))]  # ripe at 120, grouped 30 s
    g.add(closed(api, T0 + 600), now=T0 + 620)
    assert g.due(T0 + 650) == [Digest("deepseek", closed=(replace(api, end=T0 + 600),))]


def test_a_window_that_opens_and_closes_within_one_group_is_told_as_closed() -> None:
    g = Grouper(Route(), group_wait=30)
    api = down("api")
    g.add(WindowOpened(api), now=T0 + 40)
    g.add(closed(api, T0 + 50), now=T0 + 60)
    assert g.due(T0 + 70) == [Digest("deepseek", closed=(replace(api, end=T0 + 50),))]


def test_routing_by_service_and_kind() -> None:
    g = Grouper(Route(services=frozenset({"openai"}), kinds=frozenset({"down"})), group_wait=0)
    g.add(WindowOpened(down("api")), now=T0)  # another service
    slow = down("api", service="openai", kind="degraded")
    g.add(WindowOpened(slow), now=T0)  # a kind it does not want
    api = down("api", service="openai")
    g.add(WindowOpened(api), now=T0)
    service_window = replace(api, check=None)
    g.add(WindowOpened(service_window), now=T0)  # a service's own window repeats its checks
    assert g.due(T0) == [Digest("openai", opened=(api,))]
    g.add(closed(api, T0 + 60), now=T0 + 60)  # "closed" is not among its kinds
    assert g.due(T0 + 60) == []


def test_a_closing_never_seen_opening_is_told_when_it_lasted_min_duration() -> None:
    """After a restart or reload the grouper never saw the opening: it was announced
    exactly when the window lasted min_duration."""
    g = Grouper(Route(min_duration=60), group_wait=0)
    long = down("api")
    short = down("website")
    g.add(closed(long, T0 + 61), now=T0 + 70)
    g.add(closed(short, T0 + 59), now=T0 + 70)
    assert g.due(T0 + 70) == [Digest("deepseek", closed=(replace(long, end=T0 + 61),))]


def test_restore_holds_windows_younger_than_min_duration_only() -> None:
    g = Grouper(Route(min_duration=300), group_wait=10)
    old, young = down("api", T0 - 400), down("website", T0 - 100)
    g.restore([old, young, replace(young, check=None)], now=T0)
    assert g.next_due() == T0 + 200  # the young one: not announced before the restart
    assert g.due(T0 + 210) == [Digest("deepseek", opened=(young,))]


def test_a_check_removed_from_the_config_is_reported_as_removed() -> None:
    g = Grouper(Route(), group_wait=0)
    api = down("api")
    g.add(closed(api, T0 + 100), now=T0 + 100, removed=True)
    assert g.due(T0 + 100) == [Digest("deepseek", removed=(replace(api, end=T0 + 100),))]


def test_flush_sends_what_is_gathered_without_waiting_but_keeps_held_windows() -> None:
    g = Grouper(Route(min_duration=60), group_wait=30)
    api, web = down("api", T0 - 100), down("website", T0)
    g.add(WindowOpened(api), now=T0)
    g.add(WindowOpened(web), now=T0)  # held until T0 + 60
    assert g.flush(T0 + 1) == [Digest("deepseek", opened=(api,))]
    assert g.pending == 1 and g.next_due() == T0 + 60


def test_a_changed_route_applies_to_held_windows() -> None:
    g = Grouper(Route(min_duration=60), group_wait=0)
    api = down("api")
    g.add(WindowOpened(api), now=T0 + 10)
    g.route = Route(min_duration=20)  # a reload
    assert g.next_due() == T0 + 20
    assert g.due(T0 + 20) == [Digest("deepseek", opened=(api,))]


def test_a_mass_outage_held_for_min_duration_ripens_into_one_digest() -> None:
    g = Grouper(Route(min_duration=60), group_wait=30)
    windows = [down(f"c{i:04d}", T0 + i * 0.005) for i in range(3000)]  # 15 s apart at most
    for i, w in enumerate(windows):
        g.add(WindowOpened(w), now=T0 + 20 + i * 0.005)
    assert g.next_due() == T0 + 60
    now, digests = T0 + 60, []
    while (due := g.next_due()) is not None:  # as the timer would come back
        now = max(now, due)
        digests += g.due(now)
    assert [len(d.opened) for d in digests] == [3000]
    assert now == T0 + 90  # the first ripened at T0 + 60, its group waited 30 s

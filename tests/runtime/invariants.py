"""Checks that hold for every entity stream, whatever happened to the process."""

from __future__ import annotations

from collections import Counter

from wakeful.runtime import Event

TERMINAL = ("run.completed", "run.failed", "run.cancelled")


def check_stream(events: list[Event]) -> None:
    """Every run.started has exactly one terminal event after it (unless the run is still
    active at the end); every tool.called exactly one tool.result; every
    approval.requested exactly one approval.decided; seqs have no gap."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "gap or duplicate seq"
    started = [e.run for e in events if e.kind == "run.started"]
    assert len(started) == len(set(started)), "a run started twice"
    ends = Counter(e.run for e in events if e.kind in TERMINAL)
    assert all(n == 1 for n in ends.values()), f"a run ended more than once: {ends}"
    assert set(ends) <= set(started)
    position = {e.run: i for i, e in enumerate(events) if e.kind == "run.started"}
    for i, e in enumerate(events):
        if e.kind in TERMINAL:
            assert position[e.run] < i
    calls = Counter(e.data.call_id for e in events if e.kind == "tool.called")
    results = Counter(e.data.call_id for e in events if e.kind == "tool.result")
    requests = Counter(e.data.call_id for e in events if e.kind == "approval.requested")
    decisions = Counter(e.data.call_id for e in events if e.kind == "approval.decided")
    finished = {e.run for e in events if e.kind in TERMINAL}
    open_runs = set(started) - finished
    owner = {
        e.data.call_id: e.run for e in events if e.kind in ("tool.called", "approval.requested")
    }
    for call, n in calls.items():
        assert n == 1, f"tool call {call} called {n} times"
        if owner[call] not in open_runs:
            assert results[call] == 1, f"tool call {call} has {results[call]} results"
    for call, n in requests.items():
        assert n == 1, f"approval {call} requested {n} times"
        if owner[call] not in open_runs:
            assert decisions[call] == 1, f"approval {call} has {decisions[call]} decisions"
    assert all(n == 1 for n in results.values())
    assert all(n == 1 for n in decisions.values())


def check_all_ended(events: list[Event]) -> None:
    check_stream(events)
    started = {e.run for e in events if e.kind == "run.started"}
    ended = {e.run for e in events if e.kind in TERMINAL}
    assert started == ended, f"runs left unfinished: {started - ended}"

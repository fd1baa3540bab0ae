"""Pure logic: applying watch responses, key ranges, backoff."""

from __future__ import annotations

from sidecar.etcd import Event, KeyRange, KeyValue, enclosing_range, prefix_end
from sidecar.state import MirrorState
from sidecar.syncer import Backoff


def _state() -> MirrorState:
    state = MirrorState(ranges=[KeyRange.for_prefix("/app/"), KeyRange.for_key("/global/flag")])
    state.replace(10, [KeyValue(b"/app/a", b"1", 5), KeyValue(b"/other", b"x", 6)])
    return state


def test_replace_keeps_only_selected_keys():
    state = _state()
    assert state.revision == 10
    assert state.values() == {b"/app/a": b"1"}


def test_events_at_or_below_the_applied_revision_are_ignored_and_counted():
    state = _state()
    assert not state.apply([Event(b"/app/a", b"old", 9), Event(b"/app/b", b"old", 10)])
    assert state.ignored_events == 2
    assert state.values() == {b"/app/a": b"1"}
    assert state.revision == 10


def test_whole_response_is_applied_and_revision_advances():
    state = _state()
    changed = state.apply(
        [Event(b"/app/a", None, 11), Event(b"/app/b", b"2", 11), Event(b"/global/flag", b"on", 12)]
    )
    assert changed
    assert state.values() == {b"/app/b": b"2", b"/global/flag": b"on"}
    assert state.revision == 12


def test_unselected_keys_advance_the_revision_but_change_nothing():
    state = _state()
    assert not state.apply([Event(b"/apq", b"x", 11)])
    assert state.revision == 11 and state.values() == {b"/app/a": b"1"}


def test_prefix_end_and_enclosing_range():
    assert prefix_end(b"/app/") == b"/app0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    merged = enclosing_range([KeyRange.for_prefix("/apps/shop/"), KeyRange.for_key("/apps/a")])
    assert merged.contains(b"/apps/a") and merged.contains(b"/apps/shop/x")
    assert not merged.contains(b"/apps/shop0")
    everything = enclosing_range([KeyRange(b"a", b"\0")])
    assert everything.contains(b"zzz")


def test_fingerprint_counts_and_newest_revision_per_range():
    state = _state()
    state.apply([Event(b"/app/b", b"2", 12)])
    assert state.fingerprint() == [(2, 12), (0, 0)]


def test_backoff_grows_to_a_cap_with_jitter_and_resets():
    backoff = Backoff(initial=0.1, cap=1.0)
    delays = [backoff.next() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 1.0 for d in delays)
    assert delays[-1] >= 0.5
    backoff.reset()
    assert backoff.next() <= 0.1

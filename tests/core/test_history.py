"""Message ids and bounded history, sans I/O: chatcast._core.history."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcast._core.history import (
    ANNOUNCEMENTS,
    Entry,
    History,
    HistoryLimits,
    cost,
    entry,
    room_entries,
    to_message,
)
from chatcast.message import ANNOUNCEMENT, MESSAGE, Message


def say(history: History, room: str, *texts: str, ts: float = 1000.0) -> int:
    """Number ``texts`` from alice in ``room`` and keep them; return the first id."""
    first = history.take_ids(len(texts))
    history.keep(room, room_entries(first, ts, "alice", room, list(texts)))
    return first


def ids(items: list[Entry]) -> list[int]:
    return [item[0] for item in items]


def test_ids_increase_across_rooms_and_are_unique() -> None:
    history = History(HistoryLimits())
    a = say(history, "lobby", "one", "two")
    b = say(history, "den", "three")
    c = say(history, "lobby", "four")
    assert (a, b, c) == (1, 3, 4)
    assert history.latest_id == 4
    lobby = history.log("lobby")
    assert lobby is not None
    assert ids(lobby.after(0)) == [1, 2, 4]


def test_entries_round_trip_as_history_messages() -> None:
    message = Message("hi", "bob", ANNOUNCEMENT, None, 12.5, None, None, 9)
    back = to_message(entry(message))
    assert back == Message("hi", "bob", ANNOUNCEMENT, None, 12.5, None, None, 9, True)
    assert to_message(entry(message), history=False) == message


def test_count_limit_per_room_and_exact_gap() -> None:
    history = History(HistoryLimits(messages=3))
    say(history, "lobby", *[f"m{n}" for n in range(10)])  # ids 1..10
    log = history.log("lobby")
    assert log is not None
    assert ids(log.after(0)) == [8, 9, 10]
    assert log.missed(0) == 7
    assert log.missed(4) == 3  # 5, 6 and 7 are gone
    assert log.missed(7) == 0
    assert ids(log.after(4)) == [8, 9, 10]
    assert history.evicted == 7


def test_gap_counts_only_the_room_s_own_messages() -> None:
    history = History(HistoryLimits(messages=2))
    say(history, "lobby", "a")  # 1
    say(history, "den", "b", "c", "d")  # 2..4 (2 evicted from den)
    say(history, "lobby", "e", "f")  # 5, 6 (1 evicted from lobby)
    lobby, den = history.log("lobby"), history.log("den")
    assert lobby is not None
    assert den is not None
    assert lobby.missed(0) == 1
    assert den.missed(0) == 1
    assert den.missed(2) == 0


def test_byte_limit_per_room_keeps_at_least_the_newest() -> None:
    history = History(
        HistoryLimits(bytes=cost((0, 0.0, MESSAGE, "alice", "x" * 100, "r", None)) * 2)
    )
    say(history, "lobby", "x" * 100, "y" * 100, "z" * 100)
    log = history.log("lobby")
    assert log is not None
    assert [item[4][0] for item in log.after(0)] == ["y", "z"]
    say(history, "lobby", "w" * 10_000)  # alone over the limit: still kept (the newest)
    assert [item[4][0] for item in log.after(0)] == ["w"]


def test_totals_evict_the_oldest_message_of_the_server() -> None:
    history = History(HistoryLimits(total_messages=4))
    say(history, "a", "1", "2")  # 1, 2
    say(history, "b", "3", "4")  # 3, 4
    say(history, "c", "5")  # 5: evicts 1
    a = history.log("a")
    assert a is not None
    assert ids(a.after(0)) == [2]
    assert history.total_messages == 4
    say(history, "c", "6", "7")  # evicts 2, 3
    assert ids(a.after(0)) == []
    assert a.missed(0) == 2
    assert history.total_messages == 4


def test_ten_thousand_rooms_stay_within_the_totals() -> None:
    limits = HistoryLimits(total_messages=5000, total_bytes=2_000_000)
    history = History(limits)
    for n in range(10_000):
        say(history, f"room{n}", "hello " * 10, "again")
    assert history.total_messages <= 5000
    assert history.total_bytes <= 2_000_000
    assert len(history._oldest) <= 10_000 + 2 * history.evicted  # one entry per stream, lazily
    kept = sum(len(log) for log in history._logs.values())
    assert kept == history.total_messages


def test_age_limit() -> None:
    history = History(HistoryLimits(age=60.0))
    say(history, "lobby", "old", ts=1000.0)
    say(history, "lobby", "new", ts=1050.0)
    history.expire(1070.0)
    log = history.log("lobby")
    assert log is not None
    assert [item[4] for item in log.after(0)] == ["new"]
    assert log.missed(0) == 1


def test_before_and_latest() -> None:
    history = History(HistoryLimits())
    say(history, "lobby", *[str(n) for n in range(1, 11)])
    log = history.log("lobby")
    assert log is not None
    assert ids(log.before(None, 3)) == [8, 9, 10]
    assert ids(log.before(5, 3)) == [2, 3, 4]
    assert ids(log.before(1, 3)) == []
    assert ids(log.after(8, 5)) == [9, 10]
    assert ids(log.after(2, 2)) == [3, 4]


def test_drop_forgets_a_stream_and_its_share_of_the_totals() -> None:
    history = History(HistoryLimits(total_messages=10))
    say(history, "@1", "secret", "more")
    say(history, "lobby", "hi")
    history.drop("@1")
    assert history.log("@1") is None
    assert history.total_messages == 1
    say(history, "lobby", *["x"] * 9)  # the dropped entries are skipped by the eviction
    assert history.total_messages == 10


def test_restore_continues_the_ids() -> None:
    history = History(HistoryLimits())
    history.restore(
        [
            Message("a", "alice", MESSAGE, "lobby", 1.0, None, None, 41),
            Message("b", "server", ANNOUNCEMENT, None, 2.0, None, None, 42),
        ]
    )
    assert history.next_id == 43
    announcements = history.log(ANNOUNCEMENTS)
    assert announcements is not None
    assert ids(announcements.after(0)) == [42]


@pytest.mark.parametrize(
    "settings_",
    [{"messages": -1}, {"bytes": 1.5}, {"age": 0}, {"total_messages": True}, {"age": -5.0}],
)
def test_limits_are_checked(settings_: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="history"):
        HistoryLimits(**settings_)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 5)), max_size=60),
    st.integers(1, 6),
    st.integers(3, 20),
)
def test_kept_plus_missed_is_everything_after_any_id(
    batches: list[tuple[str, int]], per_room: int, total: int
) -> None:
    """For any id, a stream's kept messages after it plus its missed count are exactly the
    messages it ever had after it; and the bounds always hold."""
    history = History(HistoryLimits(messages=per_room, total_messages=total))
    sent: dict[str, list[int]] = {}
    for room, count in batches:
        first = say(history, room, *["t"] * count)
        sent.setdefault(room, []).extend(range(first, first + count))
        assert history.total_messages <= total
    for room, all_ids in sent.items():
        log = history.log(room)
        assert log is not None
        assert len(log) <= per_room
        assert sum(map(cost, log.after(0))) == log.bytes
        for last in range(0, history.latest_id + 1):
            after = ids(log.after(last))
            assert after == sorted(after)
            assert len(after) + log.missed(last) == sum(1 for i in all_ids if i > last)
            assert ids(log.before(last + 1, 1000)) == [i for i in ids(log.after(0)) if i <= last]

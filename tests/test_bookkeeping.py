"""Energy bookkeeping per socket: integration, full, daily reset (across DST), manual, restore."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.bookkeeping import (
    DEFAULT_MAX_GAP_S,
    Books,
    SocketBook,
    battery_energy_wh,
    books_from_dict,
    books_to_dict,
    empty_books,
    mark_manual,
    record_manual,
    record_sample,
    restore,
    update_socket,
)
from shared.daytime import day_start, next_boundary

AMS = ZoneInfo("Europe/Amsterdam")
SIX = time(6)
CAPACITY_WH = 10_000.0
MAX_POWER_W = 2_000.0
T0 = datetime(2026, 6, 1, 10, 0, tzinfo=AMS)  # an ordinary day, long after its 06:00


def sample(
    book: SocketBook,
    at: datetime,
    power_w: float,
    power_on: bool = True,
    *,
    capacity_wh: float = CAPACITY_WH,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
) -> SocketBook:
    return update_socket(
        book,
        capacity_wh=capacity_wh,
        max_power_w=MAX_POWER_W,
        sample_at=at,
        power_w=power_w,
        power_on=power_on,
        day_start=day_start(at, AMS, SIX),
        max_gap_s=max_gap_s,
    )


def feed(
    book: SocketBook, start: datetime, seconds: int, step_s: int, power_w: float
) -> SocketBook:
    """Samples of constant `power_w` every `step_s` from `start`, `seconds` long (both ends)."""
    for offset in range(0, seconds + 1, step_s):
        book = sample(book, start + timedelta(seconds=offset), power_w)
    return book


def boiler() -> SocketBook:
    return SocketBook(name="boiler")


def test_constant_power_over_an_hour_gives_p_wh() -> None:
    book = feed(boiler(), T0, 3600, 30, 1_234.0)
    assert book.energy_wh == pytest.approx(1_234.0)
    assert not book.full
    assert book.last_sample_at == T0 + timedelta(hours=1)
    assert book.last_power_w == 1_234.0


def test_the_first_sample_only_starts_the_book() -> None:
    book = sample(boiler(), T0, 1_500.0)
    assert book.energy_wh == 0.0
    assert book.last_sample_at == T0
    assert book.day_start == day_start(T0, AMS, SIX)


def test_trapezoid_between_changing_samples() -> None:
    book = sample(boiler(), T0, 400.0)
    book = sample(book, T0 + timedelta(minutes=10), 1_600.0)
    # (400 + 1600) / 2 W for 1/6 h; the left rectangle would give 66.7 Wh.
    assert book.energy_wh == pytest.approx(1_000.0 / 6)
    book = sample(book, T0 + timedelta(minutes=20), 400.0)
    assert book.energy_wh == pytest.approx(2 * 1_000.0 / 6)


def test_a_gap_longer_than_max_gap_counts_the_lower_power() -> None:
    book = sample(boiler(), T0, 1_800.0)
    book = sample(book, T0 + timedelta(hours=2), 600.0)
    assert book.energy_wh == pytest.approx(2 * 600.0)
    # Just within the max gap: the trapezoid.
    book = sample(book, T0 + timedelta(hours=2, seconds=DEFAULT_MAX_GAP_S), 1_000.0)
    assert book.energy_wh == pytest.approx(1_200.0 + 800.0 * DEFAULT_MAX_GAP_S / 3600)


def test_a_gap_while_switched_off_counts_nothing() -> None:
    book = sample(boiler(), T0, 0.0, power_on=False)
    book = sample(book, T0 + timedelta(hours=3), 1_800.0)
    assert book.energy_wh == 0.0


def test_negative_power_readings_count_as_zero() -> None:
    book = sample(boiler(), T0, -5.0, power_on=False)
    book = sample(book, T0 + timedelta(hours=1), -5.0, power_on=False)
    assert book.energy_wh == 0.0
    assert book.last_power_w == 0.0


def test_energy_is_clipped_at_capacity() -> None:
    book = feed(boiler(), T0, 3600, 30, 1_000.0)
    book = sample(book, T0 + timedelta(hours=2), 1_000.0, capacity_wh=1_500.0)
    assert book.energy_wh == 1_500.0
    assert not book.full  # still drawing: it is not known to be full


def test_an_on_socket_drawing_under_10_percent_is_full() -> None:
    book = feed(boiler(), T0, 600, 30, 2_000.0)
    book = sample(book, T0 + timedelta(seconds=630), 199.0)  # < 10 % of 2000 W
    assert book.full
    assert book.energy_wh == CAPACITY_WH
    # Switched off, it stays full.
    book = sample(book, T0 + timedelta(hours=1), 0.0, power_on=False)
    assert book.full
    assert book.energy_wh == CAPACITY_WH
    # Re-heating: no longer full, energy unknown so left at capacity.
    book = sample(book, T0 + timedelta(hours=2), 2_000.0)
    assert not book.full
    assert book.energy_wh == CAPACITY_WH
    book = sample(book, T0 + timedelta(hours=2, minutes=1), 150.0)
    assert book.full


def test_filled_stays_from_the_first_full_reading_to_the_boundary() -> None:
    """The day's need was met once the store read full: a draw afterwards (the thermostat
    re-heats) makes it not full, but still filled, until the boundary empties the book."""
    book = feed(boiler(), T0, 600, 30, 2_000.0)
    assert not book.filled
    book = sample(book, T0 + timedelta(seconds=630), 100.0)
    assert (book.full, book.filled) == (True, True)
    book = sample(book, T0 + timedelta(hours=2), 2_000.0)  # a draw: re-heating
    assert (book.full, book.filled) == (False, True)
    book = sample(book, T0 + timedelta(hours=3), 0.0, power_on=False)
    assert (book.full, book.filled) == (False, True)
    next_day = datetime.combine(T0.date() + timedelta(days=1), SIX, AMS)
    book = sample(book, next_day + timedelta(minutes=1), 0.0, power_on=False)
    assert (book.full, book.filled, book.energy_wh) == (False, False, 0.0)
    # books retained by an earlier version (no `filled`) read as not filled
    assert not SocketBook.model_validate({"name": "boiler", "full": True}).filled


def test_a_sample_read_as_the_relay_closed_is_not_taken_for_full() -> None:
    # The poller reads the power, then the relay: a switch-on in between reads 'on, 0 W'.
    book = boiler()
    for offset in range(0, 630, 30):  # off all along ...
        book = sample(book, T0 + timedelta(seconds=offset), 0.0, power_on=False)
    book = sample(book, T0 + timedelta(seconds=650), 0.0)  # ... switched on just now
    assert not book.full
    assert book.energy_wh < 1.0
    assert book.on_since == T0 + timedelta(seconds=650)
    book = sample(book, T0 + timedelta(seconds=680), 2_000.0)
    assert not book.full
    assert book.energy_wh == pytest.approx(2_000.0 / 2 * 30 / 3600)
    assert book.on_since == T0 + timedelta(seconds=650)
    # Switched off: the run of 'on' samples ends.
    assert sample(book, T0 + timedelta(seconds=710), 0.0, power_on=False).on_since is None


def test_a_store_that_is_full_reads_full_on_its_second_on_sample() -> None:
    book = sample(boiler(), T0, 0.0, power_on=False)
    book = sample(book, T0 + timedelta(seconds=30), 3.0)  # on, nothing drawn: may be a lag
    assert not book.full
    book = sample(book, T0 + timedelta(seconds=60), 3.0)  # 30 s on, still nothing: full
    assert book.full
    assert book.energy_wh == CAPACITY_WH


def test_an_unsettled_low_sample_keeps_a_full_store_full() -> None:
    book = sample(boiler(), T0, 5.0)
    book = sample(book, T0 + timedelta(seconds=30), 5.0)
    assert book.full
    book = sample(book, T0 + timedelta(seconds=60), 0.0, power_on=False)
    book = sample(book, T0 + timedelta(seconds=90), 0.0)  # switched on again: just now
    assert book.full
    assert book.energy_wh == CAPACITY_WH


def test_after_a_gap_the_run_of_on_samples_starts_again() -> None:
    book = feed(boiler(), T0, 300, 30, 2_000.0)
    # The poller was away an hour: the socket may have been switched off and on meanwhile.
    book = sample(book, T0 + timedelta(hours=2), 0.0)
    assert book.on_since == T0 + timedelta(hours=2)
    assert not book.full
    book = sample(book, T0 + timedelta(hours=2, seconds=30), 0.0)
    assert book.full


def test_a_book_retained_before_on_since_existed_still_reads() -> None:
    old = {"name": "boiler", "energy_wh": 10.0, "last_sample_at": T0.isoformat()}
    book = SocketBook.model_validate(old)
    assert book.on_since is None
    book = sample(book, T0 + timedelta(seconds=30), 0.0)
    assert not book.full  # its run of 'on' samples starts here
    assert sample(book, T0 + timedelta(seconds=60), 0.0).full


def test_exactly_10_percent_is_not_full_and_off_is_not_full() -> None:
    assert not sample(boiler(), T0, 200.0).full
    assert not sample(boiler(), T0, 0.0, power_on=False).full


@pytest.mark.parametrize("delta_s", [0, -1, -3600])
def test_samples_at_or_before_the_last_are_ignored(delta_s: int) -> None:
    book = feed(boiler(), T0, 300, 30, 1_000.0)
    late = sample(book, T0 + timedelta(seconds=300 + delta_s), 5.0)
    assert late is book


def test_reset_at_the_boundary_counts_only_the_part_after_it() -> None:
    boundary = datetime(2026, 6, 2, 6, 0, tzinfo=AMS)
    book = feed(boiler(), boundary - timedelta(hours=1), 3590, 10, 1_000.0)
    book = mark_manual(book, day_start(boundary - timedelta(hours=1), AMS, SIX))
    assert book.energy_wh == pytest.approx(1_000.0 * 3590 / 3600)
    assert book.manual
    book = sample(book, boundary + timedelta(seconds=20), 1_900.0)
    # Of 05:59:50 → 06:00:20 (1000 → 1900 W), only 06:00:00 → 06:00:20 counts:
    # from 1300 W (interpolated) to 1900 W.
    assert book.energy_wh == pytest.approx((1_300.0 + 1_900.0) / 2 * 20 / 3600)
    assert book.day_start == boundary
    assert not book.manual
    assert not book.full


def test_a_full_socket_is_empty_after_the_boundary() -> None:
    book = sample(boiler(), datetime(2026, 6, 2, 5, 58, 30, tzinfo=AMS), 10.0)
    book = sample(book, datetime(2026, 6, 2, 5, 59, tzinfo=AMS), 10.0)
    assert book.full
    book = sample(book, datetime(2026, 6, 2, 6, 0, tzinfo=AMS), 0.0, power_on=False)
    assert not book.full
    assert book.energy_wh == 0.0


@pytest.mark.parametrize(
    ("transition_day", "hours"),
    [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25), (date(2026, 6, 1), 24)],
)
def test_a_whole_day_of_samples_every_30_s(transition_day: date, hours: int) -> None:
    power_w = 1_000.0
    first = datetime.combine(transition_day, time(3), tzinfo=AMS)  # the day from 06:00 before
    start = day_start(first, AMS, SIX)
    end = next_boundary(first, AMS, SIX)
    assert end - start == timedelta(hours=hours)

    at = start - timedelta(seconds=15)  # boundaries fall between two samples
    day_before = day_start(at, AMS, SIX)
    books = empty_books(day_before)
    energies: list[float] = []
    days: set[datetime] = set()
    while at <= end + timedelta(seconds=15):
        books = record_sample(
            books,
            "boiler",
            capacity_wh=100_000.0,
            max_power_w=2_000.0,
            sample_at=at,
            power_w=power_w,
            power_on=True,
            day_start=day_start(at, AMS, SIX),
        )
        energies.append(books.book("boiler").energy_wh)
        days.add(books.day_start)
        if at == end - timedelta(seconds=15):
            # The last sample of the day: all of it but its last 15 s.
            assert books.day_start == start
            assert energies[-1] == pytest.approx(power_w * (hours * 3600 - 15) / 3600)
        at += timedelta(seconds=30)

    assert len(energies) == hours * 120 + 2
    assert energies[1] == pytest.approx(power_w * 15 / 3600)  # 15 s after the start
    assert all(b > a for a, b in pairwise(energies[1:-1]))
    # After the end: a new, empty day that only counts the 15 s after its boundary.
    assert books.day_start == end
    assert energies[-1] == pytest.approx(power_w * 15 / 3600)
    assert days == {day_before, start, end}


def test_manual_control_ends_when_full() -> None:
    book = mark_manual(sample(boiler(), T0, 0.0, power_on=False), day_start(T0, AMS, SIX))
    assert book.manual
    book = feed(book, T0 + timedelta(seconds=30), 600, 30, 2_000.0)
    assert book.manual
    book = sample(book, T0 + timedelta(minutes=20), 50.0)
    assert book.full
    assert not book.manual


def test_manual_control_ends_at_the_boundary() -> None:
    evening = datetime(2026, 6, 1, 22, 0, tzinfo=AMS)
    book = mark_manual(sample(boiler(), evening, 2_000.0), day_start(evening, AMS, SIX))
    book = sample(book, datetime(2026, 6, 2, 5, 59, 50, tzinfo=AMS), 2_000.0)
    assert book.manual
    book = sample(book, datetime(2026, 6, 2, 6, 0, 10, tzinfo=AMS), 2_000.0)
    assert not book.manual


def test_switched_on_by_hand_just_after_the_boundary_stays_manual() -> None:
    before = datetime(2026, 6, 2, 5, 59, 50, tzinfo=AMS)
    after = datetime(2026, 6, 2, 6, 0, 5, tzinfo=AMS)
    book = sample(boiler(), before, 0.0, power_on=False)
    book = mark_manual(book, day_start(after, AMS, SIX))  # before the day's first sample
    book = sample(book, after + timedelta(seconds=10), 2_000.0)
    assert book.manual
    # A late sample from the day before is ignored rather than resetting the new day.
    assert sample(book, before + timedelta(seconds=5), 2_000.0) is book


def test_books_keyed_by_socket_name() -> None:
    start = day_start(T0, AMS, SIX)
    books = empty_books(start)
    books = record_manual(books, "heater", start)
    for name, power_w in [("boiler", 1_000.0), ("heater", 500.0)]:
        for minutes in (0, 10):
            books = record_sample(
                books,
                name,
                capacity_wh=CAPACITY_WH,
                max_power_w=MAX_POWER_W,
                sample_at=T0 + timedelta(minutes=minutes),
                power_w=power_w,
                power_on=True,
                day_start=start,
            )
    assert set(books.sockets) == {"boiler", "heater"}
    assert books.book("boiler").energy_wh == pytest.approx(1_000.0 / 6)
    assert books.book("heater").energy_wh == pytest.approx(500.0 / 6)
    assert books.book("heater").manual
    assert books.book("unknown") == SocketBook(name="unknown", day_start=start)
    with pytest.raises(ValidationError, match="filed under"):
        Books(day_start=start, sockets={"x": SocketBook(name="y")})


def _some_books() -> Books:
    start = day_start(T0, AMS, SIX)
    books = empty_books(start)
    for minutes, power_w in [(0, 800.0), (5, 1_200.0), (10, 100.0)]:
        books = record_sample(
            books,
            "boiler",
            capacity_wh=CAPACITY_WH,
            max_power_w=MAX_POWER_W,
            sample_at=T0 + timedelta(minutes=minutes),
            power_w=power_w,
            power_on=True,
            day_start=start,
        )
    return record_manual(books, "heater", start)


def test_books_survive_a_restart_on_the_same_day() -> None:
    books = _some_books()
    retained = json.loads(json.dumps(books_to_dict(books)))
    assert books_from_dict(retained) == books
    later = T0 + timedelta(hours=8)
    assert restore(retained, later, AMS, SIX) == books
    assert restore(retained, later, AMS, SIX).book("boiler").full


def test_restore_never_carries_books_across_the_boundary() -> None:
    retained = books_to_dict(_some_books())
    tomorrow = datetime(2026, 6, 2, 6, 0, tzinfo=AMS)
    restored = restore(retained, tomorrow, AMS, SIX)
    assert restored == empty_books(day_start(tomorrow, AMS, SIX))
    assert restored.sockets == {}
    yesterday = datetime(2026, 6, 1, 5, 0, tzinfo=AMS)  # a clock that went back
    assert restore(retained, yesterday, AMS, SIX).sockets == {}
    assert restore(None, T0, AMS, SIX) == empty_books(day_start(T0, AMS, SIX))
    with pytest.raises(ValidationError):
        restore({"day_start": "yesterday"}, T0, AMS, SIX)


@pytest.mark.parametrize(
    ("soc_pct", "expected_wh"), [(0, 0), (50, 2_500), (100, 5_000), (-3, 0), (104, 5_000)]
)
def test_battery_energy_is_capacity_times_state_of_charge(
    soc_pct: float, expected_wh: float
) -> None:
    assert battery_energy_wh(5_000.0, soc_pct) == pytest.approx(expected_wh)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="state of charge"):
        battery_energy_wh(5_000.0, float("nan"))
    with pytest.raises(ValueError, match="capacity"):
        battery_energy_wh(-1.0, 50.0)
    with pytest.raises(ValueError, match="naive"):
        update_socket(
            boiler(),
            capacity_wh=CAPACITY_WH,
            max_power_w=MAX_POWER_W,
            sample_at=datetime(2026, 6, 1, 10),
            power_w=100.0,
            power_on=True,
            day_start=day_start(T0, AMS, SIX),
        )
    with pytest.raises(ValueError, match="capacity"):
        sample(boiler(), T0, 100.0, capacity_wh=0.0)
    with pytest.raises(ValueError, match="measured power"):
        sample(boiler(), T0, float("inf"))


_samples = st.lists(
    st.tuples(
        st.floats(min_value=-60, max_value=7_200),  # seconds after the previous sample
        st.floats(min_value=-100, max_value=5_000),  # W
        st.booleans(),  # on
        st.booleans(),  # switched on by hand just before
    ),
    max_size=60,
)


@given(_samples, st.floats(min_value=1, max_value=20_000))
def test_energy_always_within_0_and_capacity(
    samples: list[tuple[float, float, bool, bool]], capacity_wh: float
) -> None:
    book = boiler()
    at = datetime(2026, 3, 28, 20, 0, tzinfo=UTC)  # runs into the spring-forward day
    for step_s, power_w, power_on, by_hand in samples:
        at += timedelta(seconds=step_s)
        if by_hand:
            book = mark_manual(book, day_start(at, AMS, SIX))
        before = book
        book = sample(book, at, power_w, power_on, capacity_wh=capacity_wh)
        assert 0.0 <= book.energy_wh <= capacity_wh
        if book.full:
            assert book.energy_wh == capacity_wh
            if book is not before:  # the sample counted: full ends manual control
                assert not book.manual


def test_on_since_after_the_last_sample_is_refused() -> None:
    later = (T0 + timedelta(seconds=1)).isoformat()
    with pytest.raises(ValidationError, match="on_since"):
        SocketBook.model_validate(
            {"name": "b", "last_sample_at": T0.isoformat(), "on_since": later}
        )
    with pytest.raises(ValidationError, match="on_since"):
        SocketBook.model_validate({"name": "b", "on_since": T0.isoformat()})
    with pytest.raises(ValueError, match="settle_s"):
        update_socket(
            boiler(),
            capacity_wh=CAPACITY_WH,
            max_power_w=MAX_POWER_W,
            sample_at=T0,
            power_w=100.0,
            power_on=True,
            day_start=day_start(T0, AMS, SIX),
            settle_s=float("nan"),
        )

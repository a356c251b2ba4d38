"""Energy bookkeeping per socket, from successive measurements (pure: no I/O, no clock).

The rules (from the issue):

* Energy is measured power integrated over the real time between two samples, with the
  trapezoid rule (exact for power that changes linearly between samples, and no worse
  than the left rectangle for a step), clipped to [0, capacity].
* A gap between samples longer than `max_gap_s` (default 15 min: the poller was down) is
  not interpolated: it is integrated with the lower of the two powers, which never counts
  energy that a switch-off during the gap would not have delivered, and errs on the low
  side (the full rule below corrects a low estimate; nothing corrects a high one).
* An 'on' socket drawing < 10 % of its max power is full: energy = capacity -- once it
  has been on for `settle_s` (default 10 s). A sample read while the relay had only just
  closed (the poller reads power, then the relay: a switch in between gives 'on, 0 W'; a
  real socket's power reading lags its relay by a second) says nothing about the store,
  so it keeps `full` as it was. `on_since` is the first sample of the current run of
  'on' samples (after a gap longer than `max_gap_s` the run starts again: the socket may
  have been switched in between). A full socket
  that draws >= 10 % again (a thermostat re-heating) is no longer full: the store lost an
  unknown amount, so its energy stays at capacity (clipped) while `full` is False, which
  tells the scheduler the store accepts energy again until it reads full once more.
  `filled` stays True from the first full reading to the boundary: the day's need was met
  (a needed store is filled once a day; what a draw takes after that is tomorrow's).
* Everything resets to empty at the daily boundary in local time (see `shared.daytime`):
  the caller passes the `day_start` of each sample. A book never integrates across the
  boundary: of an interval that spans it, only the part after the boundary is counted,
  for the new day (with the power at the boundary interpolated).
* A socket switched on by hand (`mark_manual`) stays out of control until it is full or
  the boundary passes.
* A sample at or before the previous one is ignored.

Battery energy is capacity x state of charge (`battery_energy_wh`).

`Books` holds one day's books keyed by socket name; `books_to_dict` / `restore` let the
scheduler publish them retained and read them back after a restart, never across the
boundary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, time
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.daytime import day_start as local_day_start

#: An 'on' socket drawing less than this ratio of its max power is full.
FULL_POWER_RATIO = 0.1
#: A socket must have been on this long before a low power reads as full, s.
DEFAULT_SETTLE_S = 10.0
#: Longest interval between two samples that is interpolated (trapezoid), s.
DEFAULT_MAX_GAP_S = 15 * 60.0

_SECONDS_PER_HOUR = 3600.0

NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SocketBook(_Model):
    """What one socket has stored today, and its last sample."""

    name: Name
    day_start: AwareDatetime | None = None  # the day this book counts for
    energy_wh: NonNegativeFloat = 0.0
    full: bool = False
    filled: bool = False  # read full at some time this day: the daily need met
    manual: bool = False  # switched on by hand: out of the scheduler's control
    last_sample_at: AwareDatetime | None = None
    last_power_w: NonNegativeFloat = 0.0
    on_since: AwareDatetime | None = None  # first sample of the current run of 'on' samples

    @model_validator(mode="after")
    def _on_since_sampled(self) -> Self:
        check_on_since(self.on_since, self.last_sample_at)
        return self


def check_on_since(on_since: datetime | None, last_sample_at: datetime | None) -> None:
    """`on_since` must be a sample: at or before `last_sample_at` (also `shared.messages`)."""
    if on_since is not None and (last_sample_at is None or on_since > last_sample_at):
        raise ValueError("on_since must be a sample: at or before last_sample_at")


class Books(_Model):
    """One day's socket books, keyed by socket name."""

    day_start: AwareDatetime
    sockets: dict[str, SocketBook] = {}

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for key, book in self.sockets.items():
            if key != book.name:
                raise ValueError(f"book {book.name!r} filed under {key!r}")
            if book.day_start is not None and book.day_start > self.day_start:
                raise ValueError(f"book {key!r} is for a later day than its books")
        return self

    def book(self, name: str) -> SocketBook:
        """The book of socket `name` for this day (empty if there is none yet)."""
        book = self.sockets.get(name)
        if book is None:
            return SocketBook(name=name, day_start=self.day_start)
        return start_day(book, self.day_start)

    def with_book(self, book: SocketBook) -> Books:
        """These books with `book` filed under its name."""
        return self.model_copy(update={"sockets": {**self.sockets, book.name: book}})


def start_day(book: SocketBook, day_start: datetime) -> SocketBook:
    """The book for the day from `day_start`: emptied if it is for an earlier day.

    The last sample is kept, so the next sample counts the part after the boundary.
    """
    if book.day_start is not None and book.day_start >= day_start:
        return book
    update = {
        "day_start": day_start,
        "energy_wh": 0.0,
        "full": False,
        "filled": False,
        "manual": False,
    }
    return book.model_copy(update=update)


def update_socket(
    book: SocketBook,
    *,
    capacity_wh: float,
    max_power_w: float,
    sample_at: datetime,
    power_w: float,
    power_on: bool,
    day_start: datetime,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    settle_s: float = DEFAULT_SETTLE_S,
) -> SocketBook:
    """`book` after one sample: `power_w` measured at `sample_at`, switch state `power_on`.

    `day_start` is the start of the local day holding `sample_at` (`shared.daytime`).
    """
    _check_sample(capacity_wh, max_power_w, sample_at, power_w, max_gap_s)
    if not (math.isfinite(settle_s) and settle_s >= 0):
        raise ValueError(f"settle_s must be a finite number >= 0, got {settle_s}")
    if book.last_sample_at is not None and sample_at <= book.last_sample_at:
        return book
    if book.day_start is not None and day_start < book.day_start:
        return book
    book = start_day(book, day_start)
    power = max(0.0, power_w)
    added = _energy_wh(book, sample_at, power, day_start, max_gap_s)
    energy = min(max(book.energy_wh + added, 0.0), capacity_wh)
    gap = (
        book.last_sample_at is None or (sample_at - book.last_sample_at).total_seconds() > max_gap_s
    )
    on_since = (sample_at if gap else book.on_since or sample_at) if power_on else None
    settled = on_since is not None and (sample_at - on_since).total_seconds() >= settle_s
    low = power < FULL_POWER_RATIO * max_power_w
    # low power says 'full' once the relay has settled; drawing power always says 'not full'
    full = low if power_on and (settled or not low) else book.full
    update: dict[str, Any] = {
        "energy_wh": capacity_wh if full else energy,
        "full": full,
        "filled": book.filled or full,
        "manual": book.manual and not full,
        "last_sample_at": sample_at,
        "last_power_w": power,
        "on_since": on_since,
    }
    return book.model_copy(update=update)


def mark_manual(book: SocketBook, day_start: datetime) -> SocketBook:
    """`book` of a socket a person just switched on by hand (`day_start`: of that moment).

    It stays out of control until it is full or the next boundary passes.
    """
    return start_day(book, day_start).model_copy(update={"manual": True})


def battery_energy_wh(capacity_wh: float, soc_pct: float) -> float:
    """Energy in a battery, Wh: capacity x state of charge (clipped to 0-100 %)."""
    if not (math.isfinite(capacity_wh) and capacity_wh >= 0):
        raise ValueError(f"capacity must be a finite number >= 0, got {capacity_wh}")
    if not math.isfinite(soc_pct):
        raise ValueError(f"state of charge must be finite, got {soc_pct}")
    return capacity_wh * min(max(soc_pct, 0.0), 100.0) / 100.0


def empty_books(day_start: datetime) -> Books:
    """No books yet for the day from `day_start`."""
    return Books(day_start=day_start)


def record_sample(
    books: Books,
    name: str,
    *,
    capacity_wh: float,
    max_power_w: float,
    sample_at: datetime,
    power_w: float,
    power_on: bool,
    day_start: datetime,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    settle_s: float = DEFAULT_SETTLE_S,
) -> Books:
    """`books` after one sample of socket `name` (see `update_socket`)."""
    books = roll_books(books, day_start)
    book = books.book(name)
    updated = update_socket(
        book,
        capacity_wh=capacity_wh,
        max_power_w=max_power_w,
        sample_at=sample_at,
        power_w=power_w,
        power_on=power_on,
        day_start=day_start,
        max_gap_s=max_gap_s,
        settle_s=settle_s,
    )
    return books.with_book(updated)


def record_manual(books: Books, name: str, day_start: datetime) -> Books:
    """`books` after a person switched socket `name` on by hand (see `mark_manual`)."""
    books = roll_books(books, day_start)
    return books.with_book(mark_manual(books.book(name), day_start))


def roll_books(books: Books, day_start: datetime) -> Books:
    """`books` moved on to the day from `day_start` if that is later: every book empty."""
    if day_start <= books.day_start:
        return books
    sockets = {name: start_day(book, day_start) for name, book in books.sockets.items()}
    return Books(day_start=day_start, sockets=sockets)


def books_to_dict(books: Books) -> dict[str, Any]:
    """`books` as plain JSON-able data (datetimes as ISO 8601 strings)."""
    return books.model_dump(mode="json")


def books_from_dict(data: Mapping[str, Any]) -> Books:
    """Books from `books_to_dict` data; raises pydantic's ValidationError if invalid."""
    return Books.model_validate(data)


def restore(data: Mapping[str, Any] | None, now: datetime, tz: ZoneInfo, boundary: time) -> Books:
    """Books read back (e.g. a retained message) for the day holding `now`.

    Books for another day than today's give empty books: never across the boundary.
    `data` None (nothing retained) gives empty books; invalid data raises ValidationError.
    """
    today = local_day_start(now, tz, boundary)
    if data is None:
        return empty_books(today)
    books = books_from_dict(data)
    if books.day_start != today:
        return empty_books(today)
    return books


def _energy_wh(
    book: SocketBook, sample_at: datetime, power_w: float, day_start: datetime, max_gap_s: float
) -> float:
    """Energy since the previous sample, but only from `day_start` on, Wh."""
    if book.last_sample_at is None:
        return 0.0
    previous_at, previous_w = book.last_sample_at, book.last_power_w
    span_s = (sample_at - previous_at).total_seconds()
    begin = max(previous_at, day_start)
    counted_s = (sample_at - begin).total_seconds()
    if span_s > max_gap_s:
        return min(previous_w, power_w) * counted_s / _SECONDS_PER_HOUR
    begin_w = previous_w + (power_w - previous_w) * (begin - previous_at).total_seconds() / span_s
    return (begin_w + power_w) / 2.0 * counted_s / _SECONDS_PER_HOUR


def _check_sample(
    capacity_wh: float, max_power_w: float, sample_at: datetime, power_w: float, max_gap_s: float
) -> None:
    if not (math.isfinite(capacity_wh) and capacity_wh > 0):
        raise ValueError(f"capacity must be a finite number > 0, got {capacity_wh}")
    if not (math.isfinite(max_power_w) and max_power_w > 0):
        raise ValueError(f"max power must be a finite number > 0, got {max_power_w}")
    if not math.isfinite(power_w):
        raise ValueError(f"measured power must be finite, got {power_w}")
    if not max_gap_s > 0:
        raise ValueError(f"max_gap_s must be > 0, got {max_gap_s}")
    if sample_at.tzinfo is None or sample_at.utcoffset() is None:
        raise ValueError(f"naive sample time {sample_at.isoformat()}: must be aware")

"""When periodic jobs fire (core/schedule.py): pure, the clock injected, no sleeping."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freelance_rz.core.schedule import Schedule, Schedules, check_cron

BERLIN = ZoneInfo("Europe/Berlin")


def at(*args: int, tz=BERLIN) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def fire(schedules: Schedules, now: float, live=lambda job_id: False) -> list[float]:
    return [slot for _, slot in schedules.due(now, live)]


def test_every_s_fires_once_per_slot_from_its_creation():
    schedules = Schedules()
    schedules.add(Schedule(1, "s", b"", every_s=60.0, created=1000.0))
    assert schedules.next_fire() == 1060.0
    assert fire(schedules, 1059.9) == []
    assert fire(schedules, 1060.0) == [1060.0]
    assert fire(schedules, 1060.5) == []  # never twice for one slot
    assert fire(schedules, 1120.2) == [1120.0]


@pytest.mark.parametrize("every_s", [0.1, 0.3, 0.7, 1.1, 2.9])
def test_a_period_that_is_no_binary_fraction_fires_once_per_slot(every_s):
    """0.3 s is no sum of powers of two: a slot found by division rounded down to the one just
    fired, which then fired again on every turn (12,709 runs in 3 s; a fresh user's find)."""
    created = 1_765_000_000.123
    schedules = Schedules()
    schedules.add(Schedule(1, "s", b"", every_s=every_s, created=created))
    slots, now = [], created
    while now < created + 40 * every_s:
        now += 0.013
        slots += fire(schedules, now)
    assert len(slots) == round((now - created) // every_s)  # one run a slot passed
    assert all(later > earlier for earlier, later in zip(slots, slots[1:], strict=False))
    assert slots[0] == pytest.approx(created + every_s)


@given(
    every_s=st.floats(0.1, 1e6), created=st.floats(1e9, 2e9),
    offset=st.floats(0, 1e7), steps=st.integers(0, 1000),
)
def test_after_is_strictly_later_and_latest_is_the_last_slot_passed(every_s, created, offset, steps):
    schedule = Schedule(1, "s", b"", every_s=every_s, created=created)
    now = created + offset
    latest = schedule.latest(now)
    assert latest <= now < schedule.after(latest)
    assert schedule.after(now) > now
    slot = created + steps * every_s  # exactly a slot, as due() stores it in ``last``
    assert schedule.after(slot) > slot and schedule.after(schedule.after(slot)) > schedule.after(slot)


def test_missed_slots_fire_once_for_the_latest():
    schedules = Schedules()
    schedules.add(Schedule(1, "s", b"", every_s=60.0, created=1000.0, last=1060.0))
    assert fire(schedules, 1000 + 60 * 10 + 5) == [1600.0]  # 9 slots missed: one run
    assert schedules.next_fire() == 1660.0


def test_cron_in_a_time_zone_across_a_daylight_saving_change():
    check_cron("*/30 * * * *", "Europe/Berlin")
    schedules = Schedules()
    # 2026-03-29: clocks in Berlin go from 02:00 to 03:00
    schedules.add(Schedule(1, "s", b"", cron="30 2,3 * * *", tz="Europe/Berlin",
                           created=at(2026, 3, 28, 12, 0)))
    # 02:30 does not exist on the 29th: cronsim fires it when the hour skipped ends
    assert schedules.next_fire() == at(2026, 3, 29, 3, 0)
    first = fire(schedules, at(2026, 3, 29, 12, 0))  # down until noon: 03:00, 03:30 missed
    assert first == [at(2026, 3, 29, 3, 30)]  # one run, for the latest
    assert schedules.next_fire() == at(2026, 3, 30, 2, 30)


def test_overlap_false_skips_a_slot_while_the_last_run_is_live():
    schedules = Schedules()
    schedule = Schedule(1, "s", b"", every_s=10.0, created=0.0, overlap=False, job_id=7)
    schedules.add(schedule)
    assert fire(schedules, 10.0, live=lambda job_id: job_id == 7) == []
    assert schedule.skipped == 1 and schedules.next_fire() == 20.0  # not fired late
    assert fire(schedules, 20.0, live=lambda job_id: False) == [20.0]


def test_paused_fires_nothing_and_resumes_from_the_next_slot():
    schedules = Schedules()
    schedules.add(Schedule(1, "s", b"", every_s=10.0, created=0.0))
    schedules.pause(1, True, 5.0)
    assert schedules.next_fire() is None and fire(schedules, 100.0) == []
    schedules.pause(1, False, 101.0)
    assert schedules.next_fire() == 110.0 and fire(schedules, 110.0) == [110.0]
    assert schedules.remove(1) is not None and schedules.next_fire() is None


@pytest.mark.parametrize("cron, tz, problem", [
    ("* * *", None, "not a cron expression"), ("61 * * * *", None, "not a cron expression"),
    ("* * * * *", "Mars/Olympus", "IANA time zone"),
])
def test_bad_cron_or_zone_is_refused_clearly(cron, tz, problem):
    with pytest.raises(ValueError, match=problem):
        check_cron(cron, tz)

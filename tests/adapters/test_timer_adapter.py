"""Timer source: interval and cron schedules, failed emits retried with the same id."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from waiting import wait_for

from esbhub.adapters.timer import Cron, TimerSource, TimerSourceConfig
from esbhub.errors import TransientError

ENV = {"type": "bill.v1", "source": "scheduler"}


def test_cron_next_after_handles_steps_ranges_and_weekdays():
    c = Cron("*/15 2-3 * * 1-5")  # every 15 min 02:00–03:59 on weekdays
    t = c.next_after(datetime(2026, 11, 27, 3, 50, tzinfo=UTC))  # Friday 03:50
    assert t == datetime(2026, 11, 30, 2, 0, tzinfo=UTC)  # Monday 02:00
    assert Cron("0 0 1 * *").next_after(datetime(2026, 12, 15, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert Cron("0 12 * * 7").next_after(datetime(2026, 11, 26, tzinfo=UTC)).isoweekday() == 7  # 7 = Sunday
    # day-of-month and day-of-week both restricted: either matches (cron semantics)
    assert Cron("0 0 13 * 5").next_after(datetime(2026, 11, 26, tzinfo=UTC)) == datetime(2026, 11, 27, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["* * *", "61 * * * *", "*/0 * * * *", "0 0 31 2 *"])
def test_invalid_schedules_are_refused(bad):
    with pytest.raises(ValueError):
        TimerSourceConfig(envelope=ENV, cron=bad)


def test_exactly_one_schedule_and_a_known_timezone_required():
    with pytest.raises(ValueError):
        TimerSourceConfig(envelope=ENV)
    with pytest.raises(ValueError):
        TimerSourceConfig(envelope=ENV, interval=1, cron="* * * * *")
    with pytest.raises(ValueError):
        TimerSourceConfig(envelope=ENV, cron="* * * * *", timezone="Mars/Olympus")


def test_cron_read_in_the_configured_timezone():
    src = TimerSource(TimerSourceConfig(envelope=ENV, cron="0 2 * * *", timezone="Asia/Shanghai"), name="t")
    nxt = src.next_tick(datetime(2026, 11, 26, 0, 0, tzinfo=UTC))  # 08:00 in Shanghai
    assert nxt.astimezone(UTC) == datetime(2026, 11, 26, 18, 0, tzinfo=UTC)  # 02:00 next day CST


def test_interval_source_emits_ticks_and_retries_a_failed_tick_with_the_same_id():
    got, attempts = [], []

    def emit(envs):
        attempts.append(envs[0].id)
        if len(attempts) == 1:
            raise TransientError("bus down")
        got.extend(envs)

    src = TimerSource(TimerSourceConfig(envelope=ENV, interval=0.2, payload={"job": "tiering"}, run_at_start=True),
                      name="tiering")
    src.start(emit)
    try:
        wait_for(lambda: len(got) >= 3, 10, what="3 ticks")
    finally:
        src.stop()
    assert not src.running
    assert attempts[0] == attempts[1]  # the failed tick was emitted again, same id
    assert len({e.id for e in got}) == len(got)
    assert got[0].payload == {"job": "tiering"} and got[0].type == "bill.v1"
    h = src.health()
    assert h.last_error and "bus down" in h.last_error and h.detail["last_tick"]

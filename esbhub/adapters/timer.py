"""Timer source for scheduled jobs: emits a configured envelope every ``interval`` seconds or on
a 5-field cron schedule (``min hour day-of-month month day-of-week``, in a time zone).

Each tick's envelope id is derived from (source name, tick time), so the same tick emitted by
two workers, or re-emitted after a failed emit, is one message to the bus's dedup. A tick
whose emit fails is retried with backoff until it succeeds or the source stops — never skipped.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator, model_validator

from esbhub.adapters.base import (
    AdapterConfig,
    AdapterSpec,
    Emit,
    EnvelopeTemplate,
    ThreadedSource,
    TimeZoneName,
    backoff_delays,
    stable_id,
)

_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_NAMES = ["minute", "hour", "day of month", "month", "day of week"]


class Cron:
    """A parsed 5-field cron expression (``*``, ``a-b``, ``*/n``, ``a-b/n``, lists; dow 0/7 = Sunday)."""

    def __init__(self, expr: str) -> None:
        parts = expr.split()
        if len(parts) != 5:
            raise ValueError(f"cron needs 5 fields (min hour dom month dow), got {len(parts)}")
        self.expr = expr
        self.sets: list[set[int]] = []
        self.restricted: list[bool] = []
        for i, (part, (lo, hi)) in enumerate(zip(parts, _RANGES, strict=True)):
            vals: set[int] = set()
            for item in part.split(","):
                rng, _, step_s = item.partition("/")
                step = int(step_s) if step_s else 1
                if step < 1:
                    raise ValueError(f"{_NAMES[i]}: step must be ≥ 1")
                if rng == "*":
                    a, b = lo, hi
                elif "-" in rng:
                    a_s, b_s = rng.split("-", 1)
                    a, b = int(a_s), int(b_s)
                else:
                    a = int(rng)
                    b = hi if step_s else a
                if not (lo <= a <= hi and lo <= b <= hi and a <= b):
                    raise ValueError(f"{_NAMES[i]}: '{item}' is outside {lo}-{hi}")
                vals.update(v % 7 if i == 4 else v for v in range(a, b + 1, step))
            self.sets.append(vals)
            self.restricted.append(part != "*")

    def _day_ok(self, d: datetime) -> bool:
        dom_ok = d.day in self.sets[2]
        dow_ok = (d.isoweekday() % 7) in self.sets[4]
        if self.restricted[2] and self.restricted[4]:
            return dom_ok or dow_ok
        return dom_ok and dow_ok

    def next_after(self, after: datetime) -> datetime:
        """The first matching minute strictly after ``after`` (aware datetime, its zone kept)."""
        t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t + timedelta(days=366 * 5)
        while t < limit:
            if t.month not in self.sets[3]:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
                continue
            if not self._day_ok(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if t.hour not in self.sets[1]:
                t = t.replace(minute=0) + timedelta(hours=1)
                continue
            if t.minute not in self.sets[0]:
                t += timedelta(minutes=1)
                continue
            return t
        raise ValueError(f"cron '{self.expr}' never fires")


class TimerSourceConfig(AdapterConfig):
    """Emits ``payload`` as an envelope on a schedule."""

    envelope: EnvelopeTemplate = Field(description="Type and source system of the envelopes emitted.")
    payload: Any = Field(default_factory=dict, description="The payload of every envelope (JSON).")
    interval: float | None = Field(default=None, gt=0, le=86400 * 366, description="Seconds between ticks.")
    cron: str | None = Field(default=None, description="5-field cron schedule, e.g. '0 2 * * *' (02:00 daily).")
    timezone: TimeZoneName = Field(default="UTC", description="Time zone the cron schedule is read in, e.g. 'Asia/Shanghai'.")
    run_at_start: bool = Field(default=False, description="Also emit once as soon as the source starts.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            Cron(v).next_after(datetime(2000, 1, 1, tzinfo=UTC))  # parses, and fires at all
        return v

    @model_validator(mode="after")
    def _one_schedule(self) -> TimerSourceConfig:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of 'interval' or 'cron'")
        return self


class TimerSource(ThreadedSource[TimerSourceConfig]):
    adapter_name = "timer"

    def __init__(self, config: TimerSourceConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._cron = Cron(config.cron) if config.cron else None
        self.tz = ZoneInfo(config.timezone)

    def next_tick(self, after: datetime) -> datetime:
        if self._cron is not None:
            return self._cron.next_after(after.astimezone(self.tz))
        assert self.config.interval is not None
        return after + timedelta(seconds=self.config.interval)

    def envelope_for(self, tick: datetime) -> Any:
        at = tick.astimezone(UTC)
        return self.config.envelope.make(
            self.config.payload,
            id=stable_id(f"timer:{self.name}:{at.isoformat()}", at),
            headers={"timer_tick": at.isoformat()},
        )

    def fire(self, emit: Emit, tick: datetime) -> bool:
        """Emit the tick's envelope, retrying with backoff until done or stopped."""
        env = self.envelope_for(tick)
        delays = backoff_delays(0.2, 10.0)
        while not self._stop.is_set():
            try:
                emit([env])
            except Exception as exc:  # noqa: BLE001 - recorded, retried with the same id
                self.tracker.record_error(exc)
                self.log.warning("timer_emit_failed", error=type(exc).__name__, tick=env.headers["timer_tick"])
                self._stop.wait(next(delays))
                continue
            self.tracker.record_success(None)
            self.tracker.detail["last_tick"] = env.headers["timer_tick"]
            return True
        return False

    def _loop(self, emit: Emit) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        if self.config.run_at_start:
            self.fire(emit, now)
        tick = self.next_tick(now)
        while not self._stop.is_set():
            self.tracker.detail["next_tick"] = tick.astimezone(UTC).isoformat()
            wait = (tick - datetime.now(UTC)).total_seconds()
            if wait > 0 and self._stop.wait(wait):
                break
            if not self.fire(emit, tick):
                break
            tick = self.next_tick(tick)
            # after a long stall (suspend), skip ticks in the past rather than bursting them
            now = datetime.now(UTC)
            while tick < now - timedelta(seconds=max(1.0, (self.config.interval or 60))):
                tick = self.next_tick(tick)


SPEC = AdapterSpec(
    name="timer",
    config_model=TimerSourceConfig,
    source_cls=TimerSource,
    description="Timer source for scheduled jobs: a configured envelope every N seconds or on a cron schedule.",
)

"""Effective time windows: when a rule may fire.

The source document's example rule is "effective 00:00 to 23:59"; cloud monitors add days of
the week and a time zone. A window is `hh:mm-hh:mm` with both minutes included, so
00:00-23:59 is the whole day; a window whose end is before its start runs past midnight
(22:00-06:00), and its after-midnight part belongs to the day it started on, which is what
an operator means by "Friday night".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS = frozenset(range(7))

# "-", en dash or "~" between the two times: the slides write 00:00–23:59.
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*[-\u2013~]\s*(\d{1,2}):(\d{2})\s*$")


def parse_window(text: str) -> tuple[int, int]:
    """'09:00-18:00' -> (540, 1080) minutes of the day, both included."""
    m = _WINDOW.match(text)
    if not m:
        raise ValueError(f"not a time window: {text!r} (use hh:mm-hh:mm, e.g. 00:00-23:59)")
    h1, m1, h2, m2 = map(int, m.groups())
    for h, mi in ((h1, m1), (h2, m2)):
        if h > 23 or mi > 59:
            raise ValueError(f"not a time of day: {h:02d}:{mi:02d} in {text!r}")
    return h1 * 60 + m1, h2 * 60 + m2


def parse_days(items: list[str]) -> frozenset[int]:
    """['mon-fri', 'sun'] -> {0, 1, 2, 3, 4, 6} (Monday is 0, as in datetime.weekday())."""
    days: set[int] = set()
    for item in items:
        parts = [p.strip().lower()[:3] for p in str(item).split("-")]
        if len(parts) > 2 or any(p not in DAYS for p in parts):
            raise ValueError(f"not a day or day range: {item!r} (use mon..sun, e.g. 'mon-fri')")
        first, last = DAYS.index(parts[0]), DAYS.index(parts[-1])
        day = first
        days.add(day)
        while day != last:  # a range may wrap: 'sat-mon'
            day = (day + 1) % 7
            days.add(day)
    return frozenset(days)


def parse_zone(name: str) -> tzinfo | None:
    """An IANA zone name; '' or 'local' is the host's zone (None: datetime's local time)."""
    if name in ("", "local"):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as UTC or Asia/Shanghai)") from None


@dataclass(frozen=True)
class Schedule:
    windows: tuple[tuple[int, int], ...] = ((0, 23 * 60 + 59),)
    days: frozenset[int] = ALL_DAYS
    zone: tzinfo | None = None
    zone_name: str = "local"

    @property
    def always(self) -> bool:
        return self.days == ALL_DAYS and any(s == 0 and e == 23 * 60 + 59 for s, e in self.windows)

    def active(self, now: float) -> bool:
        """Whether unix time `now` falls inside one of the windows on an allowed day."""
        if self.always:
            return True
        local = datetime.fromtimestamp(now, self.zone) if self.zone else datetime.fromtimestamp(now).astimezone()
        minute = local.hour * 60 + local.minute
        today = local.weekday()
        yesterday = (local - timedelta(days=1)).weekday()
        for start, end in self.windows:
            if start <= end:
                if start <= minute <= end and today in self.days:
                    return True
            else:  # past midnight: the evening part is today's, the morning part yesterday's
                if minute >= start and today in self.days:
                    return True
                if minute <= end and yesterday in self.days:
                    return True
        return False

    def describe(self) -> str:
        days = "every day" if self.days == ALL_DAYS else ",".join(DAYS[d] for d in sorted(self.days))
        spans = ",".join(f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}" for s, e in self.windows)
        return f"{spans} {days} ({self.zone_name})"

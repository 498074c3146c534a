"""A faked calendar for proving the suite does not depend on the date (there is no faketime here).

Python imports ``sitecustomize`` at start-up from the path, so with this folder on ``PYTHONPATH`` and
``SANDRUN_TEST_TODAY=YYYY-MM-DD`` set, ``datetime.datetime.now()`` in this process and in every
subprocess it starts (the CLI tests) reads that day, the clock time of day running on as usual.
"""

from __future__ import annotations

import datetime
import os

_FAKE_TODAY = os.environ.get("SANDRUN_TEST_TODAY")

if _FAKE_TODAY:
    _real = datetime.datetime
    _shift = datetime.date.fromisoformat(_FAKE_TODAY) - _real.now(datetime.timezone.utc).date()

    class _ShiftedDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> _ShiftedDatetime:
            moment = _real.now(tz) + _shift
            return cls.combine(moment.date(), moment.timetz())

        @classmethod
        def today(cls) -> _ShiftedDatetime:
            return cls.now()

    datetime.datetime = _ShiftedDatetime  # type: ignore[misc]

"""Warnings said once: what a stage logged (for its stamp and the report) and a terminal filter.

A stage that builds a workspace five times says "sample taupair dropped from ita_on_sr" five
times. :func:`collect_warnings` gathers what the ``knunu`` loggers emit at WARNING or above
during a block, each distinct message once with its count (the pipeline keeps them in the
stage's stamp, the report lists them); :class:`ShowOnce` lets the terminal show each distinct
warning once.

>>> import logging
>>> with collect_warnings() as warned:
...     for _ in range(3):
...         logging.getLogger("knunu.example").warning("bin %d empty", 4)
>>> warned
[Warned(logger='knunu.example', level='WARNING', message='bin 4 empty', count=3)]
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple


class Warned(NamedTuple):
    """One distinct warning and how often it was logged."""

    logger: str
    level: str
    message: str
    count: int


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[tuple[str, str, str]] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[(record.name, record.levelname, record.getMessage())] += 1
        # without any configured handler Python prints warnings itself (``lastResort``): this
        # handler must not silence that for a caller that configured no logging
        last = logging.lastResort
        if not logging.getLogger().handlers and last is not None and record.levelno >= last.level:
            last.handle(record)


@contextmanager
def collect_warnings(name: str = "knunu") -> Iterator[list[Warned]]:
    """Collect what logger ``name`` and its children log at WARNING or above in the block.

    Yields a list that is filled, in the order first seen, when the block ends (also when it
    raises).
    """
    handler = _Collector()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    warned: list[Warned] = []
    try:
        yield warned
    finally:
        logger.removeHandler(handler)
        warned.extend(Warned(*key, count) for key, count in handler.counts.items())


class ShowOnce(logging.Filter):
    """Pass each distinct WARNING once (by logger and message); count the repeats.

    >>> f = ShowOnce()
    >>> rec = logging.makeLogRecord({"name": "knunu.x", "levelno": logging.WARNING, "msg": "m"})
    >>> [f.filter(rec) for _ in range(3)], f.repeats
    ([True, False, False], 2)
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[tuple[str, str]] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        """True the first time a warning is seen; other levels always pass."""
        if record.levelno != logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        self.seen[key] += 1
        return self.seen[key] == 1

    @property
    def repeats(self) -> int:
        """How many warnings were held back as repeats."""
        return sum(self.seen.values()) - len(self.seen)

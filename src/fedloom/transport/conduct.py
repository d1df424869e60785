"""What a hostile client can do to the server's log, and how often it may break the protocol.

Text a client chose (a failure reason, a rejected name, an error from its stream) reaches a log
line only through :func:`clean`: control characters (newlines included) escaped, length bounded,
so it cannot forge a line or flood one. :class:`Throttle` lets at most ``burst`` lines per key
(a client id, a source address) through per window and counts the rest, which the next line that
passes reports. :class:`Conduct` counts each client's protocol violations and says when one has
broken the protocol too often in a window to be served on.

Example:
    >>> clean("ok\\n2024-01-01 INFO forged")
    'ok\\\\n2024-01-01 INFO forged'
    >>> throttle = Throttle(burst=2, window=60.0)
    >>> [throttle.allow("10.0.0.1") for _ in range(3)]
    [(True, 0), (True, 0), (False, 0)]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

MAX_LOGGED = 300  # characters of client text in one log line
MAX_KEYS = 4096  # keys a Throttle remembers (oldest forgotten first): bounded memory


def clean(text: object, limit: int = MAX_LOGGED) -> str:
    """``text`` safe for one log line: every non-printable character escaped as Python writes
    it (``\\n``, ``\\x1b``, ``\\u2028``) and at most ``limit`` characters kept."""
    raw = str(text)
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in raw[:limit])
    if len(out) > limit or len(raw) > limit:
        return f"{out[:limit]}... ({len(raw)} characters)"
    return out


@dataclass(slots=True)
class _Window:
    start: float
    count: int = 0
    suppressed: int = 0


class Throttle:
    """At most ``burst`` events per key per ``window`` seconds pass; the others are counted.

    Args:
        burst: events per key and window that pass.
        window: seconds; a key's window starts with its first event.
        clock: monotonic seconds (a test may pass its own).
    """

    def __init__(self, *, burst: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.window, self.clock = burst, window, clock
        self._windows: dict[Hashable, _Window] = {}

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """Whether this event passes, and how many of the key's events were held back before
        it (reported once, by the first that passes)."""
        now = self.clock()
        win = self._windows.get(key)
        if win is None or now - win.start > self.window:
            held = 0 if win is None else win.suppressed
            self._windows.pop(key, None)
            while len(self._windows) >= MAX_KEYS:
                del self._windows[next(iter(self._windows))]
            win = self._windows[key] = _Window(start=now, suppressed=held)
        win.count += 1
        if win.count > self.burst:
            win.suppressed += 1
            return False, 0
        held, win.suppressed = win.suppressed, 0
        return True, held


def held_back(count: int) -> str:
    """The note a log line carries about the lines a throttle held back before it."""
    return f" ({count} similar lines held back)" if count else ""


class Conduct:
    """Counts each client's protocol violations in fixed windows.

    Args:
        max_violations: violations a client may commit in one window; the next one ends its
            stream (0: no limit).
        window: seconds.
    """

    def __init__(self, *, max_violations: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_violations, self.window, self.clock = max_violations, window, clock
        self._windows: dict[int, _Window] = {}

    def violation(self, client_id: int) -> bool:
        """Count one; True when the client is now over the limit."""
        now = self.clock()
        win = self._windows.get(client_id)
        if win is None or now - win.start > self.window:
            self._windows.pop(client_id, None)
            while len(self._windows) >= MAX_KEYS:
                del self._windows[next(iter(self._windows))]
            win = self._windows[client_id] = _Window(start=now)
        win.count += 1
        return 0 < self.max_violations < win.count

    def over(self, client_id: int) -> bool:
        """Whether the client broke the limit in its current window (it is refused until the
        window ends)."""
        win = self._windows.get(client_id)
        return (win is not None and self.clock() - win.start <= self.window
                and 0 < self.max_violations < win.count)

"""Rate limit of failed logins (HTTP Basic for the API and the UI), per client address.

A request that carries credentials which match no login is a failure; a request with no
`Authorization` header at all (a browser's first try, before it asks the user) is not. After
`max_failures` failures from one address within `window_s` seconds, every request from that
address that needs a login gets 429 with `Retry-After` until the oldest failure leaves the window,
whatever credentials it carries: answering a right password differently from a wrong one would let
the guessing go on. A successful login never counts, and requests with the right credentials never
reach the limit however many there are (nor do they wipe earlier failures: one known login
must not buy unlimited guesses at another). The clock is injectable (tests step it, never sleep).

Behind a reverse proxy every client has the proxy's address: one guesser then locks out the
others for up to a minute; that is the price of not trusting `X-Forwarded-For` from anyone.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

DEFAULT_MAX_FAILURES = 5
DEFAULT_WINDOW_S = 60.0
MAX_TRACKED_ADDRESSES = 10_000


class LoginLimiter:
    """Failed-login counts per client address in a sliding window (thread-safe)."""

    def __init__(
        self,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again (at least 1), or None when it is not blocked."""
        now = self.clock()
        with self._lock:
            times = self._recent(address, now)
            if times is None or len(times) < self.max_failures:
                return None
            # the failure that must leave the window before one more try is allowed
            oldest = times[len(times) - self.max_failures]
            return max(1, math.ceil(oldest + self.window_s - now))

    def failed(self, address: str) -> None:
        now = self.clock()
        with self._lock:
            times = self._recent(address, now)
            if times is None:
                if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                    self._forget_stale(now)
                times = self._failures.setdefault(address, deque())
            times.append(now)
            while len(times) > self.max_failures:
                times.popleft()

    def _forget_stale(self, now: float) -> None:
        for address in list(self._failures):
            self._recent(address, now)
        if len(self._failures) >= MAX_TRACKED_ADDRESSES:  # still full: drop the oldest entries
            by_age = sorted(self._failures, key=lambda a: self._failures[a][-1])
            for address in by_age[: len(by_age) // 2]:
                del self._failures[address]

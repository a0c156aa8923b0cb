"""The one retry policy of every registry request: what is tried again, and when.

Tried again: a request that got no answer (the connection was refused, reset or timed
out; not an unknown host, a refused certificate or a server without TLS), and answers
429 and 5xx. Never other 4xx: asking again gets the same answer. Waits grow
exponentially with jitter (so parallel transfers that failed together do not come back
together), or last what the server's Retry-After asks (seconds, or an HTTP date), never
past a bound; a request gets at most ATTEMPTS tries within DEADLINE seconds of its first.

A resumed transfer (a blob download or upload that broke) shares one Tries between its
requests: resumptions count against the same bound.
"""
import random
import time
from email.utils import parsedate_to_datetime

ATTEMPTS = 4
DEADLINE = 30.0  # seconds from the first try after which no new one starts
FIRST_WAIT = 0.25  # seconds, then doubled each time (before the jitter)
MAX_WAIT = 10.0  # the longest single wait, Retry-After included
RETRY_STATUSES = frozenset((429, 500, 502, 503, 504))


def retryable_status(status):
    return status in RETRY_STATUSES


class Tries:
    """The tries of one request (or of one resumed transfer)."""

    def __init__(self, attempts=ATTEMPTS, deadline=DEADLINE, clock=time.monotonic, sleep=time.sleep,
                 jitter=random.random):
        self.attempts, self._clock, self._sleep, self._jitter = attempts, clock, sleep, jitter
        self._deadline = clock() + deadline
        self.made = 1  # the first try is under way

    def again(self, retry_after=None):
        """Wait before the next try and return True; False when the tries or the time are
        used up (the caller then reports the last failure). `retry_after` is the value of
        the answer's Retry-After header, if any."""
        if self.made >= self.attempts:
            return False
        wait = _retry_after_seconds(retry_after, self._clock, time.time)
        if wait is None:
            wait = FIRST_WAIT * 2 ** (self.made - 1) * (0.5 + self._jitter())
        wait = min(wait, MAX_WAIT)
        if self._clock() + wait > self._deadline:
            return False
        self._sleep(wait)
        self.made += 1
        return True


def _retry_after_seconds(value, clock, wall_clock):
    """Seconds a Retry-After value asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value[:6])  # more digits than that say "much later" as well
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(when.timestamp() - wall_clock(), 0.0)

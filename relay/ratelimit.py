"""A token bucket for `--rate` (records per second): a pure object fed the clock's time."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RateLimit:
    """At most `rate` units per second on average, bursts of at most `burst` units (≥ 1).

    `wait(now, n)` answers how long to wait before `n` units may go, and, when that is 0, takes them.
    The caller sleeps and asks again: the bucket never sleeps itself."""

    rate: float
    burst: float = 1.0
    _tokens: float = field(init=False, default=0.0)
    _at: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be > 0")
        self.burst = max(self.burst, 1.0)
        self._tokens = self.burst

    def wait(self, now: float, n: int = 1) -> float:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        need = min(float(n), self.burst)  # a chunk larger than the burst goes once the bucket is full
        if self._tokens >= need - 1e-9:  # float rounding must not leave a wait too small to pass
            self._tokens -= n
            return 0.0
        return (need - self._tokens) / self.rate


def chunk_size(rate: float | None, default: int) -> int:
    """Records per produce call under a rate: a quarter of a second's worth. Each call waits for its
    acknowledgements (~0.1-0.2 s on a busy broker), so smaller chunks could not reach the rate;
    larger ones would make the bursts coarser."""
    if rate is None:
        return default
    return max(1, min(default, int(rate / 4)))

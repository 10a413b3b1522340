"""How far relay's clock runs ahead of the cluster's (DESIGN §3, clock skew).

The confidence window assumes relay's "now" is the cluster's. If relay's clock runs ahead, a window
ending at `now - confidence` reaches instants the cluster has not lived yet, and rows written there
later (with the cluster's timestamps) would land behind relay's checkpoint: lost. So relay samples
the coordinator's clock (`toUnixTimestamp(now())`, milliseconds) and holds its windows back by the
amount it runs ahead. Pure: samples in, estimate out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SAMPLE_INTERVAL_S = 30.0
WARN_FRACTION = 0.25  # of confidence_seconds: beyond this, relay warns (it still holds windows back)
KEEP_SAMPLES = 5


@dataclass
class ClockSkew:
    samples: list[tuple[float, float]] = field(default_factory=list)  # (round trip s, ahead s)

    def add(self, sent_us: int, server_ms: int, received_us: int) -> None:
        """One sample: the local clock before and after a request, and the server's time in between."""
        rtt = max(0.0, (received_us - sent_us) / 1e6)
        midpoint_us = (sent_us + received_us) / 2
        ahead = (midpoint_us - server_ms * 1000) / 1e6
        self.samples = (self.samples + [(rtt, ahead)])[-KEEP_SAMPLES:]

    @property
    def ahead_s(self) -> float:
        """Seconds relay's clock runs ahead of the cluster's (0 when behind or unknown). The sample with
        the shortest round trip is the most precise; the server's millisecond resolution and half the
        round trip are uncertainty, credited to relay."""
        if not self.samples:
            return 0.0
        rtt, ahead = min(self.samples)
        return max(0.0, ahead - rtt / 2 - 0.001)

    def warn(self, confidence_s: float) -> bool:
        return self.ahead_s > WARN_FRACTION * confidence_s

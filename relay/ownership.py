"""Which lease slots this replica runs, drains or has lost, and until when it may publish (DESIGN §5b).

Pure: fed the facts the group consumer reports (slots assigned, revoked, lost; a membership proof
that succeeded; the slots whose tasks workers may still hold) and an injected monotonic `now`;
`decide(now)` returns what the supervisor does.

Self-fencing. A proof is a request that only a current member of the group can make succeed and
that restarts its session at the broker (an offset commit, in the classic protocol, keeps the
session of a member of a stable group). If a proof sent at `t` succeeds, the broker saw it at
`t' >= t`, so the session lasts at least until `t + duration` on any clock that runs at the same
rate. Workers publish only before `t + duration - renew`: a replica frozen longer than that stops
publishing on its own, before a peer can have been given its slots. The send time counts, never
the reply's arrival: a reply that waited out a freeze proves nothing new. A proof sent before
slots were lost proves nothing about the session after it.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    run: frozenset[int]  # slots whose tasks this replica runs
    draining: frozenset[int]  # revoked slots whose tasks workers may still hold
    revoke_done: bool  # nothing revoked is held any more (or the drain ran out of time): the revoke may end
    drain_timed_out: bool  # the drain ended by its time limit, not by the workers' checkpoints
    valid_until: float  # monotonic instant until which workers may publish (0: not at all)
    healthy: bool  # the session is proven at `now`
    member: bool  # an assignment arrived since the start or the last loss


class Ownership:
    def __init__(self, duration_s: float, renew_s: float, drain_timeout_s: float) -> None:
        self.duration_s = duration_s
        self.renew_s = renew_s
        self.drain_timeout_s = drain_timeout_s
        self.owned: set[int] = set()  # assigned and not revoked
        self.draining: set[int] = set()
        self.drain_deadline = 0.0
        self.held: set[int] = set()
        self.proof_sent_at: float | None = None
        self.lost_at: float | None = None
        self.member = False
        self.lost_total = 0

    # ------------------------------------------------------------------ facts
    def assigned(self, slots: Iterable[int]) -> None:
        """Incremental (cooperative): these slots are added to what the replica owns."""
        slots = set(slots)
        self.owned |= slots
        self.draining -= slots  # given back to us before its drain ended: it simply runs on
        self.member = True

    def revoked(self, slots: Iterable[int], now: float) -> None:
        """The slots move: their tasks are handed back, and the revoke ends once none is held."""
        slots = set(slots) & self.owned
        self.owned -= slots
        if slots and not self.draining:
            self.drain_deadline = now + self.drain_timeout_s
        self.draining |= slots

    def lost(self, slots: Iterable[int], now: float) -> None:
        """The session is gone (expired, fenced): stop at once, publish nothing until proven again."""
        slots = set(slots)
        self.lost_total += len(slots & (self.owned | self.draining))
        self.owned -= slots
        self.draining -= slots
        self.lost_at = now
        if not self.owned:
            self.member = False

    def proven(self, sent_at: float) -> None:
        """A membership proof sent at `sent_at` (monotonic) succeeded."""
        if self.proof_sent_at is None or sent_at > self.proof_sent_at:
            self.proof_sent_at = sent_at

    def holding(self, slots: Iterable[int]) -> None:
        """The slots of every task a worker may still hold (what it reported, and what is on its way)."""
        self.held = set(slots)

    # ------------------------------------------------------------------ decision
    def valid_until(self) -> float:
        sent = self.proof_sent_at
        if sent is None or (self.lost_at is not None and sent <= self.lost_at):
            return 0.0
        return sent + self.duration_s - self.renew_s

    def decide(self, now: float) -> Decision:
        still = self.draining & self.held
        timed_out = bool(still) and now >= self.drain_deadline
        if not still or timed_out:
            self.draining.clear()
        until = self.valid_until()
        return Decision(run=frozenset(self.owned), draining=frozenset(self.draining),
                        revoke_done=not self.draining, drain_timed_out=timed_out, valid_until=until,
                        healthy=now < until, member=self.member)

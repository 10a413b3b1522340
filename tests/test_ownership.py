"""Lease slots and ownership decisions (DESIGN §5b): pure, with a fake clock."""
from __future__ import annotations

import subprocess
import sys

from relay.model import Task
from relay.ownership import Ownership
from relay.slots import SlotMap, slot_of
from relay.streams import make_stream_id

D, R, DRAIN = 10.0, 3.0, 30.0


def own() -> Ownership:
    return Ownership(D, R, DRAIN)


def vnode_task(table: str, gen: int, idx: int) -> Task:
    return Task(table, gen, idx, (make_stream_id(idx * 1000 + gen % 97, idx),))


# ---------------------------------------------------------------- slots
def test_slot_is_stable_across_generations_and_spread():
    slots = {slot_of(vnode_task("ks.t", 1, i), 64, False) for i in range(256)}
    assert len(slots) > 50  # 256 vnodes spread over most of 64 slots
    for i in range(256):
        assert slot_of(vnode_task("ks.t", 1, i), 64, False) == slot_of(vnode_task("ks.t", 2, i), 64, False)


def test_slot_differs_by_table_and_uses_tablet_stream():
    a = [slot_of(vnode_task("ks.a", 1, i), 64, False) for i in range(64)]
    b = [slot_of(vnode_task("ks.b", 1, i), 64, False) for i in range(64)]
    assert a != b
    s = make_stream_id(42, 0)
    # a tablet task keeps its slot whatever its index in the generation's stream list
    assert slot_of(Task("ks.t", 1, 0, (s,)), 64, True) == slot_of(Task("ks.t", 9, 7, (s,)), 64, True)


def test_slot_is_the_same_in_another_python_process():
    """Python's str hash is salted per process: the slot must not depend on it."""
    code = ("from relay.slots import slot_of; from relay.model import Task;"
            "print([slot_of(Task('ks.t', 1, i, ()), 64, False) for i in range(20)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123"}).stdout
    assert out.strip() == str([slot_of(Task("ks.t", 1, i, ()), 64, False) for i in range(20)])


def test_slot_map_caches_and_knows_keys():
    m = SlotMap(8)
    t = vnode_task("ks.t", 1, 3)
    assert m.known(t.key) is None
    s = m.of(t, False)
    assert m.known(t.key) == s and m.slots_of([t.key, ("x", 0, 0)]) == {s}


# ---------------------------------------------------------------- ownership
def test_join_runs_nothing_and_publishes_nothing_before_the_first_assignment_and_proof():
    o = own()
    d = o.decide(0.0)
    assert not d.member and d.run == frozenset() and d.valid_until == 0.0 and not d.healthy
    o.assigned({1, 2, 3})
    d = o.decide(1.0)
    assert d.member and d.run == {1, 2, 3} and not d.healthy  # assigned, but not proven yet
    o.proven(1.5)
    d = o.decide(2.0)
    assert d.healthy and d.valid_until == 1.5 + D - R


def test_standby_member_with_no_slots():
    o = own()
    o.assigned(set())
    d = o.decide(1.0)
    assert d.member and d.run == frozenset() and d.revoke_done


def test_leave_revoke_waits_for_the_drain():
    o = own()
    o.assigned({1, 2, 3})
    o.proven(0.0)
    o.holding({1, 2, 3})
    o.revoked({2, 3}, now=1.0)
    d = o.decide(1.0)
    assert d.run == {1} and d.draining == {2, 3} and not d.revoke_done
    o.holding({1, 3})  # slot 2's tasks are checkpointed and handed back
    assert not o.decide(2.0).revoke_done
    o.holding({1})
    d = o.decide(3.0)
    assert d.revoke_done and not d.drain_timed_out and d.draining == frozenset()
    assert d.healthy  # a revoke is no loss: the session holds, slot 1 keeps publishing


def test_drain_is_bounded_by_its_timeout():
    o = own()
    o.assigned({1})
    o.holding({1})
    o.revoked({1}, now=10.0)
    assert not o.decide(10.0 + DRAIN - 0.1).revoke_done
    d = o.decide(10.0 + DRAIN)
    assert d.revoke_done and d.drain_timed_out


def test_revoke_during_a_drain_extends_the_set_not_the_deadline():
    o = own()
    o.assigned({1, 2, 3})
    o.holding({1, 2, 3})
    o.revoked({1}, now=0.0)
    o.revoked({2}, now=5.0)
    d = o.decide(6.0)
    assert d.draining == {1, 2} and d.run == {3}
    o.holding({2, 3})
    assert not o.decide(7.0).revoke_done
    assert o.decide(DRAIN).revoke_done  # the first revoke's deadline bounds the whole drain


def test_slot_given_back_while_draining_runs_on():
    o = own()
    o.assigned({1, 2})
    o.holding({1, 2})
    o.revoked({2}, now=0.0)
    o.assigned({2})
    d = o.decide(1.0)
    assert d.run == {1, 2} and d.revoke_done


def test_kill_of_a_peer_adds_slots():
    o = own()
    o.assigned({1})
    o.proven(0.0)
    o.assigned({4, 5})  # a dead peer's slots, after its session expired
    assert o.decide(1.0).run == {1, 4, 5}


def test_lost_stops_at_once_and_fences_until_proven_again():
    o = own()
    o.assigned({1, 2})
    o.proven(0.0)
    o.holding({1, 2})
    o.lost({1, 2}, now=2.0)
    d = o.decide(2.0)
    assert d.run == frozenset() and d.draining == frozenset() and d.revoke_done
    assert d.valid_until == 0.0 and not d.healthy and not d.member
    assert o.lost_total == 2
    o.proven(1.9)  # a reply to a proof sent before the loss proves nothing
    assert o.decide(2.5).valid_until == 0.0
    o.assigned({1})
    o.proven(3.0)
    d = o.decide(3.1)
    assert d.healthy and d.run == {1}


def test_frozen_replica_fences_itself_before_its_session_can_expire():
    o = own()
    o.assigned({1, 2})
    o.proven(100.0)
    assert o.decide(100.0 + D - R - 0.01).healthy
    # frozen (SIGSTOP) from 101 to 130: no proof was sent; on waking, before any callback ran,
    # the deadline has passed, so workers publish nothing for slots a peer may own by now.
    d = o.decide(130.0)
    assert not d.healthy and d.valid_until == 100.0 + D - R < 100.0 + D
    # a reply that arrives after the freeze to a proof sent before it changes nothing
    o.proven(100.5)
    assert not o.decide(130.1).healthy
    # then the consumer learns it was expelled
    o.lost({1, 2}, now=130.2)
    d = o.decide(130.2)
    assert d.run == frozenset() and not d.member
    # a proof sent while expelled fails (the broker refuses it): nothing is proven until it rejoins
    o.assigned({2})
    assert not o.decide(133.0).healthy
    o.proven(133.5)
    assert o.decide(134.0).healthy


def test_generation_switch_while_slots_move_drains_by_slot_whatever_the_generation():
    """Held tasks of the old and the new generation of one vnode map to one slot: a revoke waits
    for both, and no other slot is disturbed."""
    m = SlotMap(16)
    old = [vnode_task("ks.t", 1, i) for i in range(32)]
    new = [vnode_task("ks.t", 2, i) for i in range(32)]
    slots = {m.of(t, False) for t in old}
    assert {m.of(t, False) for t in new} == slots
    moving = m.of(old[0], False)
    o = own()
    o.assigned(slots)
    held = {old[0].key, new[0].key} | {t.key for t in old[1:] if m.of(t, False) != moving}
    o.holding(m.slots_of(held))
    o.revoked({moving}, now=0.0)
    assert not o.decide(1.0).revoke_done
    held.discard(old[0].key)  # the old generation's task is checkpointed; the new one still runs
    o.holding(m.slots_of(held))
    assert not o.decide(2.0).revoke_done
    held.discard(new[0].key)
    o.holding(m.slots_of(held))
    d = o.decide(3.0)
    assert d.revoke_done and moving not in d.run and d.run == slots - {moving}

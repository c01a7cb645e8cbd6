"""The bubblewrap backend's sandbox uids are reused as late as possible.

A killed sandbox's orphaned processes stay zombies under its uid until the host's PID 1
reaps them, and zombies count towards RLIMIT_NPROC: a uid handed out again at once made
the next sandbox fail with "bwrap: Can't fork" on a busy host (seen here, where PID 1
reaps slowly). The order is checked directly; tests/runtime start sandboxes for real.
"""

from __future__ import annotations

from reflow_microsandbox.sandbox.bubblewrap.uids import UIDS_PER_PROCESS, UidPool


def test_a_freed_uid_is_not_handed_out_while_fresh_ones_remain() -> None:
    pool = UidPool()
    first = pool.take()
    pool.give_back(first)
    assert pool.take() != first


def test_once_every_slot_was_used_the_longest_freed_uid_comes_back_first() -> None:
    pool = UidPool()
    taken = [pool.take() for _ in range(UIDS_PER_PROCESS)]
    assert len(set(taken)) == UIDS_PER_PROCESS
    pool.give_back(taken[10])
    pool.give_back(taken[3])
    assert [pool.take(), pool.take()] == [taken[10], taken[3]]

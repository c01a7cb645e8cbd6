"""Which uids the bubblewrap backend gives its sandboxes, on a host and in a user
namespace with a small id map (a Kubernetes pod with hostUsers: false)."""

from __future__ import annotations

import pytest

from reflow_microsandbox.errors import SandboxError
from reflow_microsandbox.sandbox.bubblewrap.uids import UID_BASE, UIDS_PER_PROCESS, uid_base

HOST_MAP = "         0          0 4294967295\n"
POD_MAP = "         0  983040000      65536\n"  # what the kubelet gives a hostUsers: false pod


def test_on_a_host_each_control_plane_gets_its_own_block_far_from_any_account() -> None:
    assert uid_base(12345, HOST_MAP) == UID_BASE + (12345 % 4096) * UIDS_PER_PROCESS
    assert uid_base(1, HOST_MAP) != uid_base(2, HOST_MAP)
    assert uid_base(7, "") == UID_BASE + 7 * UIDS_PER_PROCESS  # no /proc: as before


def test_in_a_pod_user_namespace_the_block_sits_below_nobody_inside_the_map() -> None:
    base = uid_base(12345, POD_MAP)
    assert base == 65534 - UIDS_PER_PROCESS
    assert base + UIDS_PER_PROCESS - 1 < 65534  # nobody (65534) and 65535 stay out
    assert base > 1000  # far above the image's system accounts


def test_the_largest_of_several_ranges_is_used() -> None:
    uid_map = "0 100000 1000\n1000 500000 65536\n"
    base = uid_base(1, uid_map)
    assert base >= 1000 and base + UIDS_PER_PROCESS <= 1000 + 65536


def test_a_map_too_small_for_sandboxes_is_refused_clearly() -> None:
    with pytest.raises(SandboxError, match="maps too few uids"):
        uid_base(1, "0 1000 1\n")

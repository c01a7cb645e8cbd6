"""The bwrap command line, a pure function of the host layout and the settings.

The real-backend tests (tests/runtime) check what a sandbox can and cannot do under it;
these check the order that makes those promises hold, without starting anything.
"""

from __future__ import annotations

from reflow_microsandbox.config import SandboxConfig
from reflow_microsandbox.sandbox.bubblewrap.argv import RUNNER_DIR, bwrap_argv, mounts
from reflow_microsandbox.sandbox.bubblewrap.host_view import HostLayout


def _layout() -> HostLayout:
    layout = HostLayout("/tmp/runners-xyz")
    layout.symlinks = [("usr/lib", "/lib")]
    layout.binaries = {"python": "/usr/bin/python3.11", "nodejs": "/usr/bin/node"}
    layout.dirs = {"python": ["/usr/lib/python3.11"], "nodejs": ["/usr/share/nodejs"]}
    layout.aliases = {"python": [("/usr/bin/python3.11", "/usr/bin/python3")]}
    return layout


def _pairs(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def test_package_folders_are_mounted_after_tmp_so_that_tmp_does_not_hide_them() -> None:
    argv = mounts(_layout(), "python", tmp_size_bytes=1024, package_dirs=["/tmp/pkgs"])
    assert argv.index("--ro-bind-try") > argv.index("--tmpfs")
    assert _pairs(argv, "--ro-bind") == ["/usr/lib/python3.11", "/usr/bin/python3.11",
                                         "/tmp/runners-xyz"]
    assert argv[argv.index("/tmp/runners-xyz") + 1] == RUNNER_DIR
    assert "--bind" not in argv  # nothing of the host is writable


def test_the_root_and_dev_are_frozen_last_and_the_runner_follows_the_separator() -> None:
    settings = SandboxConfig(package_dirs=["/srv/pkgs"], memory_mb=256)
    argv = bwrap_argv("/usr/bin/bwrap", _layout(), settings, "nodejs",
                      python_entry="python_runner.pyc", fd=7, seccomp_fd=9,
                      extra_dirs=["/var/lib/deps/fn-1"])
    separator = argv.index("--")
    assert argv[separator - 6:separator] == [
        "--remount-ro", "/dev", "--remount-ro", "/", "--seccomp", "9"
    ]
    assert argv[separator + 1:] == ["/usr/bin/node", "--max-old-space-size=192",
                                    "--v8-pool-size=1", f"{RUNNER_DIR}/node_runner.js",
                                    "--fds", "7,7"]
    assert _pairs(argv, "--ro-bind-try") == ["/srv/pkgs", "/var/lib/deps/fn-1"]
    named = argv.index("NODE_PATH")
    assert argv[named - 1:named + 2] == ["--setenv", "NODE_PATH", "/srv/pkgs:/var/lib/deps/fn-1"]
    for option in ("--unshare-all", "--clearenv", "--die-with-parent", "--new-session"):
        assert argv.index(option) < argv.index("--ro-bind")
    assert argv[argv.index("--cap-drop") + 1] == "ALL"


def test_python_runs_isolated_from_its_compiled_entry() -> None:
    argv = bwrap_argv("bwrap", _layout(), SandboxConfig(), "python",
                      python_entry="python_runner.pyc", fd=3, seccomp_fd=4)
    assert argv[argv.index("--") + 1:] == ["/usr/bin/python3.11", "-I", "-S", "-B",
                                           f"{RUNNER_DIR}/python_runner.pyc", "--fds", "3,3"]
    assert "REFLOW_PACKAGE_DIRS" not in argv  # no package folders: nothing to name

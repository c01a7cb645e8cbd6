"""Wheels for the nodes' Python, built on a controller whose Python differs from it.

The operator's failing case: a controller whose ``python3`` is 3.11.7 (pyenv, first on
PATH here) builds the wheelhouse, the nodes and images run Debian 12's 3.11.2, and redis
needs ``async-timeout; python_full_version < "3.11.3"``, which the controller's own
resolution leaves out. Every controller here is a real interpreter with its own pip (uv
comes from PATH, as an operator's would); every install is pip on the image's own Python
3.11.2 with no network and no index but the wheelhouse.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

from .support import controller_pythons, require_engine, run_script

pytestmark = pytest.mark.docker

BASE_IMAGE = "reflow-microsandbox/debian-base:bookworm"
CONTROL_PLANE_IMAGE = "reflow-microsandbox/control-plane:latest"


def _image_python_version(image: str) -> str:
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image,
         "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.strip()


def _install_offline(wheelhouse: Path) -> subprocess.CompletedProcess[str]:
    """pip of the control-plane image (Python 3.11.2) installs from the wheelhouse alone."""
    script = (
        "/opt/microsandbox/bin/pip install --quiet --no-index --find-links /wh "
        "--target /tmp/t reflow-microsandbox "
        "&& PYTHONPATH=/tmp/t python3 -c "
        "'import async_timeout, redis.asyncio, reflow_microsandbox.server; print(\"imported\")'"
    )
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{wheelhouse}:/wh:ro",
         "--entrypoint", "sh", CONTROL_PLANE_IMAGE, "-c", script],
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def images() -> str:
    """The base and control-plane images (cached builds); returns the nodes' Python version."""
    require_engine()
    run_script("scripts/build-images.sh")
    run_script("scripts/build-control-plane-image.sh")
    return _image_python_version(BASE_IMAGE)


# uv on PATH for the controllers (the project's venv has it), after what PATH had.
CONTROLLER_ENV = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:{REPO_ROOT / '.venv/bin'}"}


@pytest.fixture(scope="module")
def controllers() -> dict[str, Path]:
    """Controller interpreters by their Python version; the first is PATH's python3."""
    found = controller_pythons()
    if not found:
        pytest.skip("no Python other than Debian's 3.11.2 on this machine to be the controller")
    return {
        subprocess.run(
            [str(python), "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, check=True,
        ).stdout.strip(): python
        for python in found
    }


def _build_wheelhouse(python: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), str(REPO_ROOT / "scripts" / "wheelhouse.py"), str(out),
         "--probe-image", BASE_IMAGE],
        capture_output=True, text=True, timeout=300, env=CONTROLLER_ENV,
    )


def _digests(wheelhouse: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in wheelhouse.iterdir()}


@pytest.mark.timeout(900)
def test_controllers_on_other_pythons_build_the_same_wheels_and_the_nodes_install_them(
    images: str, controllers: dict[str, Path], tmp_path: Path,
) -> None:
    assert images not in controllers, "every controller must differ from the nodes"
    with ThreadPoolExecutor(max_workers=2) as pool:
        builds = dict(zip(controllers, pool.map(
            lambda item: _build_wheelhouse(item[1], tmp_path / item[0]), controllers.items(),
        ), strict=True))
    for version, result in builds.items():
        assert result.returncode == 0, f"controller {version}: {result.stderr}"

    first, *others = controllers
    reference = tmp_path / first
    target = json.loads((reference / "TARGET.json").read_text())
    assert target["python_version"] == images
    names = sorted(p.name for p in reference.glob("*.whl"))
    # What only the nodes' Python needs is there, and every compiled wheel is for it.
    assert any(name.startswith("async_timeout-") for name in names), names
    compiled = [n for n in names if "-none-any" not in n]
    major_minor = "".join(images.split(".")[:2])
    assert compiled and all(f"-cp{major_minor}-" in n or "-abi3-" in n for n in compiled)
    # Whichever Python the controller runs, the wheelhouse is the same, byte for byte.
    for version in others:
        assert _digests(tmp_path / version) == _digests(reference), version

    installed = _install_offline(reference)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert installed.stdout.strip().endswith("imported")


@pytest.mark.timeout(600)
def test_wheels_resolved_for_the_controller_instead_fail_on_the_nodes(
    images: str, controllers: dict[str, Path], tmp_path: Path,
) -> None:
    """The failure the operator saw (the former build: the controller's own pip wheel),
    reproduced with the same controller and install: proves the test above can fail."""
    python = next(iter(controllers.values()))
    wheelhouse = tmp_path / "wheelhouse"
    subprocess.run(
        [str(python), "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheelhouse),
         str(REPO_ROOT)],
        capture_output=True, text=True, check=True, timeout=600,
    )
    installed = _install_offline(wheelhouse)
    assert installed.returncode != 0
    assert "No matching distribution found for async-timeout" in installed.stderr


@pytest.mark.timeout(900)
def test_the_control_plane_image_builds_with_a_controller_on_another_python(
    images: str, controllers: dict[str, Path],
) -> None:
    python = next(iter(controllers.values()))
    tag = "reflow-microsandbox/control-plane:wheelhouse-test"
    try:
        run_script("scripts/build-control-plane-image.sh", "--force",
                   env={"PYTHON": str(python), "CONTROL_PLANE_IMAGE": tag,
                        "PATH": CONTROLLER_ENV["PATH"]})
        result = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", tag, "-c",
             "import platform, async_timeout, reflow_microsandbox.server; "
             "print(platform.python_version())"],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == images
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)


def test_bad_targets_get_a_clear_error() -> None:
    script = str(REPO_ROOT / "scripts" / "wheelhouse.py")
    cases = [
        (["out", "--python-version", "3.11", "--platform", "manylinux_2_36_x86_64"],
         "give the target's full version"),
        (["out", "--python-version", "3.11.2", "--platform", "linux_x86_64"],
         "give a PEP 600 tag"),
        (["out", "--probe-json", '{"python_version": "3.11.2", "machine": "x86_64", '
                                 '"libc": "", "implementation": "CPython"}'],
         "only glibc (manylinux) targets"),
        (["out"], "say what the target is"),
    ]
    for args, message in cases:
        result = subprocess.run([sys.executable, script, *args], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)

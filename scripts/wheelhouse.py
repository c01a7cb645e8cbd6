#!/usr/bin/env python3
"""Build a wheelhouse of the control plane for the interpreter that will run it.

The wheels must match the *target's* Python (version, ABI, platform), not the build
host's: pip resolves environment markers with the interpreter it runs on, even under
``pip download --python-version``, so a controller on 3.11.7 leaves out
``async-timeout; python_full_version < "3.11.3"`` that Debian 12's 3.11.2 needs (the
install on the node then fails with "No matching distribution found"). Here:

1. the target is described by its own ``python3`` (``--probe-image IMAGE`` runs it in
   a container; ``--probe-json`` takes what ``--print-probe`` printed on the target,
   e.g. through Ansible), or given as ``--python-version`` and ``--platform``;
2. ``uv pip compile`` resolves the project's dependencies for exactly that Python
   version and platform, markers included (pip cannot evaluate markers for another
   interpreter; uv can: ``--python-version`` sets ``python_full_version``);
3. ``pip download --no-deps --only-binary=:all:`` fetches those pins as wheels built
   for the target's tags (every manylinux tag its glibc accepts), and ``pip wheel
   --no-deps`` builds the project's own wheel (pure Python);
4. ``TARGET.json`` in the wheelhouse records what it was resolved for (and nothing about
   the controller: the same target gives byte-identical files).

Install on the target with ``pip install --no-index --find-links DIR reflow-microsandbox``.
Runs on any Python >= 3.9 that has pip, with uv importable or on PATH (``pip install
uv``); the build needs network access to the package index, the target none.

    scripts/wheelhouse.py OUT_DIR --probe-image reflow-microsandbox/debian-base:bookworm
    scripts/wheelhouse.py OUT_DIR --python-version 3.11.2 --platform manylinux_2_36_x86_64
    python3 scripts/wheelhouse.py --print-probe     # run this on the target

Exit status 2 with a message on bad arguments or a failed step (its output shown).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# What the target's python3 prints for --probe-image (stdlib only, any Python 3).
PROBE = (
    "import json, os, platform; "
    "libc = os.confstr('CS_GNU_LIBC_VERSION') if hasattr(os, 'confstr') else ''; "
    "print(json.dumps({'python_version': platform.python_version(), "
    "'implementation': platform.python_implementation(), "
    "'machine': platform.machine(), 'libc': libc or ''}))"
)
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
# Fixed zip timestamps: the same source gives the same project wheel.
SOURCE_DATE_EPOCH = "315532800"


class WheelhouseError(Exception):
    """A step failed or the target is unsupported; the message says which and why."""


@dataclass(frozen=True)
class Target:
    """The interpreter the wheels are for.

    ``python_version`` is the full version (``3.11.2``); ``platform`` a PEP 600 tag
    (``manylinux_2_36_x86_64``), i.e. glibc 2.36 on x86_64.
    """

    python_version: str
    platform: str

    @classmethod
    def from_probe(cls, probe: dict[str, str]) -> Target:
        """From what :data:`PROBE` printed on the target. Raises WheelhouseError."""
        if probe.get("implementation", "CPython") != "CPython":
            raise WheelhouseError(f"the target runs {probe['implementation']}, not CPython")
        libc = probe.get("libc", "").split()
        if len(libc) != 2 or libc[0] != "glibc":
            raise WheelhouseError(
                f"the target's C library is {probe.get('libc')!r}: only glibc (manylinux) "
                "targets are supported"
            )
        major, minor = libc[1].split(".")[:2]
        return cls(probe["python_version"], f"manylinux_{major}_{minor}_{probe['machine']}")

    def validate(self) -> None:
        """Raise WheelhouseError unless the version is X.Y.Z and the tag is manylinux_X_Y_ARCH."""
        if not re.fullmatch(r"3\.\d+\.\d+", self.python_version):
            raise WheelhouseError(
                f"--python-version {self.python_version!r}: give the target's full version, "
                "e.g. 3.11.2 (markers such as python_full_version depend on the patch level)"
            )
        if not _MANYLINUX.match(self.platform):
            raise WheelhouseError(
                f"--platform {self.platform!r}: give a PEP 600 tag such as manylinux_2_36_x86_64"
            )

    @property
    def abi(self) -> str:
        """The CPython ABI tag, e.g. ``cp311``."""
        major, minor = self.python_version.split(".")[:2]
        return f"cp{major}{minor}"

    def uv_platform(self) -> str:
        """The platform as ``uv pip compile --python-platform`` takes it.

        E.g. ``x86_64-manylinux_2_36``.
        """
        match = _MANYLINUX.match(self.platform)
        assert match is not None
        glibc_major, glibc_minor, arch = match.groups()
        return f"{arch}-manylinux_{glibc_major}_{glibc_minor}"

    def pip_platforms(self) -> list[str]:
        """Every platform tag a wheel may carry and still install on the target.

        pip expands only the legacy ``manylinux2014``/``2010`` tags given to
        ``--platform``, so a glibc 2.36 target lists ``manylinux_2_36`` down to
        ``manylinux_2_5`` and the legacy aliases (PEP 600: 2014 = 2.17, 2010 = 2.12,
        1 = 2.5) itself.
        """
        match = _MANYLINUX.match(self.platform)
        assert match is not None
        glibc_major, glibc_minor, arch = int(match[1]), int(match[2]), match[3]
        if glibc_major != 2:
            raise WheelhouseError(f"glibc {glibc_major}.x is not a manylinux target")
        tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc_minor, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{name}_{arch}" for floor, name in legacy.items() if glibc_minor >= floor]
        return tags


def probe_image(image: str) -> dict[str, str]:
    """Run :data:`PROBE` with ``image``'s ``python3`` (no network). Raises WheelhouseError."""
    result = _run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image,
         "-c", PROBE],
        what=f"probing {image}'s python3",
    )
    probe: dict[str, str] = json.loads(result.stdout)
    return probe


def build(out: Path, target: Target, project: Path = REPO_ROOT) -> list[str]:
    """Fill ``out`` (emptied first) with the project's and its dependencies' wheels.

    Returns the wheel file names. Raises WheelhouseError when a step fails.
    """
    target.validate()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        pins = Path(scratch) / "requirements.txt"
        _run(
            [*_uv_command(), "pip", "compile", str(project / "pyproject.toml"),
             "--python-version", target.python_version,
             "--python-platform", target.uv_platform(),
             "--no-header", "--no-annotate", "--quiet", "--output-file", str(pins)],
            what="resolving the dependencies for the target (uv pip compile)",
        )
        platforms = [arg for tag in target.pip_platforms() for arg in ("--platform", tag)]
        _run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--implementation", "cp",
             "--python-version", target.python_version, "--abi", target.abi,
             "--abi", "abi3", "--abi", "none", *platforms,
             "--dest", str(out), "--requirement", str(pins)],
            what="downloading the target's wheels (pip download)",
        )
        _run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
             "--wheel-dir", str(out), str(project)],
            what="building the project's wheel (pip wheel)",
            env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
        )
        requirements = [line for line in pins.read_text().splitlines() if line.strip()]
    wheels = sorted(path.name for path in out.glob("*.whl"))
    # Nothing about the controller goes in: the same target gives the same files, so an
    # image build from them hits the engine's cache whoever built the wheelhouse.
    record = {**asdict(target), "requirements": requirements}
    (out / "TARGET.json").write_text(json.dumps(record, indent=2) + "\n")
    return wheels


def _uv_command() -> list[str]:
    """uv from this interpreter's environment, else from PATH. Raises WheelhouseError."""
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    found = shutil.which("uv")
    if found is None:
        raise WheelhouseError(
            f"uv is needed to resolve for another Python: {sys.executable} -m pip install uv "
            "(or put uv on PATH)"
        )
    return [found]


def _run(argv: list[str], *, what: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError as error:
        raise WheelhouseError(f"{what}: {error.filename} is not installed") from error
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise WheelhouseError(f"{what} failed:\n" + "\n".join(output[-30:]))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", type=Path, help="the wheelhouse directory (replaced)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--probe-image", metavar="IMAGE",
                        help="read the target from this Docker image's python3")
    source.add_argument("--probe-json", metavar="JSON",
                        help="the target as --print-probe printed it on the target")
    source.add_argument("--print-probe", action="store_true",
                        help="print this interpreter's description (run it on the target)")
    parser.add_argument("--python-version", help="the target's full Python version, e.g. 3.11.2")
    parser.add_argument("--platform", help="the target's tag, e.g. manylinux_2_36_x86_64")
    args = parser.parse_args(argv)
    try:
        if args.print_probe:
            # The same code the other modes run with the target's python3.
            return subprocess.run([sys.executable, "-c", PROBE], check=False).returncode
        if args.out is None:
            raise WheelhouseError("give the wheelhouse directory")
        if args.probe_image:
            target = Target.from_probe(probe_image(args.probe_image))
        elif args.probe_json:
            target = Target.from_probe(json.loads(args.probe_json))
        elif args.python_version and args.platform:
            target = Target(args.python_version, args.platform)
        else:
            raise WheelhouseError(
                "say what the target is: --probe-image, --probe-json, or both "
                "--python-version and --platform"
            )
        wheels = build(args.out, target)
    except (WheelhouseError, json.JSONDecodeError, KeyError) as error:
        print(f"wheelhouse: {error}", file=sys.stderr)
        return 2
    print(f"wheelhouse: {len(wheels)} wheels for CPython {target.python_version} "
          f"{target.platform} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

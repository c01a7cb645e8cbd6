"""The wheel carries every package of ``control/``.

``pyproject.toml`` lists the packages by hand (``control/`` is installed under another
name, ``reflow_microsandbox``, which setuptools' discovery cannot map). A folder missing
from that list builds a wheel that installs without it, and every deployment from the
wheel (Ansible's wheelhouse, the control-plane image, compose, swarm) then fails to import
it: the deploy tests catch that minutes in; this test names the folder at once.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_of_control_is_in_the_wheel() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"reflow_microsandbox": "control"}
    listed = set(setuptools["packages"])
    control = ROOT / "control"
    present = {
        ".".join(("reflow_microsandbox", *init.parent.relative_to(control).parts))
        for init in control.rglob("__init__.py")
    }
    assert present - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - present == set(), "these listed packages have no folder"

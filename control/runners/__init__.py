"""The runners that execute inside a sandbox (stdlib Python, plain Node), as file paths.

They are not imported by the control plane: backends copy or mount these files
into sandboxes and start them with the sandbox's own interpreter.
"""

from __future__ import annotations

from pathlib import Path

RUNNERS_DIR = Path(__file__).resolve().parent
PYTHON_RUNNER = RUNNERS_DIR / "python_runner.py"
NODE_RUNNER = RUNNERS_DIR / "node_runner.js"

__all__ = ["NODE_RUNNER", "PYTHON_RUNNER", "RUNNERS_DIR"]

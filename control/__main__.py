"""``python -m reflow_microsandbox``: the same command as ``reflow-microsandbox``."""

from .cli import main

raise SystemExit(main())

"""Reflow MicroSandbox: the control plane that runs Reflow's script actors in sandboxes."""

__version__ = "0.1.0"

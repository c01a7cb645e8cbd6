"""The Docker backend: one container per sandbox, from a per-language runner image.

Read in the order a sandbox is made: :mod:`.engine` (the engine as the backend needs it:
images, create, start, inspect, remove; blocking SDK calls run in threads), :mod:`.owner`
(which control plane owns a container, and whether that owner is gone), :mod:`.attach`
(the container's attached stdin/stdout as a stream pair, with the engine's multiplexing
undone by a sans-I/O parser), :mod:`.cgroup` (a container's memory use from its cgroup
files), and :mod:`.backend` (the :class:`~..base.Backend` and its sandboxes).
"""

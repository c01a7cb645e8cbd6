"""The namespace backend: each sandbox is a runner under ``bwrap`` (Debian's bubblewrap).

What a sandbox gets, and why:

- every namespace unshared (user, pid, net, ipc, uts, cgroup, mount): its own
  loopback only, its own ``/proc`` showing only its own processes;
- a host uid of its own (``bwrap`` runs as ``UID_BASE + slot``, uid 65534 inside):
  never host root, and ``RLIMIT_NPROC`` counts per sandbox (:mod:`.uids`);
- a root filesystem of nothing but, read-only: the interpreter binary and what
  it needs, asked of the interpreter on this host (:mod:`.host_view`: the folders of
  the libraries it links, Python's stdlib, the folders Debian's Node loads its
  builtins from), the runner file, configured ``package_dirs``;
  plus a size-capped private tmpfs ``/tmp`` and a minimal ``/dev``; the root and
  ``/dev`` are remounted read-only, so ``/tmp`` is the only writable place;
- a cleared environment (``--clearenv``): no server secret or Redis password;
- ``--new-session``, ``--die-with-parent``, ``--cap-drop ALL``, no_new_privs (bwrap
  always sets it), and the seccomp filter of :mod:`.seccomp`;
- memory, CPU, process, file and core limits (:mod:`.limits`): cgroups where the host
  offers them (:mod:`.cgroups`, :mod:`.cgroup_v2`), rlimits always (:mod:`.rlimits`).

The runner speaks frames over a socket pair passed as an extra descriptor; its
fd 1/2 lead to a second socket pair whose bytes become log events (:mod:`.capture`), so
nothing a script writes can corrupt the protocol.

The modules, pure ones first: :mod:`.argv` (the bwrap command line and the layout of
what is mounted, a function of the host layout and the settings), :mod:`.limits` and
:mod:`.rlimits` (the figures, and the prlimit command); then what touches the host:
:mod:`.host_view` (what each interpreter needs, asked of it), :mod:`.seccomp`,
:mod:`.cgroups`, :mod:`.cgroup_v2`, :mod:`.uids`, :mod:`.procfs`; and the process
handling: :mod:`.capture` and :mod:`.backend` (one sandbox, and the backend).
"""

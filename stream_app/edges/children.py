"""Child processes (embedded broker, worker) that ignore the terminal's Ctrl-C and die with their parent.

A terminal sends Ctrl-C's SIGINT to its whole foreground process group: the broker would die first and the worker
would then retry a dead broker until its shutdown gave up. Children in their own session get no such signal; the
process that started them stops them in order (worker before broker), and if it is killed they get SIGTERM.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def detached_child() -> dict[str, Any]:
    """subprocess.Popen keyword arguments: a session of its own, and (Linux) SIGTERM when this process dies."""
    options: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        options["preexec_fn"] = _die_with_parent(os.getpid())
    return options

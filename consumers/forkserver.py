"""Child processes that start with TensorFlow already imported.

Importing TensorFlow takes about 4 s of CPU here. Model work runs in child processes (engine processes, and
the sandbox's trial loads), so each would pay it again if started fresh. A multiprocessing fork server imports
TensorFlow once and forks every child from that state. The server is a fresh interpreter, not a fork of the
consumer: children inherit none of the consumer's memory (keys, connections), only the modules preloaded. It
has imported TensorFlow but never run an operation, so no TensorFlow thread or device state is forked.

A child asks the kernel to kill it when its parent, the fork server, ends; the fork server ends when the
process that started it does. A consumer killed with SIGKILL thus takes its model processes with it, even one
spinning inside a TensorFlow kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
from multiprocessing.context import ForkServerContext

# The modules the fork server imports before forking anyone: TensorFlow and the code the children run,
# including consumers.engines, which names the engine process's entry point: a child imports the module of
# its target to unpickle it, and that import was 45 of the 190 ms of CPU an engine took from its fork to its
# first batch (of the tests' tiny model), on every replacement of a crashed one.
_PRELOAD = ["consumers.engine_child", "consumers.sandbox", "consumers.engines"]
_PR_SET_PDEATHSIG = 1


def context() -> ForkServerContext:
    """The context to create model processes with (the preload list only counts before the server starts)."""
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(_PRELOAD)
    return forkserver


def die_with_parent() -> None:
    """In a child: SIGKILL when the fork server (its parent) ends."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent ended before the request above took effect
        os._exit(1)


def drop_settings_from_environment() -> None:
    """In a child: a model has no business with the consumer's settings (store and broker URLs carry
    credentials)."""
    for key in [key for key in os.environ if key.startswith("PERCEPT_")]:
        del os.environ[key]

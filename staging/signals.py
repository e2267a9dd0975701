"""SIGINT/SIGTERM as a flag checked at step boundaries, so a side stops between steps, not inside one.

A handler that raised at once could fire while one rank is inside a collective and the others are
not, leaving them waiting forever. Instead :func:`install` records the signal, and the main loops
(:class:`~stagelearn.staging.producer.Producer` ``write``, the staging loop and its sliced
``BeginStep`` waits) agree on it over their communicator (:func:`agreed`) and then raise
:class:`~stagelearn.staging.errors.Interrupted` on every rank at the same point. A second signal of
the same kind ends the process at once (exit ``128 + signum``) for a side that no longer answers.
"""

from __future__ import annotations

import os
import signal

from .errors import Interrupted
from .mpiutil import allreduce_flag

_pending = 0
_installed = False


def _handler(signum, frame):  # noqa: ARG001
    global _pending
    if _pending == signum:
        os._exit(128 + signum)  # second Ctrl-C: stop now
    _pending = signum


def install():
    """Route SIGINT and SIGTERM to the flag (from the CLI's main thread)."""
    global _installed
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)
    _installed = True


def reclaim():
    """Install the handlers again if :func:`install` was called: opening an SST engine replaces the
    SIGINT handler with ADIOS2's own, which unlinks contact files and exits at once (call after
    opening engines; stagelearn closes its engines itself)."""
    if _installed:
        install()


def pending():
    """The signal received and not yet acted on (0 when none)."""
    return _pending


def agreed(comm):
    """The signal any rank of ``comm`` received (collective; 0 when none)."""
    return allreduce_flag(comm, _pending)


def check(comm):
    """Raise :class:`Interrupted` on every rank when any rank of ``comm`` got a signal (collective)."""
    signum = agreed(comm)
    if signum:
        raise Interrupted(signum)

"""SIGINT/SIGTERM as a flag checked at step boundaries, so a side stops between steps, not inside one.

A handler that raised at once could fire while one rank is inside a collective and the others are
not, leaving them waiting forever. Instead :func:`install` records the signal, and the main loops
(:class:`~stagelearn.staging.producer.Producer` ``write``, the staging loop and its sliced
``BeginStep`` waits) agree on it over their communicator (:func:`agreed`) and then raise
:class:`~stagelearn.staging.errors.Interrupted` on every rank at the same point. A second signal of
the same kind ends the process at once (exit ``128 + signum``) for a side that no longer answers.

Inside a blocking ADIOS2 call (an SST ``Open`` waiting for its peer) no Python code runs: the
bindings hold the GIL, so a flag set by a Python handler would be seen only when the call returns
(up to ``open_s`` later). :func:`exit_on_signal` therefore puts a C-level handler in place around
such a call: SIGINT or SIGTERM there removes the files this process registered
(:func:`remove_at_fast_exit`: its contact files and their claims), prints one line and ends the
process at once with ``128 + signum`` (130, 143), as the CLI does after a step boundary. Nothing
was written yet at that point, so nothing is lost by not unwinding.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from contextlib import contextmanager

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


# ----------------------------------------------------------------- inside blocking ADIOS2 calls
_fast_exit_files = []  # removed before a fast exit (contact files and claims this process owns)
_waiting_for = ""
_c_handler = None  # the ctypes callback, kept alive while installed


def remove_at_fast_exit(path):
    """Remove ``path`` if a signal ends the process inside :func:`exit_on_signal`."""
    if path not in _fast_exit_files:
        _fast_exit_files.append(path)


def keep_at_fast_exit(path):
    """Undo :func:`remove_at_fast_exit`."""
    if path in _fast_exit_files:
        _fast_exit_files.remove(path)


def _fast_exit(signum):
    """C-level handler (runs on the main thread, which holds the GIL inside the ADIOS2 call)."""
    code = 128 + int(signum)
    try:
        for path in list(_fast_exit_files):
            try:
                os.unlink(path)
            except OSError:
                pass
        name = signal.Signals(signum).name
        os.write(2, f"stagelearn: {name} while waiting for {_waiting_for}; stopped (exit {code})\n".encode())
    finally:
        os._exit(code)


def _set_c_handler(signum):
    global _c_handler
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    if _c_handler is None:
        _c_handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(_fast_exit)
    libc.signal(int(signum), ctypes.cast(_c_handler, ctypes.c_void_p).value)


@contextmanager
def exit_on_signal(what, files=()):
    """Around a blocking ADIOS2 call: SIGINT/SIGTERM end the process at once with ``128 + signum``.

    Applies to a signal whose Python handler is stagelearn's (:func:`install`), Python's default
    (``KeyboardInterrupt`` for SIGINT) or the system default, and only on the main thread (a
    signal is delivered to the main thread, which is the one blocked in the call); a handler the
    program set itself is left alone. Afterwards the Python handlers are put back (an SST writer's
    ``Open`` installs ADIOS2's own SIGINT handler, which exits with code 1).

    A signal that :func:`install`'s handler recorded before the call ends the process the same way,
    without making the call (raising :class:`Interrupted` here could leave the other ranks of the
    job waiting in their ``Open``; an ended process ends the ``mpiexec`` job).

    Parameters
    ----------
    what : str
        What the call waits for (the line printed on the way out).
    files : sequence of str
        Removed too on the way out, besides those of :func:`remove_at_fast_exit` (the contact file
        the call is about to write).
    """
    global _waiting_for
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _waiting_for = " ".join(str(what).split())
    if _pending:
        _fast_exit(_pending)
    ours = (_handler, signal.default_int_handler, signal.SIG_DFL)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    taken = [sig for sig, h in saved.items() if any(h is o or h == o for o in ours)]
    extra = [f for f in files if f not in _fast_exit_files]
    _fast_exit_files.extend(extra)
    try:
        for sig in taken:
            _set_c_handler(sig)
        if _pending:  # recorded by the Python handler between the check above and the C handler
            _fast_exit(_pending)
        yield
    finally:
        for f in extra:
            keep_at_fast_exit(f)
        for sig in taken:  # Python's handler again (also over one ADIOS2 installed meanwhile)
            signal.signal(sig, saved[sig])

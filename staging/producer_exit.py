"""How a ``Producer`` script ends on a stagelearn error nobody caught: one line and the CLI's exit code.

A simulation scientist's script runs ``with Producer(...) as prod: prod.open(); ...``. When staging
never comes, ``open`` raises :class:`~stagelearn.staging.errors.StreamTimeoutError` on rank 0 (and
the other ranks would wait in their own ``Open`` until the watchdog ends them with exit code 3).
Left to Python, that is a traceback through stagelearn's internals and exit code 1, on one rank.

A :class:`~stagelearn.staging.producer.Producer` (unless ``exit_on_error=False``) therefore chains a
``sys.excepthook``: a :class:`~stagelearn.staging.errors.StagelearnError` that reaches the top of
the script *uncaught* is printed as one line, ``<script>: stagelearn: ... [exit N]``, and
ends the process, or with several ranks the whole MPI job (``Abort``), with the exit code
``stagelearn sim`` would give (:mod:`.cli`: 2 usage or run directory in use, 3 no staging /
timeout, 4 staging lost, 130 interrupted, ...). Nothing changes for a script that catches the
error (``except StreamTimeoutError``), nor for exceptions that are not stagelearn's (their
traceback is the script's own). ``stagelearn sim`` maps errors itself (:func:`cli_maps_errors`).
"""

from __future__ import annotations

import os
import sys

from .errors import Interrupted, PeerLostError, StagelearnError, strip_ansi

_cli = False
_comm = None  # the communicator of the last Producer (who to abort)
_previous = None  # the excepthook before ours


def cli_maps_errors():
    """Called by ``stagelearn sim``/``stage``: the CLI maps exceptions to exit codes, producers leave them be."""
    global _cli
    _cli = True


def install(comm):
    """Chain the excepthook (once per process; ``comm``: whose job an uncaught error ends)."""
    global _comm, _previous
    _comm = comm
    if _previous is None:
        _previous = sys.excepthook
        sys.excepthook = _hook


def _hook(exc_type, exc, tb):
    if _cli or not isinstance(exc, StagelearnError):
        return _previous(exc_type, exc, tb)
    end_process(exc, _comm)


def one_line(exc, comm=None):
    """The line printed for ``exc`` (script name, rank when several, message, exit code)."""
    from .cli import exit_code_for

    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    rank = f" (rank {comm.Get_rank()})" if comm is not None and comm.Get_size() > 1 else ""
    return f"{script}{rank}: stagelearn: {' '.join(strip_ansi(exc).split())} [exit {exit_code_for(exc)}]"


def end_process(exc, comm):
    """Print ``exc`` as one line on stderr and end the process (with several ranks, the job) with its exit code.

    Every rank raising together (``Interrupted``, ``PeerLostError``) ends its own process; an error
    of some ranks only ends the job with ``comm.Abort(code)`` (the others may wait in a collective).
    """
    from .cli import exit_code_for

    from .contact import release_all

    code = exit_code_for(exc)
    print(one_line(exc, comm), file=sys.stderr, flush=True)
    release_all()  # this process's contact-file claims (the process ends without unwinding)
    sys.stdout.flush()
    if comm is not None and comm.Get_size() > 1 and not isinstance(exc, (Interrupted, PeerLostError)):
        import time

        time.sleep(0.3)  # let mpiexec forward the line before the abort tears the job down
        comm.Abort(code)
    os._exit(code)  # not sys.exit: mpi4py's runner turns an error at exit into MPI_Abort(1)

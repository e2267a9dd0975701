"""A watchdog for blocking ADIOS2 calls that have no timeout of their own.

SST's writer ``Open`` waits for its readers without a time limit, and ADIOS2's Python bindings
hold the GIL inside such calls, so no Python thread or signal handler can run until they return.
The watchdog therefore lives in a small helper process: the guarded process arms it through a
pipe before a blocking call and disarms it after. If the deadline passes, the helper prints what
was awaited and sends ``SIGQUIT`` to the guarded process, whose ``SIGQUIT`` disposition was set at
the C level to ``_exit`` (``_exit(SIGQUIT)`` is ``_exit(3)``): the process ends with exit code 3
even while blocked inside C code. The helper exits when its parent's pipe closes.

The helper runs this file as a script, ``python -S watchdog.py PARENT_PID`` (started by :func:`arm`).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time

EXIT_TIMEOUT = int(signal.SIGQUIT)  # == 3, the CLI's exit code for timeouts

_helper = None


def _route_sigquit_to_exit():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.signal(int(signal.SIGQUIT), ctypes.cast(libc._exit, ctypes.c_void_p).value)


def _ensure_helper():
    global _helper
    if _helper is None or _helper.poll() is not None:
        _route_sigquit_to_exit()
        # run this file as a script: the helper needs the standard library only
        _helper = subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__), str(os.getpid())],
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fds=True)
    return _helper


def arm(timeout_s, message):
    """Start the countdown: past ``timeout_s`` seconds print ``message`` and end with exit code 3."""
    helper = _ensure_helper()
    text = " ".join(str(message).split())
    helper.stdin.write(f"ARM {float(timeout_s)} {text}\n".encode())
    helper.stdin.flush()


def disarm():
    """Stop the countdown started by :func:`arm`."""
    if _helper is not None and _helper.poll() is None:
        _helper.stdin.write(b"DISARM\n")
        _helper.stdin.flush()


def _serve(parent_pid):
    # mpiexec passes Ctrl-C/SIGTERM to the whole process group: the guarded process handles them
    # (stagelearn.staging.signals); the helper ends when the guarded process closes the pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    deadline, message, buf = None, "", b""
    fd = sys.stdin.fileno()
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], wait)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:  # the guarded process is gone
                return 0
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = line.decode(errors="replace").split(" ", 2)
                if cmd[0] == "ARM":
                    deadline, message = time.monotonic() + float(cmd[1]), cmd[2] if len(cmd) > 2 else ""
                elif cmd[0] == "DISARM":
                    deadline = None
        elif deadline is not None and time.monotonic() >= deadline:
            print(f"stagelearn: {message}", file=sys.stderr, flush=True)
            time.sleep(0.3)  # let mpiexec forward the line before the rank (and with it the job) ends
            try:
                os.kill(parent_pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass
            return 0


if __name__ == "__main__":
    raise SystemExit(_serve(int(sys.argv[1])))

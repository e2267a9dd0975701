"""Who owns an SST contact file (or a run directory's staging): a small JSON claim beside it.

SST finds a stream through its contact file ``<stream>.sst``, which the writer writes inside its
``Open``. A file left by a writer that crashed points readers at a dead peer, so it must go before
a new writer opens; a file of a *live* writer must never go (its reader could not connect any
more, and its job would end with a timeout). Age says nothing about that: a contact file is written
once, so a live writer's file is as old as its run. Staleness is therefore decided by the owning
process:

- the side that creates the contact file first writes the claim ``<stream>.sst.owner``
  (``{"host", "pid", "start", "since", "command", "stale_after_s"}``, see :func:`claim`); a
  staging job claims its run directory the same way (``<run_dir>/sst/staging.owner``);
- a claim is live when, on the same host, its process exists (``os.kill(pid, 0)``) and has the
  recorded start time (``/proc/<pid>/stat``, so a reused pid is not mistaken for the owner); from
  another host (a shared file system), when its file was touched within ``stale_after_s``: every
  claiming process touches its claims every :data:`HEARTBEAT_S` seconds from a daemon thread;
- a contact file with no claim was written by a code that is not stagelearn (in transit) or by an
  older version; it is treated as before (removed by the side about to write a new one).

A claim held by another live process raises :class:`ContactFileInUse` (a :class:`UsageError`,
exit code 2), naming the run directory, the process and the way out.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager

from . import signals
from .errors import ContactFileInUse

logger = logging.getLogger(__name__)

OWNER_SUFFIX = ".sst.owner"
#: Seconds between two touches of each claim (the heartbeat seen from other hosts).
HEARTBEAT_S = 10.0
#: A claim from another host whose file was not touched for this long is stale. Blocking ADIOS2
#: calls hold the GIL (no heartbeat while one waits): this covers the default open/step timeouts.
STALE_AFTER_S = 300.0

_held = set()  # claim files this process holds (touched by the heartbeat, removed on a fast exit)
_lock = threading.Lock()
_heartbeat = None


def owner_file(stream_path):
    """The claim file beside the contact file of ``stream_path`` (``<stream_path>.sst.owner``)."""
    return f"{stream_path}{OWNER_SUFFIX}"


def run_dir_of(path):
    """The run directory a stream or claim belongs to (the folder above ``sst/`` when it is in one)."""
    folder = os.path.dirname(os.path.abspath(str(path)))
    return os.path.dirname(folder) if os.path.basename(folder) == "sst" else folder


def _start_time(pid):
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            text = f.read()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def this_process():
    """The claim record of this process."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    prog = "stagelearn" if prog == "__main__.py" else prog  # python -m stagelearn
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()), "since": time.time(),
            "command": " ".join([prog, *sys.argv[1:3]]), "stale_after_s": max(STALE_AFTER_S, _blocking_s + 60.0)}


_blocking_s = 0.0  # the longest blocking ADIOS2 call of this process (set_blocking_limit)


def set_blocking_limit(seconds):
    """Declare the longest blocking call (``Open``/``BeginStep`` wait) this process may make, in s.

    ADIOS2 holds the GIL in those calls, so the heartbeat cannot touch claims meanwhile: a claim
    judged from another host must stay live for longer than that (``stale_after_s`` in the record).
    """
    global _blocking_s
    _blocking_s = max(_blocking_s, float(seconds))


def read_claim(path):
    """The claim record in ``path``, or None when there is none (or it is unreadable: a torn write is no owner)."""
    try:
        with open(path) as f:
            rec = json.load(f)
        return rec if isinstance(rec, dict) and isinstance(rec.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def is_live(rec, path=None):
    """True when the process of claim ``rec`` (read from ``path``) is still running (see the module docstring)."""
    if rec.get("host") == socket.gethostname():
        pid = int(rec["pid"])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, another user's: /proc/<pid>/stat is still readable
            pass
        start = rec.get("start")
        return start is None or _start_time(pid) in (None, start)  # a reused pid has another start time
    try:
        age = time.time() - os.path.getmtime(path)
    except (OSError, TypeError):
        return False
    return age < float(rec.get("stale_after_s", STALE_AFTER_S))


def is_mine(rec):
    """True when claim ``rec`` is this process's (same host, pid and start time: not a dead process whose
    pid this one reuses, e.g. the same low pid in a container's PID namespace)."""
    return (rec.get("host") == socket.gethostname() and int(rec["pid"]) == os.getpid()
            and rec.get("start") in (None, _start_time(os.getpid())))


def live_owner(path):
    """The claim record in ``path`` when another live process holds it, else None (no claim, stale, or ours)."""
    rec = read_claim(path)
    if rec is None or is_mine(rec):
        return None
    return rec if is_live(rec, path) else None


def in_use_error(path, rec, what):
    """The :class:`ContactFileInUse` for claim ``rec`` of ``path``, naming run directory, process and fix."""
    since = time.strftime("%H:%M:%S", time.localtime(float(rec.get("since", 0))))
    where = "" if rec.get("host") == socket.gethostname() else f" on host {rec.get('host')}"
    fix = ("stop that job first (or let it finish), or give this one another run directory (--run-dir)"
           if not where else
           f"stop that job first, or give this one another run directory; if it is gone, delete {path}")
    return ContactFileInUse(f"run directory {run_dir_of(path)}: {what} is held by a live process: pid {rec['pid']}"
                            f"{where} (`{rec.get('command', '?')}`, since {since}; claim {path}); {fix}")


def claim(path, what):
    """Claim ``path`` for this process (written atomically; kept alive by the heartbeat until :func:`release`).

    Parameters
    ----------
    path : str
        The claim file (:func:`owner_file` of a stream, or a run directory's ``sst/staging.owner``).
    what : str
        What the claim protects, for the error message (``"the data stream's contact file"``).

    Returns
    -------
    claimed : bool
        False when the folder of ``path`` does not exist (nothing can be written there, nor
        opened: the ``Open`` that follows says so).

    Raises
    ------
    ContactFileInUse
        If another live process holds ``path``.
    """
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return False
    for _ in range(2):
        rec = live_owner(path)
        if rec is not None:
            raise in_use_error(path, rec, what)
        old = read_claim(path)
        if old is not None and is_mine(old):
            break
        if old is None and _older_than(path, 5.0):  # unreadable and not being written: no owner
            _remove(path)
        if old is not None:
            logger.warning("%s: its owner (pid %s on %s) is gone; taking it over", path, old.get("pid"), old.get("host"))
            _remove_if_still(path, old)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(this_process(), f)
        try:
            _link_exclusive(tmp, path)  # of two jobs starting together, one wins
        except FileExistsError:
            continue  # the other one won: judge its claim
        finally:
            _remove(tmp)
        break
    else:
        raise in_use_error(path, read_claim(path) or {"pid": "?"}, what)
    with _lock:
        _held.add(path)
    signals.remove_at_fast_exit(path)
    _start_heartbeat()
    return True


def _remove_if_still(path, judged):
    """Remove the claim file ``path`` only if it still holds the record ``judged`` stale.

    Never by name alone: of two jobs that both judged one stale claim, the second would delete the
    first one's fresh claim. The file is moved aside under a private name first (atomic), re-read,
    and put back (``os.link``, which fails if a claim appeared meanwhile) when it is not that record.
    """
    aside = f"{path}.stale.{os.getpid()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if read_claim(aside) == judged:
        _remove(aside)
        return
    try:
        os.link(aside, path)  # somebody's fresh claim: give it back
    except FileExistsError:
        pass
    finally:
        _remove(aside)


def release(path):
    """Give up a claim of this process (does nothing for a claim it does not hold)."""
    with _lock:
        held = path in _held
        _held.discard(path)
    signals.keep_at_fast_exit(path)
    rec = read_claim(path)
    if held and rec is not None and is_mine(rec):
        _remove(path)


def release_all():
    """Give up every claim of this process (before it ends without unwinding)."""
    with _lock:
        paths = list(_held)
    for path in paths:
        release(path)


def _link_exclusive(tmp, path):
    """Put the complete file ``tmp`` at ``path`` unless ``path`` exists (FileExistsError): a hard link,
    atomic; where the file system has none, an exclusive create and a copy."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f, open(tmp) as src:
        f.write(src.read())


def _older_than(path, seconds):
    try:
        return time.time() - os.path.getmtime(path) > seconds
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _beat():
    while True:
        time.sleep(HEARTBEAT_S)
        with _lock:
            paths = list(_held)
        for p in paths:
            try:
                os.utime(p)
            except OSError:
                pass


def _start_heartbeat():
    global _heartbeat
    if _heartbeat is None or not _heartbeat.is_alive():
        _heartbeat = threading.Thread(target=_beat, name="stagelearn-claims", daemon=True)
        _heartbeat.start()


@contextmanager
def staging_claim(comm, run_dir):
    """Rank 0 claims ``<run_dir>/sst/staging.owner`` for this staging job while it runs (collective).

    A second staging job on a run directory whose staging still runs stops here on every rank,
    before it touches a stream, with :class:`ContactFileInUse` (exit code 2) naming the run
    directory and the live pid.
    """
    path = os.path.join(str(run_dir), "sst", "staging.owner")
    error = None
    if comm.Get_rank() == 0:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        try:
            claim(path, "its staging")
        except ContactFileInUse as exc:
            error = str(exc)
    error = comm.bcast(error, root=0)
    if error is not None:
        raise ContactFileInUse(error)
    try:
        yield
    finally:
        if comm.Get_rank() == 0:
            release(path)

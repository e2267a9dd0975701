"""The one module that imports ADIOS2: loading, IO declaration, timed steps and a watchdog.

Every other module gets the bindings from :func:`bindings` (``adios2.bindings``: ``ADIOS``,
``IO``, ``Engine``, ``Variable``, ``StepStatus``, which mirror the C++ API names used throughout
the ADIOS2 documentation) and never imports ``adios2`` itself
(:func:`adios2_version` for the version string).

Engines (``Open``, ``BeginStep``, ``Put``/``Get``, ``EndStep``, ``Close``) are called only here
and in the modules that own one end of a stream or file:

- :mod:`.stream`: the staging side's stream readers;
- :mod:`.stream_writer`: the producers' stream writer;
- :mod:`.model_channel`: the encoder/acknowledgement channel (both ends);
- :mod:`.output_writer` and :mod:`.output_reader`: the compressed output file.

:func:`begin_step` returns ADIOS2's ``StepStatus``; readers turn it into their ``status``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager

from . import contact, signals, watchdog
from .errors import AdiosUnavailableError, ConfigError, StreamTimeoutError, strip_ansi

logger = logging.getLogger(__name__)


def bindings():
    """Return ``adios2.bindings`` (MPI is loaded first so an MPI build finds the venv's libmpi).

    Raises
    ------
    AdiosUnavailableError
        If ADIOS2 is not installed.
    """
    from mpi4py import MPI  # noqa: F401  (load libmpi before an MPI-enabled adios2)

    try:
        import adios2.bindings as b
    except ImportError as exc:
        raise AdiosUnavailableError(
            f"cannot import adios2 ({exc}); run `make setup` (builds ADIOS2 with MPI) or `pip install adios2`"
        ) from None
    return b


def adios2_version():
    """Version string of the installed ADIOS2 Python package (``adios2.__version__``)."""
    bindings()
    import adios2

    return str(adios2.__version__)


def built_with_mpi():
    """True when the installed ADIOS2 was built with MPI."""
    return bool(bindings().is_built_with_mpi)


def make_adios(config_file, comm=None):
    """Create an ``ADIOS`` object from an XML file, over ``comm`` when ADIOS2 has MPI.

    Parameters
    ----------
    config_file : str or path
        ADIOS2 XML (or YAML) configuration.
    comm : mpi4py.MPI.Comm or None
        Communicator; must be ``None`` or of size 1 with a serial ADIOS2.

    Raises
    ------
    AdiosUnavailableError
        If ``comm`` has several ranks and ADIOS2 lacks MPI.
    ConfigError
        If the configuration file does not exist.
    """
    b = bindings()
    if not os.path.exists(config_file):
        raise ConfigError(f"{config_file}: ADIOS2 configuration file not found; set adios2.config_file in the run YAML")
    if b.is_built_with_mpi:
        from mpi4py import MPI

        return b.ADIOS(str(config_file), comm if comm is not None else MPI.COMM_SELF)
    if comm is not None and comm.Get_size() > 1:
        raise AdiosUnavailableError(
            "this ADIOS2 is built without MPI, so several ranks cannot share one stream; "
            "use adios2.layout: per_rank, or build ADIOS2 with MPI (`make setup`)"
        )
    return b.ADIOS(str(config_file))


def declare_io(adios, io_name, config_file, known_ios):
    """Declare an IO that must exist in the XML (ADIOS2 would silently fall back to BP5).

    Parameters
    ----------
    adios : adios2.bindings.ADIOS
    io_name : str
    config_file : str
        For the error message.
    known_ios : collection of str
        IO names defined in ``config_file`` (:func:`stagelearn.staging.xmlconfig.read_ios`).

    Raises
    ------
    ConfigError
        If ``io_name`` is not defined in the XML.
    """
    if io_name not in known_ios:
        raise ConfigError(
            f"{config_file}: no <io name=\"{io_name}\"> (defined: {sorted(known_ios)}); "
            f"add it to the XML or change the IO name in the run YAML"
        )
    return adios.DeclareIO(io_name)


def blocks_info_dims(text):
    """A ``BlocksInfo`` entry's ``Start``/``Count``/``Shape`` string (``"4,8"``) as a tuple of int (``()`` if empty)."""
    return tuple(int(x) for x in text.split(",")) if text else ()


def begin_step(engine, timeout_s, what):
    """``BeginStep`` in read mode with a timeout.

    One uninterrupted wait: repeated short timed waits (to look at signals in between) crashed
    ADIOS2 2.12.1's SST reader (SIGSEGV inside ``BeginStep``) when steps arrived around the timeouts.
    A signal therefore takes effect when the next step or the end of the stream arrives.

    Returns
    -------
    status : adios2.bindings.StepStatus
        ``OK`` when a step is there, ``EndOfStream`` when the writer closed the stream,
        ``OtherError`` when it went away without closing it (SST reports a dead writer so; logged).

    Raises
    ------
    StreamTimeoutError
        If no step arrived within ``timeout_s`` seconds (``NotReady``).
    """
    b = bindings()
    status = engine.BeginStep(b.StepMode.Read, float(timeout_s))
    if status == b.StepStatus.NotReady:
        raise StreamTimeoutError(f"no step on {what} within {timeout_s:g} s (timeouts.step_s); is the writer alive?")
    if status not in (b.StepStatus.OK, b.StepStatus.EndOfStream):
        logger.error("BeginStep on %s: %s (the writer went away without closing the stream)", what, status)
    return status


def open_reader(io, path, open_timeout_s, what, setting="timeouts.open_s"):
    """Open a stream for reading, waiting at most ``open_timeout_s`` for its writer.

    Sets SST's ``OpenTimeoutSecs`` (the wait for the writer's contact file) and bounds the
    rest of the handshake with :func:`deadline`. A contact file left by a writer that crashed in
    an earlier run (SST: "non-current SST contact file") is reported, removed, and the wait goes
    on for the real writer with the time left (the writer may start before or after the reader);
    never one whose writer claimed it and still runs (:mod:`.contact`). SIGINT/SIGTERM while it
    waits end the process at once with 130/143 (:func:`stagelearn.staging.signals.exit_on_signal`).

    ``setting`` is how the message names the timeout (the YAML key, or the argument the caller passed).

    Raises
    ------
    StreamTimeoutError
        If no writer appeared in time; says whether the contact file's folder exists, whether a
        contact file appeared, or whether it was stale.
    """
    b = bindings()
    t_end = time.monotonic() + open_timeout_s
    for attempt in range(3):
        left = max(1.0, t_end - time.monotonic())
        io.SetParameter("OpenTimeoutSecs", str(max(1, int(round(left)))))
        try:
            with deadline(left + 30, f"{what} to finish opening {path} ({setting})"), \
                    signals.exit_on_signal(f"{what} to open {path}"):
                return io.Open(str(path), b.Mode.Read)
        except (ValueError, RuntimeError) as exc:
            text = str(exc)
            if attempt < 2 and "did not find active Writer" in text and time.monotonic() < t_end:
                if contact.live_owner(contact.owner_file(path)) is not None:
                    # the file read was an old one, replaced meanwhile by a live writer's: just wait again
                    logger.info("%s.sst: a new writer claimed it while this reader connected; waiting again", path)
                    continue
                logger.warning("%s.sst is a stale SST contact file: its writer is gone (an earlier run crashed?); "
                               "removed it, waiting %.0f s more for %s", path, t_end - time.monotonic(), what)
                try:
                    os.remove(f"{path}.sst")
                except FileNotFoundError:  # another reader rank removed it
                    pass
                continue
            if "contact" in text or "Timeout" in text or "timed out" in text:
                raise StreamTimeoutError(
                    f"{what} did not open {path} within {open_timeout_s:g} s ({setting}){_why_not_open(path, text)}; "
                    "is it running, and does it use the same stream path and SST settings?") from None
            raise type(exc)(strip_ansi(text)) from None


def _why_not_open(path, text):
    """What the contact file tells about a writer that never came: no folder, no file, or a stale file."""
    folder = os.path.dirname(os.path.abspath(str(path)))
    if not os.path.isdir(folder):
        return f" (the folder {folder} does not exist: nothing was started with this run directory yet)"
    if "did not find active Writer" in text and os.path.exists(f"{path}.sst"):
        return " (its contact file was stale: the writer had gone)"
    return f" (no contact file {path}.sst appeared)"



@contextmanager
def deadline(timeout_s, what):
    """Bound a blocking ADIOS2 call that has no timeout of its own (SST writer ``Open``, ``EndStep``).

    Past ``timeout_s`` seconds the process prints what it waited for and ends with exit code 3,
    even while blocked in C code (see :mod:`stagelearn.staging.watchdog`). ``timeout_s <= 0``
    disables the bound.
    """
    if not timeout_s or timeout_s <= 0:
        yield
        return
    watchdog.arm(timeout_s, f"timed out after {timeout_s:g} s waiting for {what}; is the other side running?")
    try:
        yield
    finally:
        watchdog.disarm()


def remove_stale_contact_file(stream_path):
    """Delete ``<stream_path>.sst`` left by a crashed writer (else readers connect to a dead peer).

    Stale is decided by the process that owns the file (its claim ``<stream_path>.sst.owner``,
    :mod:`.contact`), never by age: the file of a live writer is kept and raises. A file of this
    process is kept too. A file without a claim (written by a code that is not stagelearn, or
    left by an older version) is removed, as is the claim of a writer that is gone.

    Returns
    -------
    removed : bool
        True when a contact file was removed.

    Raises
    ------
    ContactFileInUse
        (a :class:`~stagelearn.staging.errors.UsageError`, exit code 2) If a live process of
        another job owns the contact file; the message names the run directory and its pid.
    """
    path, owner = f"{stream_path}.sst", contact.owner_file(stream_path)
    rec = contact.read_claim(owner)
    if rec is not None and contact.is_mine(rec):
        return False
    live = contact.live_owner(owner)
    if live is not None:
        raise contact.in_use_error(owner, live, f"the SST contact file {os.path.basename(path)}")
    removed = False
    if os.path.exists(path):
        why = (f"its writer, pid {rec['pid']} on {rec.get('host')}, is gone" if rec is not None else
               "it has no owner record (a writer that is not stagelearn, or an earlier run)")
        logger.warning("removing stale SST contact file %s: %s", path, why)
        try:
            os.remove(path)
            removed = True
        except FileNotFoundError:  # another process removed it meanwhile
            pass
    if rec is not None:
        try:
            os.remove(owner)
        except FileNotFoundError:
            pass
    return removed


def open_writer(io, path, timeout_s, what, *, contact_file=False):
    """``Open`` for writing, bounded by :func:`deadline`; SIGINT/SIGTERM while it waits end the process
    at once with 130/143 (:func:`stagelearn.staging.signals.exit_on_signal`).

    Parameters
    ----------
    io : adios2.bindings.IO
    path : str
        Stream or file name.
    timeout_s : float
        Bound on the ``Open`` (an SST writer waits there for its readers); exit code 3 past it.
    what : str
        What the ``Open`` waits for (messages).
    contact_file : bool
        True on the process that writes ``<path>.sst``: it is removed on the way out after a signal.
    """
    b = bindings()
    if io.EngineType().lower() == "sst":
        _take_adios_sigint_handler()
    files = [f"{path}.sst"] if contact_file else []
    with deadline(timeout_s, what), signals.exit_on_signal(what, files):
        return io.Open(str(path), b.Mode.Write)


_sigint_taken = False


def _take_adios_sigint_handler():
    """Let ADIOS2 install its SIGINT handler now, on a throwaway SST writer (once per process).

    The first SST writer ``Open`` of a process installs a SIGINT handler that exits with code 1,
    right after writing its contact file and before it waits for readers, over the handler that
    :func:`stagelearn.staging.signals.exit_on_signal` set. It does so only once per process, so a
    writer with no readers to wait for (``RendezvousReaderCount=0``, opened and closed at once in a
    temporary folder, ~0.1 s) takes that turn; the real ``Open`` then keeps stagelearn's handler.
    """
    global _sigint_taken
    if _sigint_taken:
        return
    _sigint_taken = True
    b = bindings()
    folder = tempfile.mkdtemp(prefix="stagelearn-sst-")
    try:
        if b.is_built_with_mpi:
            from mpi4py import MPI

            adios = b.ADIOS(MPI.COMM_SELF)
        else:
            adios = b.ADIOS()
        io = adios.DeclareIO("stagelearn-sigint")
        io.SetEngine("SST")
        io.SetParameters({"RendezvousReaderCount": "0", "DataTransport": "WAN", "QueueLimit": "1"})
        engine = io.Open(os.path.join(folder, "probe"), b.Mode.Write)
        engine.Close()
    except Exception as exc:  # noqa: BLE001 - only Ctrl-C in a first Open then exits 1 instead of 130
        logger.debug("could not take ADIOS2's SIGINT handler in advance: %s", exc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

"""In transit, the simulation's own ADIOS2 XML is the contract: find it and judge its stream IO.

An unchanged code reads only its own XML, so the settings that decide whether steps are lost
(the SST queue and its policy, the data plane) are the code's, not the run YAML's. ``stagelearn
validate`` and ``stagelearn run`` call :func:`judge` before anything starts: the same checks as
``stagelearn xml RUN.yaml --check FILE`` (:func:`stagelearn.staging.xmllint.check`), plus refusals
of what loses data or cannot work here:

- ``QueueFullPolicy=Discard``: the writer drops steps while staging is busy (allowed only with
  ``adios2.allow_discard: true`` in the run YAML);
- a ``QueueLimit`` that is missing or 0: the writer's queue is unbounded (its memory grows);
- ``DataTransport=MPI``: this MPI cannot open the ports SST's MPI data plane needs
  (``MPI_Open_port``: "no space for port_name tag").

What ADIOS2 2.12.1 itself refuses anywhere in the file (two engines in an IO, an ``<operation>`` with
both ``operator=`` and ``type=``, an operator not compiled into this build, SST values its Open throws
on: :mod:`.xml_refusals`, :mod:`.sst_params`) is refused too: the code would fail at start-up.

The code's XML files are the ``.xml`` files among ``simulation.command``'s arguments and
``adios2.config_file`` when it is not the packaged ``stagelearn.xml``.
"""

from __future__ import annotations

import os

from .config import default_xml
from .errors import ConfigError
from .sst_params import value_problem
from .xmlconfig import read_ios
from .xmllint import check

#: Stream IO keys judged here rather than against xmlgen's expectations (their findings are replaced).
_OWN_KEYS = ("QueueFullPolicy", "QueueLimit", "DataTransport")


def code_xml_files(cfg):
    """The simulation's own ADIOS2 XML files of an in-transit run (empty in situ).

    Parameters
    ----------
    cfg : RunConfig
        Loaded (:func:`~stagelearn.staging.config.load_config`: paths resolved).

    Returns
    -------
    paths : list of str
        Existing files, each once, in the order: ``adios2.config_file`` (unless packaged), command arguments.
    """
    if cfg.staging.mode != "in_transit":
        return []
    out = []
    if os.path.normpath(cfg.adios2.config_file) != os.path.normpath(default_xml()):
        out.append(cfg.adios2.config_file)
    for arg in cfg.simulation.command or ():
        if str(arg).lower().endswith(".xml") and os.path.isfile(arg):
            out.append(os.path.normpath(os.path.abspath(arg)))
    seen = set()
    return [p for p in out if not (os.path.abspath(p) in seen or seen.add(os.path.abspath(p)))]


def _own_checks(cfg, path, io_name, params):
    """Refusals of the stream IO's queue, policy and data plane (one line each: file, IO, key, fix)."""
    where = f"{path}: IO {io_name}"
    out = []
    policy = params.get("QueueFullPolicy")
    if policy is not None and policy.strip().lower() == "discard" and not cfg.adios2.allow_discard:
        out.append(f"{where}: QueueFullPolicy=Discard drops every step written while the queue is full (staging "
                   f"busy): they are lost; change it to <parameter key=\"QueueFullPolicy\" value=\"Block\"/>, or "
                   f"set adios2.allow_discard: true in {cfg.source} to accept lost steps")
    readers = params.get("RendezvousReaderCount")
    if readers is not None and readers.strip() == "0" and not cfg.adios2.allow_discard:
        out.append(f"{where}: RendezvousReaderCount=0 lets the code write (and finish) before staging has opened the "
                   f"stream: every step written before then is lost; change it to <parameter "
                   f"key=\"RendezvousReaderCount\" value=\"1\"/> (the code's Open waits for staging), or set "
                   f"adios2.allow_discard: true in {cfg.source} to accept lost steps")
    limit = params.get("QueueLimit")
    fix = "set <parameter key=\"QueueLimit\" value=\"4\"/> (a few steps; the writer waits when it is full)"
    if limit is None:
        out.append(f"{where}: QueueLimit is not set: SST's default 0 queues steps without limit, so the writer's "
                   f"memory grows while staging is busy; {fix}")
    else:
        try:
            bounded = int(limit) > 0
        except ValueError:
            out.append(f"{where}: QueueLimit={limit!r} is not an integer; {fix}")
        else:
            if not bounded:
                out.append(f"{where}: QueueLimit={limit} means an unbounded queue (the writer's memory grows while "
                           f"staging is busy); {fix}")
    transport = params.get("DataTransport")
    if transport is not None and transport.strip().lower() == "mpi":
        out.append(f"{where}: DataTransport=MPI cannot work with this MPI (SST's MPI data plane calls MPI_Open_port, "
                   f"which fails: \"no space for port_name tag\"); change it to <parameter key=\"DataTransport\" "
                   f"value=\"WAN\"/> (or RDMA where libfabric serves the network), or remove it")
    return out


def judge(cfg):
    """Judge the stream IO of the code's own XML files (in transit; nothing in situ).

    Parameters
    ----------
    cfg : RunConfig
        Loaded (:func:`~stagelearn.staging.config.load_config`).

    Returns
    -------
    problems : list of str
        Refusals, each naming the file, the IO, the parameter and what to change it to.
    notes : list of str
        Warnings (``xml --check`` warnings, an XML without the stream IO).
    """
    problems, notes = [], []
    io_name = cfg.adios2.stream_io
    for path in code_xml_files(cfg):
        try:
            ios = read_ios(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        names = [io_name] if io_name in ios else sorted(n for n, io in ios.items() if io.type.lower() == "sst")
        if not names:
            notes.append(f"{path}: no IO {io_name!r} and no SST IO (it defines {sorted(ios)}): not judged")
        elif io_name not in ios:  # an SST reader need not share the writer's IO name: judge the code's SST IOs
            notes.append(f"{path}: no IO {io_name!r}; judged its SST IO(s) {names} as the code's stream "
                         f"(`stagelearn xml {cfg.source} --check {path} --io {names[0]}` checks one by name)")
        seen = set()
        for name in names:
            params = ios[name].parameters
            for f in check(cfg, path, io_name=name):
                if f.io == name and f.key in _OWN_KEYS and (
                        f.key == "QueueLimit" or value_problem(f.key, params.get(f.key) or "") is None):
                    continue  # judged by _own_checks below (QueueLimit always; the others where SST accepts the value)
                line = f.format(path)
                if line not in seen:  # file-wide findings come once, not once per judged IO
                    seen.add(line)
                    (problems if f.severity == "error" else notes).append(line)
            if ios[name].type.lower() == "sst":
                problems += _own_checks(cfg, path, name, ios[name].parameters)
                if str(ios[name].parameters.get("StatsLevel", "0")).strip() != "1":
                    notes.append(f"{path}: IO {name}: SST sends no per-block min/max unless StatsLevel=1, so "
                                 "staging cannot check the blocks it receives against the writer's own extremes "
                                 "(garbage or all-zero blocks would be stored as data); add <parameter "
                                 "key=\"StatsLevel\" value=\"1\"/>")
    return problems, notes


def enforce(cfg):
    """:func:`judge`, raising on any problem; returns the notes.

    Raises
    ------
    ConfigError
        Listing every problem; it points to ``stagelearn xml RUN.yaml --check FILE`` for the details.
    """
    problems, notes = judge(cfg)
    if problems:
        files = code_xml_files(cfg)
        hint = (f"the code's XML is the contract in transit; `stagelearn xml {cfg.source} --check {files[0]}` "
                "lists every finding") if files else ""
        err = ConfigError.from_problems(problems, cfg.source)
        raise ConfigError(f"{err}; {hint}" if hint else str(err), err.problems + ((hint,) if hint else ()))
    return notes

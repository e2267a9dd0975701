"""SST engine parameters of ADIOS2 2.12.1: their names, the values SST accepts, and what it does otherwise.

Taken from the ADIOS2 2.12.1 sources (the sdist setup caches, ``adios2-2.12.1.1001.tar.gz``):

- names and kinds: ``SST_FOREACH_PARAMETER_TYPE_4ARGS`` in ``source/adios2/toolkit/sst/sst_data.h``;
- enumerated and boolean values: ``source/adios2/engine/sst/SstParamParser.cpp`` (``ParseParams``):
  each value is lower-cased, then compared; anything else throws ``std::invalid_argument``
  ("Unknown Sst <Key> parameter") when the engine opens. Booleans are ``yes``/``true``/``on`` and
  ``no``/``false``/``off`` only (``1`` throws). Integers go through ``std::stoi`` (``"60.0"`` reads 60,
  ``"four"`` throws). Keys are looked up with ``io.m_Parameters.find(key)``, a ``std::map``: SST
  matches keys case-sensitively (``queuelimit`` is ignored), unlike BP4/BP5, which lower-case them;
- ``DataTransport`` and ``ControlTransport`` aliases: ``source/adios2/toolkit/sst/cp/cp_common.c``;
  an unknown data plane only warns ("Preferred DataPlane ... not found", ``dp/dp.c``) and another is
  used; an unknown control transport crashes the writer's Open (SIGSEGV, seen with 2.12.1).

:func:`value_problem` judges one value, :func:`nearest_key` finds the key a misspelling meant.
Pure tables and functions: no ADIOS2 import.
"""

from __future__ import annotations

import difflib
import re

#: SST parameter names (sst_data.h), in its order; SST matches them case-sensitively.
SST_KEYS = (
    "MarshalMethod", "verbose", "RegistrationMethod", "StepDistributionMode", "DataTransport", "WANDataTransport",
    "OpenTimeoutSecs", "RendezvousReaderCount", "QueueLimit", "ReserveQueueLimit", "QueueFullPolicy", "IsRowMajor",
    "FirstTimestepPrecious", "ControlTransport", "NetworkInterface", "ControlInterface", "DataInterface",
    "CPCommPattern", "CompressionMethod", "AlwaysProvideLatestTimestep", "SpeculativePreloadMode",
    "SpecAutoNodeThreshold", "ReaderShortCircuitReads", "StatsLevel", "UseOneTimeAttributes", "RemoteGroup",
    "ControlModule",
)

#: SST's own defaults (sst_data.h), for "missing but harmless" versus "missing and wrong".
SST_DEFAULTS = {"RendezvousReaderCount": "1", "QueueLimit": "0", "QueueFullPolicy": "Block", "OpenTimeoutSecs": "60"}

#: Enumerated values (SstParamParser.cpp), canonical spelling; SST compares them lower-cased.
ENUMS = {
    "MarshalMethod": ("BP5", "BP", "FFS"),
    "RegistrationMethod": ("File", "Screen"),  # "Cloud" throws "not yet implemented"
    "StepDistributionMode": ("AllToAll", "RoundRobin", "OnDemand"),
    "QueueFullPolicy": ("Block", "Discard"),
    "CPCommPattern": ("Min", "Peer"),
    "CompressionMethod": ("None", "ZFP"),
    "SpeculativePreloadMode": ("Off", "On", "Auto"),
}
BOOL_KEYS = ("FirstTimestepPrecious", "AlwaysProvideLatestTimestep", "ReaderShortCircuitReads", "UseOneTimeAttributes")
BOOL_VALUES = ("yes", "true", "on", "no", "false", "off")
INT_KEYS = ("verbose", "OpenTimeoutSecs", "RendezvousReaderCount", "QueueLimit", "ReserveQueueLimit",
            "SpecAutoNodeThreshold", "StatsLevel")
#: DataTransport spellings (cp_common.c) and the data plane each selects.
DATA_PLANES = {"wan": "evpath", "evpath": "evpath", "rdma": "rdma", "ib": "rdma", "fabric": "rdma", "ucx": "ucx",
               "mpi": "mpi", "daos": "daos"}
#: ControlTransport spellings (cp_common.c); any other value crashes the writer's Open.
CONTROL_TRANSPORTS = ("sockets", "tcp", "udp", "rudp", "scalable", "enet")
CONTROL_MODULES = ("select", "epoll")

_STOI = re.compile(r"\s*([+-]?\d+)")


def stoi(value):
    """What ``std::stoi`` reads from ``value`` (leading integer, rest ignored), or None where it throws."""
    m = _STOI.match(str(value))
    if not m or not -2**31 <= int(m.group(1)) < 2**31:
        return None
    return int(m.group(1))


def nearest_key(key, keys=SST_KEYS, cutoff=0.8):
    """The SST key ``key`` most likely meant (same letters in another case first, then :mod:`difflib`), or None."""
    lower = {k.lower(): k for k in keys}
    if key.lower() in lower:
        return lower[key.lower()]
    near = difflib.get_close_matches(key.lower(), list(lower), n=1, cutoff=cutoff)
    return lower[near[0]] if near else None


def _nearest_value(value, choices):
    v = value.strip().lower()
    for prefix in ("steps", "sst", "specpreload", "sstqueuefull", "sstmarshal", "sstcpcomm"):  # C enum names
        if v.startswith(prefix) and v[len(prefix):] in (c.lower() for c in choices):
            v = v[len(prefix):]
    near = difflib.get_close_matches(v, [c.lower() for c in choices], n=1, cutoff=0.6)
    return next((c for c in choices if near and c.lower() == near[0]), None)


def value_problem(key, value, *, data_planes=None):
    """What SST in ADIOS2 2.12.1 does with ``key=value``, when that is not simply "uses it".

    Parameters
    ----------
    key : str
        A canonical SST key (see :data:`SST_KEYS`).
    value : str
    data_planes : set of str, optional
        The data planes this ADIOS2 build has (``evpath``, ``mpi``, ``rdma``, ``ucx``); unknown if None.

    Returns
    -------
    problem : (str, str) or None
        ``(severity, message)``: ``"error"`` where the writer's Open throws or crashes, ``"warning"``
        where SST goes on with something else than asked.
    """
    v = str(value).strip()
    low = v.lower()
    if key in ENUMS:
        choices = ENUMS[key]
        if low in (c.lower() for c in choices):
            return None
        if key == "RegistrationMethod" and low == "cloud":
            return "error", "'Cloud' is not implemented in SST: Open throws; use File or Screen"
        near = _nearest_value(v, choices)
        hint = f"; did you mean {near!r}?" if near else ""
        return "error", (f"{v!r} is not an SST {key} (ADIOS2 2.12.1 accepts {', '.join(choices)}, in any case): "
                         f"the engine's Open throws \"Unknown Sst {key} parameter\"{hint}")
    if key in BOOL_KEYS:
        if low in BOOL_VALUES:
            return None
        return "error", (f"{v!r} is not an SST boolean (true/false, yes/no, on/off, in any case; not 1/0): the "
                         "engine's Open throws \"Unknown Sst Boolean parameter\"")
    if key in INT_KEYS:
        n = stoi(v)
        if n is None:
            return "error", f"{v!r} is not an integer: the engine's Open throws (std::stoi)"
        try:
            exact = float(v) == n
        except ValueError:
            exact = False
        if not exact:
            return "warning", f"SST reads {v!r} as {n} (the text after the leading integer is ignored); write {n}"
        return None
    if key == "IsRowMajor":
        return "warning", "not a setting: SST takes it from the IO's array order and ignores this value"
    if key == "ControlTransport" and low not in CONTROL_TRANSPORTS:
        return "error", (f"{v!r} is not an SST control transport ({', '.join(CONTROL_TRANSPORTS)}): ADIOS2 2.12.1 "
                         "crashes in the engine's Open (SIGSEGV); use sockets")
    if key == "ControlModule" and low not in CONTROL_MODULES:
        return "warning", f"{v!r} is not an SST control module (select, epoll): SST warns and uses its default"
    if key == "DataTransport":
        plane = DATA_PLANES.get(low)
        if plane is None:
            return "warning", (f"{v!r} is not an SST data plane (WAN, RDMA, UCX, MPI; aliases evpath, ib, fabric): "
                               "SST warns \"Preferred DataPlane not found\" and picks another; write WAN")
        if data_planes is not None and plane not in data_planes:
            have = ", ".join(sorted("WAN" if p == "evpath" else p.upper() for p in data_planes))
            return "warning", (f"{v}: this ADIOS2 build has no {plane.upper()} data plane (it has {have}): SST warns "
                               "\"Preferred DataPlane not found\" and picks another; write WAN")
    return None


def key_problem(key, engine):
    """A finding for a key that is not an exact SST key, on an SST engine or another one.

    Parameters
    ----------
    key : str
        A parameter key as written.
    engine : str
        The IO's engine type (any case); ``""`` for ADIOS2's default (BP5).

    Returns
    -------
    problem : (str, str, str or None) or None
        ``(severity, message, canonical)``: ``canonical`` is the SST key meant (None for a key SST does
        not know). None when ``key`` is an exact SST key, a key of the file engines, not near an SST key
        on a file engine, or set on an engine that is neither SST nor a file engine.
    """
    if key in SST_KEYS:
        return None
    sst = engine.lower() == "sst"
    if not sst and (key.lower() in BP_KEYS or engine.lower() not in FILE_ENGINES):
        return None  # a key of the file engines (BP4/BP5 match keys in any case), or another engine's business
    canon = nearest_key(key)
    if canon is None:
        return ("warning", "not an SST parameter; SST ignores it", None) if sst else None
    if canon.lower() == key.lower():
        if sst:
            return "error", f"SST matches keys case-sensitively: {key!r} is ignored; write {canon!r}", canon
        return None  # BP4/BP5 lower-case keys: valid there; the note for SST keys says the spelling
    where = "SST ignores it" if sst else f"{engine or 'BP5'} ignores it, and so would SST"
    return "error", f"not an SST parameter ({where}); did you mean {canon!r}?", canon


#: Engine types that write files (``""``: no <engine>, ADIOS2's default BP5); other engines (DataMan, SSC,
#: Inline, HDF5, ...) have keys of their own, some shared with SST: not judged here.
FILE_ENGINES = ("", "bp", "bp3", "bp4", "bp5", "bpfile", "file", "filestream")

#: Keys BP4/BP5 read (lower-cased, as they match them): BP5_FOREACH_PARAMETER_TYPE_4ARGS in
#: ``source/adios2/engine/bp5/BP5Engine.h`` and ``BPBase::Init`` in ``source/adios2/toolkit/format/bp/BPBase.cpp``.
BP_KEYS = frozenset(k.lower() for k in (
    "OpenTimeoutSecs", "BeginStepPollingFrequencySecs", "StreamReader", "BurstBufferDrain", "BurstBufferPath",
    "NodeLocal", "verbose", "NumAggregators", "AggregatorRatio", "NumSubFiles", "StripeSize", "DirectIO",
    "DirectIOAlignOffset", "DirectIOAlignBuffer", "AggregationType", "EnableWriterRerouting",
    "ReroutingThresholdFactor", "AsyncOpen", "AsyncWrite", "GrowthFactor", "InitialBufferSize", "MinDeferredSize",
    "BufferChunkSize", "MaxShmSize", "BufferVType", "AppendAfterSteps", "SelectSteps", "ReaderShortCircuitReads",
    "StatsLevel", "Threads", "MetadataThreads", "UseOneTimeAttributes", "UseSelectiveMetadataAggregation",
    "OneLevelGatherRanksLimit", "FlattenSteps", "IgnoreFlattenSteps", "RemoteDataPath", "RemoteHost", "UUID",
    "TarInfo", "MaxOpenFilesAtOnce", "DataFileTransport", "S3Endpoint", "S3Bucket", "S3AccessKeyID", "S3SecretKey",
    "S3SessionToken", "S3ObjectMode", "S3DirectUploadThreshold", "Profile", "ProfileUnits", "BufferGrowthFactor",
    "MaxBufferSize", "StatsBlockSize", "CollectiveMetadata", "FlushStepsCount", "SubStreams", "node-local",
    "BurstBufferVerbose",
))


def note_for_sst(key, value, engine, *, data_planes=None, fixes_only=False):
    """The note for an SST key set on a non-SST engine ("for the day this IO becomes SST"), or None.

    Parameters
    ----------
    key, value : str
        As written (any case: BP4/BP5 lower-case keys, SST does not).
    engine : str
        The IO's engine type as written (``""``: ADIOS2's default, BP5).
    data_planes : set of str, optional
        See :func:`value_problem`.
    fixes_only : bool
        Only where the key or value would need a change then (not "it applies then").

    Returns
    -------
    note : str or None
        None for a key that is not an SST key in any case, or one BP4/BP5 read too (``OpenTimeoutSecs``)
        that SST would take as it is.
    """
    canon = {k.lower(): k for k in SST_KEYS}.get(key.lower())
    if canon is None or engine.lower() not in FILE_ENGINES:
        return None
    parts = [f"SST matches keys case-sensitively: write {canon!r}"] if canon != key else []
    problem = value_problem(canon, value, data_planes=data_planes)
    if problem:
        parts.append(("SST's Open would fail: " if problem[0] == "error" else "") + problem[1])
    shared = canon.lower() in BP_KEYS
    if (shared or fixes_only) and not parts:
        return None
    head = f"{engine or 'BP5'} reads it too" if shared else f"an SST parameter, ignored by {engine or 'BP5'}"
    return f"{head}; for the day this IO becomes SST: " + ("; ".join(parts) if parts else "SST uses it as written")

"""Reading an unchanged ADIOS2 code's stream on the staging ranks (in-transit mode).

:class:`PlainStreamReader` is one reader cohort (:class:`~.stream._CohortReader`) over the staging
communicator: raw arrays only, blocks found with ``BlocksInfo`` and known by their writer
(:class:`~.plain_layout.BlockLayout`), each checked against its writer's min/max
(:mod:`.block_check`) before it is trusted.
"""

from __future__ import annotations

import logging

import numpy as np

from .adios import bindings
from .block import ReceivedBlock
from .errors import ConfigError
from .plain_discovery import CODE_STEP_NAMES, plain_discovery
from .plain_layout import BlockLayout
from .stream import _check, _CohortReader
from .wire import assign_blocks, make_report

logger = logging.getLogger(__name__)


def _numpy_type(adios_type, var):
    """numpy dtype of an ADIOS2 type name (``float``, ``double``, ``int32_t``, ``uint8_t``, ...)."""
    name = {"float": "float32", "double": "float64"}.get(adios_type, adios_type.removesuffix("_t"))
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "fiu":
        raise ConfigError(f"staging.variables: {var} has ADIOS2 type {adios_type}; only numeric arrays can be learned")
    return dtype


class PlainStreamReader(_CohortReader):
    """An unchanged ADIOS2 code's stream (in-transit mode): raw arrays only, one reader cohort.

    The simulation writes its variables with the plain ADIOS2 API (global arrays with
    ``shape/start/count``, or local arrays written as blocks) and knows nothing of stagelearn.
    Every staging rank reads the blocks :func:`~stagelearn.staging.wire.assign_blocks` gives it,
    found with ``BlocksInfo``; each block is known by its writer (:class:`~.plain_layout.BlockLayout`:
    a stable block number, the ``rank`` of its report row), and the blocks of a local array are
    laid side by side along the first axis in writer order, a writer that skipped a step keeping
    its slot. The report row of each block holds its step (the writer's ``CurrentStep``), block
    number and size; staging fills in the rest when it encodes the block. The code's own step
    variable (a scalar named in ``CODE_STEP_NAMES``) is kept as ``code_step``. Arrays that are
    not floating point are skipped, with the reason in ``skipped`` (logged once). Every block is
    checked against its writer's ``BlocksInfo`` min/max (:mod:`.block_check`).

    Parameters
    ----------
    config_file, io_name, stream_path : str
    comm : mpi4py.MPI.Comm
        Staging ranks (collective calls).
    known_ios : collection of str
    variables : list of str or None
        Variables to read; None reads every floating-point array of more than one value.
    open_timeout_s, step_timeout_s : float
    """

    peer = "the simulation (unchanged ADIOS2 code)"

    def __init__(self, config_file, io_name, stream_path, comm, known_ios, *, variables=None, **kwargs):
        super().__init__(config_file, io_name, stream_path, comm, known_ios, **kwargs)
        self.variables = variables
        self.skipped = {}  # variable -> why it is not stored (logged once)
        self.current_step = None  # the writer's step (ADIOS2 CurrentStep) of the last step read
        self.code_step = None  # the code's own step variable of that step, when it writes one
        self.step_variables = []  # the arrays on the stream in that step (the same on every rank)
        self.layout = BlockLayout()  # blocks known by their writer, not their position

    def _names(self, available):
        """The arrays read this step; a listed variable not on this step is only skipped for this step
        (it may appear later); integer arrays are skipped with the reason (``skipped``)."""
        names, skipped = plain_discovery(available, self.variables)
        for name, why in skipped.items():
            if name not in self.skipped:
                self.skipped[name] = why
                if self.comm.Get_rank() == 0:
                    logger.warning("in transit: %s is skipped: %s", name, why)
        return names

    def _code_step(self, available):
        """The code's own step variable of this step (a scalar in ``CODE_STEP_NAMES``), or None."""
        for name in CODE_STEP_NAMES:
            info = available.get(name)
            if info is not None and info.get("SingleValue") == "true" and info.get("Type") != "string":
                v = self.io.InquireVariable(name)
                out = np.zeros(1, dtype=_numpy_type(v.Type(), name))
                self.engine.Get(v, out, bindings().Mode.Sync)
                return out[0].item()
        return None

    def read_step(self):
        """This rank's blocks of the next step, or None at the end of the stream (collective)."""
        b = bindings()
        if not self._begin():
            return None
        step = self.engine.CurrentStep()
        available = self.io.AvailableVariables()
        self.current_step, self.code_step = int(step), self._code_step(available)
        self.step_variables = self._names(available)
        out, pending = [], []
        for var in self.step_variables:
            v = self.io.InquireVariable(var)
            infos = self.engine.BlocksInfo(var, step)
            shape, placed = self.layout.place(var, step, tuple(int(x) for x in v.Shape()), infos)
            self.n_producers = self.layout.n_blocks
            for i in assign_blocks(len(infos), self.comm.Get_size(), self.comm.Get_rank()):
                bid, (number, start, count) = int(infos[i]["BlockID"]), placed[i]
                data = np.empty(count, dtype=_numpy_type(v.Type(), var))
                v.SetBlockSelection(bid)
                self.engine.Get(v, data, b.Mode.Deferred)
                blk = ReceivedBlock(var=var, rank=number, report=make_report(step=step, rank=number), shape=shape,
                                    start=start, count=count)
                blk.raw = data
                pending.append((blk, infos[i]))
                out.append(blk)
        with self._reading():
            if pending:
                self.engine.PerformGets()
        if not self._end_step():
            return None
        for blk, info in pending:
            _check(blk, info)  # against the writer's own min/max, in the writer's dtype
            if blk.raw.dtype != np.float32:  # reports measure against the writer's own values
                blk.source = blk.raw
            blk.raw = blk.raw.astype(np.float32, copy=False)  # learned and coded as float32, as producers send
        return out

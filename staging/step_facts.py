"""What staging records about a step beside its blocks: the writer's step, block counts, corrupt blocks.

Small collective helpers of :class:`~stagelearn.staging.service.StagingService` (every function
taking ``comm`` is collective over it): the writer's step of a step even when no rank got a block
(:func:`writer_step`), the blocks of each variable over all ranks (:func:`block_counts`, stored in
``compressed.bp`` as ``summary/blocks/<var>`` so that readers find each variable's steps), the
blocks flagged corrupt (:func:`gather_corrupt`), the per-step items rank 0 stores
(:func:`step_items`) and the variables not stored, with the reason (:func:`skipped_variables`).
"""

from __future__ import annotations

import json
import logging

import numpy as np

from .code_attributes import stream_attributes
from .mpiutil import allreduce_flag, gather_bytes

logger = logging.getLogger(__name__)


def sum_over_ranks(comm, values):
    """``values`` (list of int) summed element-wise over ``comm`` (one Allreduce)."""
    from mpi4py import MPI  # mpi4py only where a communicator is used

    out = np.array(values, dtype=np.int64)
    if out.size:
        comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
    return [int(n) for n in out]


def writer_step(comm, reader, blocks):
    """The writer's step, the same on every rank: the blocks' step, or the stream's ``CurrentStep``
    (``reader.current_step``, in transit) when no rank got a block (a step holding none of the arrays)."""
    step = max((b.step for b in blocks), default=-1)
    current = getattr(reader, "current_step", None)
    if current is not None:
        step = max(step, int(current))
    return allreduce_flag(comm, step)


def block_counts(comm, blocks, variables):
    """Blocks of each of ``variables`` in this step, summed over ranks (every rank the same)."""
    return dict(zip(variables, sum_over_ranks(comm, [sum(1 for b in blocks if b.var == v) for v in variables])))


def gather_corrupt(comm, blocks):
    """Rank 0: ``[{step, variable, rank, reason}]`` of the blocks any rank flagged corrupt; None elsewhere."""
    mine = [{"step": b.step, "variable": b.var, "rank": int(b.rank), "reason": b.corrupt} for b in blocks if b.corrupt]
    parts = gather_bytes(comm, json.dumps(mine).encode())
    return [c for p in parts for c in json.loads(p.decode())] if parts is not None else None


class StepItems(dict):
    """Rank 0's per-step summary items (name -> array), with the code's stream attributes beside them.

    Attributes
    ----------
    attributes : dict or None
        In transit, the code's ADIOS2 attributes as of the step
        (:func:`~.code_attributes.stream_attributes`); the output writer stores the new or
        changed ones. None for other streams.
    """

    attributes = None


def step_items(counts, reader):
    """Rank 0's per-step items of ``compressed.bp``: ``blocks/<var>`` (0 for a step without data),
    when the code writes one its own step variable ``code_step``, and in transit the code's stream
    attributes (:class:`StepItems`)."""
    items = StepItems((f"blocks/{v}", np.array([n], dtype=np.int64)) for v, n in counts.items())
    items.attributes = stream_attributes(reader)
    code_step = getattr(reader, "code_step", None)
    if code_step is not None:
        items["code_step"] = np.array([code_step])
    return items


def skipped_variables(reader, variables, tile_shapes, listed):
    """Variables on the stream, or listed, that are not stored, with the reason (logged).

    Parameters
    ----------
    reader : stream reader
        Its ``skipped`` (in transit: integer and other non-float arrays), if any.
    variables : list of str or None
        The variables staging knows.
    tile_shapes : dict
        The variables that got a learner (held data).
    listed : list of str or None
        ``staging.variables``.
    """
    skipped = dict(getattr(reader, "skipped", None) or {})
    for v in variables or []:
        if v not in tile_shapes and v not in skipped:
            skipped[v] = "listed in staging.variables but never on the stream" if v in (listed or []) \
                else "never held data"
    for v, why in skipped.items():
        logger.warning("variable %s not stored: %s", v, why)
    return skipped

"""Where the blocks of an unchanged code's variable go, identified by their writer, never by position.

In transit (:class:`~stagelearn.staging.stream.PlainStreamReader`) each block of a step is known by
its ADIOS2 ``BlocksInfo`` entry. Its position in that list is not an identity: when one writer rank
skips a step, every later writer's block moves up one place. :class:`BlockLayout` gives each
``(WriterID, index among that writer's blocks)`` a stable block number (the report row's ``rank``,
the ledger's, the prediction chain's key) in the order first seen, and lays the blocks of a local
array (no global shape) side by side along the first axis in the order of those keys, keeping the
slot of a writer that skipped the step: its values are then missing from that step (``stagelearn
decode`` says the step is incomplete; ``--partial`` gives NaN there) instead of another writer's
values taking their place.
"""

from __future__ import annotations

from .adios import blocks_info_dims
from .errors import StagelearnError


class BlockLayout:
    """Stable block numbers and local-array placement of one stream's variables (no communication)."""

    def __init__(self):
        self._ids = {}  # var -> {(writer, j): block number}
        self._local = {}  # var -> {(writer, j): count} of a local array, every block seen so far

    @property
    def n_blocks(self):
        """Block numbers given so far, the most of any variable (the ledger's blocks per step)."""
        return max((len(ids) for ids in self._ids.values()), default=0) or None

    def place(self, var, step, shape, infos):
        """Number and place this step's blocks of ``var``.

        Parameters
        ----------
        var : str
        step : int
            For messages.
        shape : tuple of int
            The variable's global shape (``()`` for a local array).
        infos : list of dict
            ``Engine.BlocksInfo(var, step)``.

        Returns
        -------
        shape : tuple of int
            The global shape (a local array: its blocks side by side, every writer seen so far).
        blocks : list of (int, tuple, tuple)
            ``(block number, start, count)`` of each entry of ``infos``, in order.

        Raises
        ------
        StagelearnError
            When the blocks of a local array differ in their trailing dimensions.
        """
        keys, seen = [], {}
        for bi in infos:
            w = int(bi["WriterID"])
            keys.append((w, seen.get(w, 0)))
            seen[w] = seen.get(w, 0) + 1
        ids = self._ids.setdefault(var, {})
        for k in sorted(keys):
            ids.setdefault(k, len(ids))
        counts = [blocks_info_dims(bi["Count"]) for bi in infos]
        if shape:
            return tuple(shape), [(ids[k], blocks_info_dims(bi["Start"]), c) for k, bi, c in zip(keys, infos, counts)]
        layout = self._local.setdefault(var, {})
        layout.update(zip(keys, counts))
        if len({c[1:] for c in layout.values()}) > 1:
            raise StagelearnError(f"step {step}: local array {var} has blocks {sorted(layout.values())} with different "
                                  "trailing dimensions; they cannot be laid side by side (write it as a global array)")
        offsets, at = {}, 0
        for k in sorted(layout):
            offsets[k] = at
            at += layout[k][0]
        trailing = next(iter(layout.values()))[1:]
        return (at,) + trailing, [(ids[k], (offsets[k],) + (0,) * len(trailing), c) for k, c in zip(keys, counts)]

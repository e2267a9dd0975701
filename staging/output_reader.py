"""Reading the compressed output file (layout: :mod:`.output_format`): list steps, decode fields.

Random access (``ReadRandomAccess``) to a file written by
:class:`~stagelearn.staging.output_writer.CompressedOutputWriter` (staging's ``compressed.bp``)
or to a producer's fallback file. Block ``i`` of ``X/payload``, ``X/report`` and ``X/anomaly``
belong together; its producer is the ``rank`` column of its report row. ``X/qoi`` (moment side
information, a ``qoi:`` run) has blocks for the coded blocks only: :meth:`CompressedOutputReader.qoi_blobs`.

The file's steps, blocks, encoders, report rows and summary items are read by
:class:`~stagelearn.staging.output_index.OutputIndex` (the reader's base class); per-tile latent
codes are :func:`~stagelearn.staging.output_latents.tile_latents` (importable from here as before).
This module decodes: temporal prediction chains, through a byte-bounded cache of decoded blocks.
"""

from __future__ import annotations

import collections
import logging

import numpy as np

from ..analytics.anomaly import parse_map
from ..analytics.codec import decode_block
from ..analytics.payload import parse_payload
from ..analytics.qoi_policy import restore_block
from ..analytics.qoi_side import SideInfoError
from ..analytics.stream_payload import is_stream_payload, parse_stream_payload
from ..analytics.stream_step import decode_stream_block
from ..analytics.tiling import tile_grid
from .errors import StagelearnError, UsageError
from .output_index import OutputIndex
from .output_latents import tile_latents
from .wire import anomaly_name, payload_name, qoi_blob, qoi_name, report_get

__all__ = ["CompressedOutputReader", "DecodedBlockCache", "tile_latents"]

logger = logging.getLogger(__name__)


class DecodedBlockCache:
    """LRU cache of decoded blocks, bounded in bytes.

    Parameters
    ----------
    max_bytes : int
        Bytes of decoded blocks kept (at least one block is always kept).
    """

    def __init__(self, max_bytes):
        self.max_bytes = int(max_bytes)
        self._items = collections.OrderedDict()
        self._bytes = 0

    def get(self, key):
        """The cached ``(block, header)`` of ``key`` (marked recently used), or None."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key, value):
        """Keep ``value = (block, header)``; evict the least recently used beyond ``max_bytes``."""
        self._items[key] = value
        self._bytes += value[0].nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, (old, _) = self._items.popitem(last=False)
            self._bytes -= old.nbytes


class CompressedOutputReader(OutputIndex):
    """Random access to a compressed output file: list steps, decode fields.

    The file's items (:attr:`steps`, :meth:`fields`, :meth:`field_steps`, :meth:`encoder`,
    :meth:`reports`, :meth:`summary`, :meth:`attributes`, :meth:`close`) are read as
    :class:`~stagelearn.staging.output_index.OutputIndex` reads them.

    Parameters
    ----------
    path : str
        The ``.bp`` directory written by :class:`CompressedOutputWriter`.

    Raises
    ------
    StagelearnError
        If the file cannot be opened or is not a stagelearn output.
    """

    def __init__(self, path):
        super().__init__(path)
        self._cache = DecodedBlockCache(self.default_cache_bytes)
        self._qoi_missing = set()

    #: Bytes of decoded blocks kept for prediction chains and repeated reads, by default.
    default_cache_bytes = 256 * 2**20

    @property
    def cache_bytes(self):
        """Bytes of decoded blocks kept for prediction chains and repeated reads (settable)."""
        return self._cache.max_bytes

    @cache_bytes.setter
    def cache_bytes(self, value):
        self._cache.max_bytes = int(value)

    def qoi_blobs(self, step, var):
        """Moment side information of each block of ``var`` at ``step``: list of bytes or None (one per block).

        ``X/qoi`` holds one block per block with side information (report ``qoi_bytes > 0``), in
        block order, and exists only in the steps that have some; its random-access step is counted
        over those steps.
        """
        rows = self.reports(step, var)
        has = [report_get(r, "qoi_bytes") > 0 for r in rows]
        if not any(has):
            return [None] * len(rows)
        if qoi_name(var) not in self.variables:
            if var not in self._qoi_missing:
                self._qoi_missing.add(var)
                logger.warning("%s: blocks of %s were coded with moment side information that the file does not hold "
                               "(a producer's fallback file?): their moments are not restored", self.path, var)
            return [None] * len(rows)
        t = sum(1 for s in self.field_steps(var) if s < int(step)
                and any(report_get(r, "qoi_bytes") > 0 for r in self.reports(s, var)))
        blobs, k = [], 0
        for h in has:
            blobs.append(qoi_blob(self._get_block(qoi_name(var), t, k, np.uint32)) if h else None)
            k += h
        return blobs

    def anomaly_map(self, step, var):
        """Anomaly map rows of ``var`` at ``step``: ndarray of shape (n, 2 + ndim + 2).

        Columns: producer block, tile index, tile origin (ndim global indices), score, status
        (1 flagged, 2 persistent, 0 listed only). Empty before anomaly scoring starts.
        """
        t = self._var_step(step, var)
        out = []
        for i, _ in enumerate(self.reports(step, var)):
            rows = parse_map(self._get_block(anomaly_name(var), t, i, np.float32))
            if not len(rows):
                continue
            header, _ = parse_payload(self._get_block(payload_name(var), t, i, np.uint8))
            grid = tile_grid(header["block_shape"], header["tile_shape"])
            for tile, score, flagged, persistent in rows:
                pos = np.unravel_index(int(tile), grid)
                origin = [s0 + p * ts for s0, p, ts in zip(header["start"], pos, header["tile_shape"])]
                out.append([i, tile, *origin, score, 1 if flagged else (2 if persistent else 0)])
        return np.array(out, dtype=np.float64)

    def latents(self, step, var):
        """Per-tile latent codes of ``var`` at ``step``: ``(origin, latents, version)`` (see :func:`tile_latents`)."""
        return tile_latents(self, step, var)

    def read(self, step, var, *, partial=False, correct=True):
        """Reconstruct the global field ``var`` at producer step ``step``.

        Steps coded with temporal prediction are decoded from the last step coded on its own.

        Parameters
        ----------
        step : int
        var : str
        partial : bool, default=False
            Return the blocks the file has, NaN elsewhere (a producer's fallback file holds its own
            blocks only), instead of raising for an incomplete step.
        correct : bool, default=True
            Blocks coded with moment side information (a ``qoi:`` run) are corrected to the moments
            it carries (:func:`~stagelearn.analytics.qoi_policy.restore_block`); False gives the
            codec's reconstruction as it is.

        Returns
        -------
        field : ndarray, float32, of the variable's global shape

        Raises
        ------
        StagelearnError
            If the step or variable is not in the file, a block is missing, or a block's moment side
            information is truncated or corrupt.
        """
        if var not in self.fields():
            raise UsageError(f"{self.path}: no variable {var!r} (fields: {self.fields()})")
        out = None
        blobs = self.qoi_blobs(step, var) if correct else [None] * len(self.reports(step, var))
        for i, row in enumerate(self.reports(step, var)):
            block, header = self.decoded_block(step, var, i)
            if blobs[i] is not None:  # the moments restored (decoded_block stays the codec's: chains need it)
                policy = self.encoder(int(report_get(row, "encoder_version"))).qoi
                try:
                    block = restore_block(policy, block, blobs[i], header["start"], header["count"])
                except SideInfoError as e:
                    raise StagelearnError(f"{self.path}: step {step} of {var}, block {i}: the moment side information "
                                          f"cannot be used ({e}); read with correct=False for the codec's own "
                                          "reconstruction") from e
            if out is None:
                out = np.zeros(header["shape"], dtype=np.result_type(np.float32, block.dtype))  # float64 stays
                covered = np.zeros(header["shape"], dtype=bool)
            sel = tuple(slice(s, s + c) for s, c in zip(header["start"], header["count"]))
            out[sel] = block
            covered[sel] = True
        if out is None:
            raise StagelearnError(f"{self.path}: step {step} has no data for {var}")
        if partial:
            out[~covered] = np.nan
        elif not covered.all():
            raise StagelearnError(f"{self.path}: step {step} of {var} is incomplete: {int((~covered).sum())} of "
                                  f"{covered.size} values have no block (a producer's data for this step is missing; "
                                  "`stagelearn decode --partial` decodes what is there, NaN elsewhere)")
        return out

    def decoded_block(self, step, var, i):
        """Block ``i`` of ``var`` at ``step``: ``(block, header)``, block a float32 ndarray.

        A payload predicted from the previous step needs that step's block first: the chain is
        followed back (header ``ref_step``, same producer rank) to a cached block or a step coded on
        its own, then decoded forward. Decoded blocks are cached (LRU, :attr:`cache_bytes`).
        """
        chain, key, prev = [], (int(step), var, int(i)), None
        while True:
            cached = self._cache.get(key)
            if cached is not None:
                if not chain:
                    return cached
                prev = cached[0]
                break
            row = self.reports(key[0], var)[key[2]]
            buf = self._get_block(payload_name(var), self._var_step(key[0], var), key[2], np.uint8)
            header = parse_stream_payload(buf)[0] if is_stream_payload(buf) else parse_payload(buf)[0]
            chain.append((key, row, buf))
            if not (header.get("n_inter") and header.get("ref_step") is not None):
                break
            key = (int(header["ref_step"]), var, self._block_of(int(header["ref_step"]), var, row, key[0]))
        for key, row, buf in reversed(chain):
            if is_stream_payload(buf):  # the stream codec: the payload is all it needs besides prev
                block, header = decode_stream_block(buf, prev)
            else:
                block, header, _ = decode_block(buf, self._codec(var, int(report_get(row, "encoder_version"))),
                                                prev=prev)
            self._cache.put(key, (block, header))
            prev = block
        return block, header

    def _block_of(self, ref_step, var, row, step):
        """Index of the block of ``row``'s producer rank at ``ref_step`` (from the reports, not the order)."""
        rank = int(report_get(row, "rank"))
        ranks = [int(report_get(r, "rank")) for r in self.reports(ref_step, var)]
        if rank not in ranks:
            raise StagelearnError(f"{self.path}: step {step} of {var} predicts from step {ref_step}, which has no "
                                  f"block of producer {rank}")
        return ranks.index(rank)

    def _codec(self, var, version):
        if version <= 0:
            return None  # lossless raw payload
        return self.encoder(version).variables[var].codec()

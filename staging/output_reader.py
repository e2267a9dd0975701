"""Reading the compressed output file (layout: :mod:`.output_format`): list steps, decode fields.

Random access (``ReadRandomAccess``) to a file written by
:class:`~stagelearn.staging.output_writer.CompressedOutputWriter` (staging's ``compressed.bp``)
or to a producer's fallback file. Block ``i`` of ``X/payload``, ``X/report`` and ``X/anomaly``
belong together; its producer is the ``rank`` column of its report row. ``X/qoi`` (moment side
information, a ``qoi:`` run) has blocks for the coded blocks only: :meth:`CompressedOutputReader.qoi_blobs`.
"""

from __future__ import annotations

import collections
import logging

import numpy as np

from ..analytics.anomaly import parse_map
from ..analytics.codec import decode_block
from ..analytics.encoder import Encoder, spec_from_bytes
from ..analytics.payload import parse_payload
from ..analytics.qoi_policy import restore_block
from ..analytics.stream_payload import is_stream_payload, parse_stream_payload
from ..analytics.stream_step import decode_stream_block
from ..analytics.tiling import tile_grid, to_tiles
from .adios import bindings
from .code_attributes import read_attributes
from .errors import StagelearnError, UsageError
from .output_format import CODE_ATTR_PREFIX, STEP_VAR, encoder_prefix, summary_name, summary_step_name
from .wire import (REPORT_FIELDS, anomaly_name, payload_name, qoi_blob, qoi_name, report_get, report_name,
                   report_row)

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


class CompressedOutputReader:
    """Random access to a compressed output file: list steps, decode fields.

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
        b = bindings()
        self.adios = b.ADIOS()
        self.io = self.adios.DeclareIO("stagelearn-decode")
        self.io.SetEngine("BP5")
        try:
            self.engine = self.io.Open(str(path), b.Mode.ReadRandomAccess)
        except Exception as exc:  # ADIOS2 raises plain runtime errors here
            raise StagelearnError(f"{path}: cannot open as an ADIOS2 BP file ({exc})") from None
        self.path = str(path)
        self.variables = self.io.AvailableVariables()
        self._encoders, self._cache, self._reports, self._field_steps = {}, DecodedBlockCache(self.default_cache_bytes), {}, {}
        self._qoi_missing = set()
        if not self.variables:  # staging stored no step (the code died before its first, or never came)
            self.steps = []
            return
        if STEP_VAR not in self.variables:
            raise StagelearnError(f"{path}: no '{STEP_VAR}' variable; not a stagelearn compressed output")
        var = self.io.InquireVariable(STEP_VAR)
        n = int(var.Steps())
        var.SetStepSelection([0, n])
        steps = np.empty(n, dtype=np.int64)
        self.engine.Get(var, steps, b.Mode.Sync)
        self.steps = [int(s) for s in steps]

    #: Bytes of decoded blocks kept for prediction chains and repeated reads, by default.
    default_cache_bytes = 256 * 2**20

    @property
    def cache_bytes(self):
        """Bytes of decoded blocks kept for prediction chains and repeated reads (settable)."""
        return self._cache.max_bytes

    @cache_bytes.setter
    def cache_bytes(self, value):
        self._cache.max_bytes = int(value)

    def fields(self):
        """Field variable names in the file."""
        return sorted(n[: -len("/report")] for n in self.variables if n.endswith("/report") and "/" not in n[: -len("/report")])

    def _bp_step(self, step):
        try:
            return self.steps.index(int(step))
        except ValueError:
            held = f"steps {self.steps[0]}..{self.steps[-1]}" if self.steps else "no steps: staging stored none"
            raise UsageError(f"{self.path}: step {step} not in the file ({held})") from None

    def field_steps(self, var):
        """The steps of the file holding blocks of ``var`` (all steps in files written before staging
        stored the per-step block counts ``summary/blocks/<var>``)."""
        if var not in self._field_steps:
            counts = self.summary(f"blocks/{var}")
            self._field_steps[var] = [s for s in self.steps if s in counts and int(counts[s][0]) > 0] if counts \
                else list(self.steps)
        return self._field_steps[var]

    def _var_step(self, step, var):
        """Index of ``step`` among the steps that hold ``var`` (ADIOS2 random access counts only those)."""
        self._bp_step(step)
        try:
            return self.field_steps(var).index(int(step))
        except ValueError:
            raise StagelearnError(f"{self.path}: step {step} has no data for {var} (the writer did not put it "
                                  "in that step; staging_summary.json lists it under steps_without_data)") from None

    def _select_step(self, var, name, bp_step):
        # Random-access SetStepSelection counts only the steps where the variable exists:
        # payloads and reports exist in every step, each encoder array in exactly one.
        var.SetStepSelection([0 if name.startswith("encoder/") else bp_step, 1])

    def _get_global(self, name, bp_step):
        b = bindings()
        var = self.io.InquireVariable(name)
        shape = [int(x) for x in var.Shape()]
        self._select_step(var, name, bp_step)
        var.SetSelection([[0] * len(shape), shape])
        out = np.empty(shape, dtype=np.float32 if var.Type() == "float" else np.uint8)
        self.engine.Get(var, out, b.Mode.Sync)
        return out

    def encoder(self, version):
        """The :class:`Encoder` of ``version`` stored in the file (validated)."""
        version = int(version)
        if version not in self._encoders:
            prefix = encoder_prefix(version)
            spec_name = f"{prefix}/spec"
            if spec_name not in self.variables:
                raise StagelearnError(f"{self.path}: encoder version {version} is not stored in the file")
            spec = spec_from_bytes(self._get_global(spec_name, 0))
            arrays = {n[len(prefix) + 1:]: self._get_global(n, 0)
                      for n in self.variables if n.startswith(prefix + "/") and n != spec_name}
            self._encoders[version] = Encoder.from_arrays(spec, arrays)
        return self._encoders[version]

    def reports(self, step, var):
        """Report rows of ``var`` at ``step``: ndarray of shape (n_blocks, len(REPORT_FIELDS))."""
        key = (int(step), var)
        if key not in self._reports:
            self._reports[key] = self._read_reports(step, var)
        return self._reports[key]

    def _read_reports(self, step, var):
        t = self._var_step(step, var)
        rows = [report_row(self._get_block(report_name(var), t, int(bi["BlockID"]), np.float64))
                for bi in self.engine.BlocksInfo(report_name(var), t)]  # rows of older files: new fields 0
        return np.array(rows).reshape(-1, len(REPORT_FIELDS))

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

    def _get_block(self, name, bp_step, i, dtype):
        """Block ``i`` of the local array ``name`` at file step ``bp_step`` (1-D ndarray of ``dtype``)."""
        var = self.io.InquireVariable(name)
        self._select_step(var, name, bp_step)
        var.SetBlockSelection(int(i))
        out = np.empty(int(var.SelectionSize()), dtype=dtype)
        self.engine.Get(var, out, bindings().Mode.Sync)
        return out

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
            If the step or variable is not in the file, or a block is missing.
        """
        if var not in self.fields():
            raise UsageError(f"{self.path}: no variable {var!r} (fields: {self.fields()})")
        out = None
        blobs = self.qoi_blobs(step, var) if correct else [None] * len(self.reports(step, var))
        for i, row in enumerate(self.reports(step, var)):
            block, header = self.decoded_block(step, var, i)
            if blobs[i] is not None:  # the moments restored (decoded_block stays the codec's: chains need it)
                policy = self.encoder(int(report_get(row, "encoder_version"))).qoi
                block = restore_block(policy, block, blobs[i], header["start"], header["count"])
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

    def summary(self, name):
        """The per-step summary item ``name``: dict of producer step to 1-D ndarray (empty if never written)."""
        b = bindings()
        values_name = summary_name(name)
        if values_name not in self.variables:
            return {}
        steps, values = self.io.InquireVariable(summary_step_name(name)), self.io.InquireVariable(values_name)
        dtype = {"double": np.float64, "float": np.float32}.get(values.Type(), np.int64)
        out = {}
        for k in range(int(steps.Steps())):  # random access counts the steps where the item exists
            step = np.empty(1, dtype=np.int64)
            steps.SetStepSelection([k, 1])
            self.engine.Get(steps, step, b.Mode.Sync)
            n = int(self.engine.BlocksInfo(values_name, k)[0]["Count"])
            values.SetStepSelection([k, 1])
            values.SetSelection([[0], [n]])
            out[int(step[0])] = np.empty(n, dtype=dtype)
            self.engine.Get(values, out[int(step[0])], b.Mode.Sync)
        return out

    def attributes(self):
        """The code's own ADIOS2 stream attributes carried into the file in transit (``code/<name>``).

        Returns
        -------
        dict of str to value
            The code's names (``title``, ``T/unit``) -> ``str``, ``list of str``, a numpy scalar or
            a 1-D ndarray, as of the last step that carried them (see :mod:`.code_attributes`);
            empty for files of runs in situ or whose code defines none.
        """
        return read_attributes(self.io, CODE_ATTR_PREFIX)

    def close(self):
        """Close the file."""
        self.engine.Close()


def tile_latents(reader, step, var):
    """Per-tile latent codes of ``var`` at ``step`` in ``reader``'s file (features for clustering regimes).

    PCA: each decoded tile's projection on the encoder's basis (coded tiles without temporal
    prediction: their dequantized coefficients, up to edge padding); autoencoder: the latent
    code of the decoded tile (computed here: tiles predicted from the previous step carry none
    on the wire). Steps before the first encoder have no latents. Latents of different encoder
    versions live in different bases: compare them within one version.

    Parameters
    ----------
    reader : CompressedOutputReader
    step : int
    var : str

    Returns
    -------
    origin : ndarray of shape (n_tiles, ndim), int64
        Global index of each tile's first cell.
    latents : ndarray of shape (n_tiles, n_components), float32
    version : ndarray of shape (n_tiles,), int64
        Encoder version the codes belong to.

    Raises
    ------
    StagelearnError
        If the step was sent before any encoder.
    """
    origins, codes, versions = [], [], []
    for i, row in enumerate(reader.reports(step, var)):
        version = int(report_get(row, "encoder_version"))
        if version == 0:
            continue
        block, header = reader.decoded_block(step, var, i)
        codec = reader.encoder(version).variables[var].codec()
        tiles = to_tiles(block, header["tile_shape"])
        if codec.kind == "pca":
            coef = codec.coefficients(tiles)
        else:
            q, scales = codec.model.encode_latents(tiles)
            coef = q * scales[:, None]
        grid = tile_grid(header["block_shape"], header["tile_shape"])
        pos = np.stack(np.unravel_index(np.arange(tiles.shape[0]), grid), axis=1)
        origins.append(np.asarray(header["start"]) + pos * np.asarray(header["tile_shape"]))
        codes.append(coef)
        versions.append(np.full(tiles.shape[0], version))
    if not codes:
        raise StagelearnError(f"{reader.path}: step {step} of {var} was sent before any encoder: no latents")
    return np.concatenate(origins).astype(np.int64), np.concatenate(codes).astype(np.float32), np.concatenate(versions)

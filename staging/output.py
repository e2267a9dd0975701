"""The compressed output file (BP5) written by staging, and decoding fields back from it.

Per output step the file holds ``step`` (int64) and, for each field ``X``, one block per
producer rank in ``X/payload`` (uint8 local arrays: transform-coded payloads, or lossless
``kind: raw`` payloads for steps sent before any encoder), ``X/report`` (float64 local arrays,
same order) and ``X/anomaly`` (the block's anomaly map, ``[n, (tile, score, flagged,
persistent) * n]``; flagged tiles are raw, hence exact, in the payload). Both are written every step, so block ``i`` of step ``t`` is addressed directly.
Each encoder version ``k`` is stored once, in the step it was published, as
``encoder/v<k>/spec`` (uint8 JSON) and its named arrays ``encoder/v<k>/<X>/mean_``,
``encoder/v<k>/<X>/components_`` (PCA) or ``encoder/v<k>/<X>/ae/<parameter>`` (autoencoder), float32. Any ADIOS2 tool (``bpls``) can list it.
"""

from __future__ import annotations

import collections
import logging

import numpy as np

from ..analytics.codec import decode_block, encode_raw_block, parse_payload
from ..analytics.tiling import tile_grid, to_tiles
from ..analytics.encoder import Encoder, spec_from_bytes, spec_to_bytes
from .adios import bindings, declare_io, make_adios
from .errors import StagelearnError, UsageError
from .wire import REPORT_FIELDS, anomaly_name, payload_name, report_get, report_name
from .xmlconfig import read_ios

logger = logging.getLogger(__name__)


def encoder_prefix(version):
    return f"encoder/v{int(version)}"


class CompressedOutputWriter:
    """Serial BP5 writer of the compressed stream (staging rank 0).

    Parameters
    ----------
    config_file : str or None
        ADIOS2 XML defining ``io_name``.
    io_name : str or None
        None: a plain BP5 engine, no XML needed.
    path : str
        Output file (e.g. ``results/<run>/compressed.bp``).
    """

    def __init__(self, config_file, io_name, path):
        b = bindings()
        if io_name is None:  # a plain serial BP5 file (producers' fallback files need no XML entry)
            self.adios = b.ADIOS()
            self.io = self.adios.DeclareIO(f"stagelearn-file-{id(self)}")
            self.io.SetEngine("BP5")
        else:
            self.adios = make_adios(config_file, None)
            self.io = declare_io(self.adios, io_name, config_file, read_ios(config_file))
        self.io.DefineAttribute("stagelearn/report_fields", list(REPORT_FIELDS))
        self.engine = self.io.Open(str(path), b.Mode.Write)
        self.path = str(path)
        self._vars = {}
        self._step_var = self.io.DefineVariable("step", np.zeros(1, dtype=np.int64), [1], [0], [1])

    def _local(self, name, arr):
        var = self._vars.get(name)
        if var is None:
            var = self.io.DefineVariable(name, arr, [], [], [arr.size])
            self._vars[name] = var
        var.SetSelection([[], [arr.size]])
        return var

    def _global(self, name, arr, shape, start):
        var = self._vars.get(name)
        if var is None:
            var = self.io.DefineVariable(name, arr, list(shape), list(start), list(arr.shape))
            self._vars[name] = var
        var.SetShape(list(shape))
        var.SetSelection([list(start), list(arr.shape)])
        return var

    def write_step(self, step, blocks, encoder=None):
        """Write one output step.

        Parameters
        ----------
        step : int
            Producer output step.
        blocks : list of ReceivedBlock
            All producer blocks of this step (raw or payload).
        encoder : Encoder, optional
            An encoder published at this step, stored once.
        """
        b = bindings()
        self.engine.BeginStep()
        self.engine.Put(self._step_var, np.array([step], dtype=np.int64), b.Mode.Sync)
        for blk in sorted(blocks, key=lambda x: (x.var, x.rank)):
            if blk.raw is not None:
                payload = encode_raw_block(blk.raw, header={"step": int(step), "variable": blk.var, "rank": blk.rank,
                                                            "shape": list(blk.shape), "start": list(blk.start),
                                                            "count": list(blk.count)})
            else:
                payload = blk.payload
            p = np.frombuffer(payload, dtype=np.uint8).copy()
            self.engine.Put(self._local(payload_name(blk.var), p), p, b.Mode.Sync)
            amap = np.concatenate([[0.0 if blk.anomaly is None else float(len(blk.anomaly))],
                                   [] if blk.anomaly is None else blk.anomaly.ravel()]).astype(np.float32)
            self.engine.Put(self._local(anomaly_name(blk.var), amap), amap, b.Mode.Sync)
            self.engine.Put(self._local(report_name(blk.var), blk.report), blk.report, b.Mode.Sync)
        if encoder is not None:
            prefix = encoder_prefix(encoder.version)
            spec = spec_to_bytes(encoder.spec())
            self.engine.Put(self._global(f"{prefix}/spec", spec, spec.shape, [0]), spec, b.Mode.Sync)
            for name, arr in encoder.arrays().items():
                self.engine.Put(self._global(f"{prefix}/{name}", arr, arr.shape, [0] * arr.ndim), arr, b.Mode.Sync)
        self.engine.EndStep()

    def close(self):
        self.engine.Close()


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
        if "step" not in self.variables:
            raise StagelearnError(f"{path}: no 'step' variable; not a stagelearn compressed output")
        var = self.io.InquireVariable("step")
        n = int(var.Steps())
        var.SetStepSelection([0, n])
        steps = np.empty(n, dtype=np.int64)
        self.engine.Get(var, steps, b.Mode.Sync)
        self.steps = [int(s) for s in steps]
        self._encoders = {}
        self._cache = collections.OrderedDict()
        self._cached = 0
        self._reports = {}

    def fields(self):
        """Field variable names in the file."""
        return sorted(n[: -len("/report")] for n in self.variables if n.endswith("/report") and "/" not in n[: -len("/report")])

    def _bp_step(self, step):
        try:
            return self.steps.index(int(step))
        except ValueError:
            raise UsageError(f"{self.path}: step {step} not in the file (steps {self.steps[0]}..{self.steps[-1]})") from None

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
        b = bindings()
        t = self._bp_step(step)
        rv = self.io.InquireVariable(report_name(var))
        rows = []
        for bi in self.engine.BlocksInfo(report_name(var), t):
            row = np.empty(len(REPORT_FIELDS))
            self._select_step(rv, report_name(var), t)
            rv.SetBlockSelection(int(bi["BlockID"]))
            self.engine.Get(rv, row, b.Mode.Sync)
            rows.append(row)
        return np.array(rows)

    def anomaly_map(self, step, var):
        """Anomaly map rows of ``var`` at ``step``: ndarray of shape (n, 2 + ndim + 2).

        Columns: producer block, tile index, tile origin (ndim global indices), score, status
        (1 flagged, 2 persistent, 0 listed only). Empty before anomaly scoring starts.
        """
        from ..analytics.anomaly import parse_map

        b = bindings()
        t = self._bp_step(step)
        av = self.io.InquireVariable(anomaly_name(var))
        pv = self.io.InquireVariable(payload_name(var))
        out = []
        for i, _ in enumerate(self.reports(step, var)):
            self._select_step(av, anomaly_name(var), t)
            av.SetBlockSelection(i)
            arr = np.empty(int(av.SelectionSize()), dtype=np.float32)
            self.engine.Get(av, arr, b.Mode.Sync)
            rows = parse_map(arr)
            if not len(rows):
                continue
            self._select_step(pv, payload_name(var), t)
            pv.SetBlockSelection(i)
            buf = np.empty(int(pv.SelectionSize()), dtype=np.uint8)
            self.engine.Get(pv, buf, b.Mode.Sync)
            header, _ = parse_payload(buf)
            grid = tile_grid(header["block_shape"], header["tile_shape"])
            for tile, score, flagged, persistent in rows:
                pos = np.unravel_index(int(tile), grid)
                origin = [s0 + p * ts for s0, p, ts in zip(header["start"], pos, header["tile_shape"])]
                out.append([i, tile, *origin, score, 1 if flagged else (2 if persistent else 0)])
        return np.array(out, dtype=np.float64)

    def latents(self, step, var):
        """Per-tile latent codes of ``var`` at ``step`` (features for clustering regimes).

        PCA: each decoded tile's projection on the encoder's basis (coded tiles without temporal
        prediction: their dequantized coefficients, up to edge padding); autoencoder: the latent
        code of the decoded tile (computed here: tiles predicted from the previous step carry none
        on the wire). Steps before the first encoder have no latents. Latents of different encoder
        versions live in different bases: compare them within one version.

        Returns
        -------
        origin : ndarray of shape (n_tiles, ndim), int64
            Global index of each tile's first cell.
        latents : ndarray of shape (n_tiles, n_components), float32
        version : ndarray of shape (n_tiles,), int64
            Encoder version the codes belong to.
        """
        origins, codes, versions = [], [], []
        for i, row in enumerate(self.reports(step, var)):
            version = int(report_get(row, "encoder_version"))
            if version == 0:
                continue
            block, header = self._decoded(step, var, i)
            codec = self.encoder(version).variables[var].codec()
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
            raise StagelearnError(f"{self.path}: step {step} of {var} was sent before any encoder: no latents")
        return np.concatenate(origins).astype(np.int64), np.concatenate(codes).astype(np.float32), np.concatenate(versions)

    def read(self, step, var, *, partial=False):
        """Reconstruct the global field ``var`` at producer step ``step``.

        Steps coded with temporal prediction are decoded from the last step coded on its own.

        Parameters
        ----------
        step : int
        var : str
        partial : bool, default=False
            Return the blocks the file has, NaN elsewhere (a producer's fallback file holds its own
            blocks only), instead of raising for an incomplete step.

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
        for i, _ in enumerate(self.reports(step, var)):
            block, header = self._decoded(step, var, i)
            if out is None:
                out = np.zeros(header["shape"], dtype=np.float32)
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

    def _payload(self, step, var, i):
        b = bindings()
        pv = self.io.InquireVariable(payload_name(var))
        self._select_step(pv, payload_name(var), self._bp_step(step))
        pv.SetBlockSelection(i)
        buf = np.empty(int(pv.SelectionSize()), dtype=np.uint8)
        self.engine.Get(pv, buf, b.Mode.Sync)
        return buf

    def _decoded(self, step, var, i):
        """Block ``i`` of ``var`` at ``step``: ``(block, header)``.

        A payload predicted from the previous step needs that step's block first: the chain is
        followed back (header ``ref_step``, same producer rank) to a cached block or a step coded on
        its own, then decoded forward. Decoded blocks are cached (LRU, :attr:`cache_bytes`).
        """
        chain, key, prev = [], (int(step), var, int(i)), None
        while True:
            if key in self._cache:
                self._cache.move_to_end(key)
                if not chain:
                    return self._cache[key]
                prev = self._cache[key][0]
                break
            row = self.reports(key[0], var)[key[2]]
            buf = self._payload(key[0], var, key[2])
            header, _ = parse_payload(buf)
            chain.append((key, row, buf))
            if not (header.get("n_inter") and header.get("ref_step") is not None):
                break
            ref_step, rank = int(header["ref_step"]), int(report_get(row, "rank"))
            ranks = [int(report_get(r, "rank")) for r in self.reports(ref_step, var)]
            if rank not in ranks:
                raise StagelearnError(f"{self.path}: step {key[0]} of {var} predicts from step {ref_step}, which has no "
                                      f"block of producer {rank}")
            key = (ref_step, var, ranks.index(rank))
        for key, row, buf in reversed(chain):
            block, header, _ = decode_block(buf, self._codec(var, int(report_get(row, "encoder_version"))), prev=prev)
            self._remember(key, (block, header))
            prev = block
        return block, header

    #: Bytes of decoded blocks kept for prediction chains and repeated reads.
    cache_bytes = 256 * 2**20

    def _remember(self, key, value):
        self._cache[key] = value
        self._cached += value[0].nbytes
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, (old, _) = self._cache.popitem(last=False)
            self._cached -= old.nbytes

    def _codec(self, var, version):
        if version <= 0:
            return None  # lossless raw payload
        return self.encoder(version).variables[var].codec()

    def close(self):
        self.engine.Close()

"""The encoder that staging pushes back to producers: named arrays plus a JSON spec.

An :class:`Encoder` holds, per variable, the PCA basis (``mean_``, ``components_``) or a tile
autoencoder (architecture spec plus weights) and the tile shape, plus the producer policy (error
target, raw-tile fraction, temporal prediction, error bound, encode threads), a version and the
last step it was trained on. It travels as plain arrays named ``<variable>/mean_`` and
``<variable>/components_``, or ``<variable>/ae/<parameter>`` (float32), and a JSON spec listing
every array's shape and dtype (and the autoencoder's architecture); no pickle, no ``torch.load``: the receiver checks both before use
(:meth:`Encoder.from_arrays`), so a malformed or hostile update is rejected, never executed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from .transform import TransformCodec
from .framing import pack_frame, unpack_frame

FORMAT = "stagelearn.learned-coder/2"
_FORMAT_V1 = "stagelearn.pca-transform-coder/1"  # PCA only, no temporal/bound policy: still readable
_FRAME_MAGIC = b"SLE1"
_ARRAYS = ("mean_", "components_")
# Keys a spec may carry (see Encoder.spec); anything else is rejected, never ignored.
_SPEC_KEYS = {"format", "version", "trained_until_step", "raw_fraction", "psnr_db", "anomaly", "keyframe_every",
              "error_bound", "encode_threads", "variables", "qoi"}
_VARIABLE_KEYS = {"kind", "tile_shape", "data_min", "data_max", "autoencoder", "arrays", "stream"}


class EncoderFormatError(ValueError):
    """An encoder spec or its arrays do not match the expected format."""


@dataclass
class VariableModel:
    """Model of one variable: a PCA basis or a tile autoencoder.

    Attributes
    ----------
    tile_shape : tuple of int
        ``prod(tile_shape) == n_features``.
    data_min, data_max : float
        Value range seen in training.
    kind : {"pca", "ae"}
    mean_ : ndarray of shape (n_features,), float32
        PCA only.
    components_ : ndarray of shape (n_components, n_features), float32
        PCA only.
    autoencoder : dict
        Autoencoder only: its architecture spec (:mod:`~stagelearn.analytics.autoencoder`).
    ae_arrays : dict of str to ndarray
        Autoencoder only: its weights by parameter name (float32).
    """

    tile_shape: tuple
    data_min: float
    data_max: float
    kind: str = "pca"
    mean_: np.ndarray = None
    components_: np.ndarray = None
    autoencoder: dict = None
    ae_arrays: dict = None

    def arrays(self):
        """Named arrays of this model, without the variable prefix (float32, C order, fresh copies)."""
        if self.kind == "pca":
            named = {"mean_": self.mean_, "components_": self.components_}
        else:
            named = {f"ae/{k}": v for k, v in self.ae_arrays.items()}
        return {k: np.array(v, dtype=np.float32, order="C") for k, v in named.items()}

    def codec(self, quant_step=1.0, zstd_level=3):
        """The codec of this variable (:class:`TransformCodec` or :class:`~stagelearn.analytics.ae_codec.AECodec`;
        the step is usually set per block, see :func:`~stagelearn.analytics.codec.encode_block` ``target_mse``)."""
        if self.kind == "pca":
            return TransformCodec(self.mean_, self.components_, quant_step, zstd_level=zstd_level)
        key = (quant_step, zstd_level)
        if getattr(self, "_codec", (None,))[0] != key:  # one AECodec per model: it is built once per version
            if getattr(self, "_module", None) is None:
                from .autoencoder import from_arrays

                self._module = from_arrays(self.autoencoder, self.ae_arrays)
            from .ae_codec import AECodec

            self._codec = (key, AECodec(self._module, offset=float(self.autoencoder["offset"]), quant_step=quant_step,
                                        zstd_level=zstd_level))
        return self._codec[1]


@dataclass
class Encoder:
    """A versioned set of per-variable models and the producer-side policy.

    Attributes
    ----------
    version : int
        Increases by one per publication (starts at 1).
    trained_until_step : int
        Last output step whose data the models have seen.
    raw_fraction : float
        Fraction of tiles per block that producers send raw.
    psnr_db : float
        Error target: producers set each step's quantization step from it and the step's global
        value range (:func:`~stagelearn.analytics.codec.quant_step_for_psnr`).
    variables : dict of str to VariableModel
    anomaly : dict or None
        Anomaly policy (``method``, ``threshold``, ``top_k``, ``report_score``, ``max_report``,
        ``persistence_steps``), ``n_components`` (per variable, the components of the scored
        model) and ``stats``: per variable ``[median, mad]`` of the tile log-residuals (:mod:`~stagelearn.analytics.anomaly`), or None when disabled.
    keyframe_every : int
        Temporal prediction: 0 codes every step on its own; ``k > 0`` predicts tiles from the
        previous step's reconstruction, with a step coded on its own every ``k`` steps.
    error_bound : dict or None
        ``{"abs": e}`` or ``{"rel": r}`` (of the step's global range): pointwise bound on the error.
    encode_threads : int
        Threads the producer gives torch for autoencoder encoding (0: leave torch's setting).
    qoi : dict or None
        Moments to preserve (:mod:`~stagelearn.analytics.qoi_policy`): producers send side
        information that restores them in the decoded field; None when the run has no ``qoi:``.
    """

    version: int
    trained_until_step: int
    raw_fraction: float
    psnr_db: float
    variables: dict = field(default_factory=dict)
    anomaly: dict = None
    keyframe_every: int = 0
    error_bound: dict = None
    encode_threads: int = 1
    qoi: dict = None

    @classmethod
    def from_learners(cls, learners, *, version, trained_until_step, tile_shapes, ranges, psnr_db, raw_fraction):
        """Build an encoder from fitted PCA learners or autoencoder trainers.

        Parameters
        ----------
        learners : dict of str to learner
            Any learner of :mod:`stagelearn.analytics.learners` (or an ``AETrainer``): its ``kind``
            (``"pca"`` or ``"ae"``) and ``model_arrays()``; autoencoders also give ``spec``.
        version, trained_until_step : int
        tile_shapes : dict of str to tuple of int
        ranges : dict of str to (float, float)
            ``(min, max)`` of each variable seen so far.
        psnr_db : float
            Target PSNR setting each variable's quantization step.
        raw_fraction : float
        """
        variables = {}
        for name, est in learners.items():
            lo, hi = ranges[name]
            arrays = est.model_arrays()
            if est.kind == "stream":
                variables[name] = est.model(float(lo), float(hi))
            elif est.kind == "pca":
                variables[name] = VariableModel(tuple(tile_shapes[name]), float(lo), float(hi), "pca",
                                                arrays["mean_"], arrays["components_"])
            else:
                variables[name] = VariableModel(tuple(tile_shapes[name]), float(lo), float(hi), "ae",
                                                autoencoder=est.spec.to_dict(), ae_arrays=arrays)
        return cls(int(version), int(trained_until_step), float(raw_fraction), float(psnr_db), variables)

    # ------------------------------------------------------------- named arrays + spec
    def spec(self):
        """JSON-serialisable description of the encoder and of every array it carries."""
        return {
            "format": FORMAT,
            "version": self.version,
            "trained_until_step": self.trained_until_step,
            "raw_fraction": self.raw_fraction,
            "psnr_db": self.psnr_db,
            "anomaly": self.anomaly,
            "keyframe_every": self.keyframe_every,
            "error_bound": self.error_bound,
            "encode_threads": self.encode_threads,
            **({"qoi": self.qoi} if self.qoi is not None else {}),
            "variables": {
                name: m.spec_entry() if m.kind == "stream" else {
                    "kind": m.kind,
                    "tile_shape": list(m.tile_shape),
                    "data_min": m.data_min,
                    "data_max": m.data_max,
                    "autoencoder": m.autoencoder,
                    "arrays": {a: {"shape": list(arr.shape), "dtype": "float32"} for a, arr in m.arrays().items()},
                }
                for name, m in self.variables.items()
            },
        }

    def arrays(self):
        """Named arrays ``<variable>/mean_``, ``<variable>/components_`` (PCA) or
        ``<variable>/ae/<parameter>`` (autoencoder), float32 (fresh, writeable: ADIOS2 Put needs it)."""
        return {f"{name}/{a}": arr for name, m in self.variables.items() for a, arr in m.arrays().items()}

    @classmethod
    def from_arrays(cls, spec, arrays):
        """Rebuild and validate an encoder from its spec and named arrays.

        Parameters
        ----------
        spec : dict
            As produced by :meth:`spec`.
        arrays : dict of str to ndarray

        Raises
        ------
        EncoderFormatError
            On an unknown format, spec key or model kind, unexpected or missing array names, shapes or
            dtypes that differ from the spec, inconsistent tile shapes, non-finite values, or an
            autoencoder whose spec and weights do not rebuild.
        """
        if not isinstance(spec, dict) or spec.get("format") not in (FORMAT, _FORMAT_V1):
            raise EncoderFormatError(f"unknown encoder format {spec.get('format') if isinstance(spec, dict) else spec!r}; expected {FORMAT}")
        try:
            unknown = set(spec) - _SPEC_KEYS
            unknown |= {f"variables/{n}/{k}" for n, vs in spec["variables"].items() for k in set(vs) - _VARIABLE_KEYS}
            if unknown:
                raise EncoderFormatError(f"encoder spec has unknown keys {sorted(unknown)}")
            variables_spec = spec["variables"]
            expected = {f"{n}/{a}" for n, vs in variables_spec.items() for a in vs["arrays"]}
            unexpected, missing = set(arrays) - expected, expected - set(arrays)
            if unexpected or missing:
                raise EncoderFormatError(f"encoder arrays do not match its spec: unexpected {sorted(unexpected)}, missing {sorted(missing)}")
            variables = {}
            for name, vs in variables_spec.items():
                variables[name] = _variable_model(name, vs, arrays)
            raw_fraction, psnr_db = float(spec["raw_fraction"]), float(spec["psnr_db"])
            if not 0.0 <= raw_fraction <= 1.0:
                raise EncoderFormatError(f"raw_fraction {raw_fraction} outside [0, 1]")
            if not (math.isfinite(psnr_db) and psnr_db > 0):
                raise EncoderFormatError(f"psnr_db must be a positive number, got {psnr_db!r}")
            anomaly = spec.get("anomaly")
            if anomaly is not None:
                anomaly = _check_anomaly(anomaly, variables)
            keyframe_every, threads = spec.get("keyframe_every", 0), spec.get("encode_threads", 1)
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 2**20 for v in (keyframe_every, threads)):
                raise EncoderFormatError(f"keyframe_every {keyframe_every!r} and encode_threads {threads!r} must be ints in [0, 2**20]")
            bound = _check_bound(spec.get("error_bound"))
            qoi = spec.get("qoi")
            if qoi is not None:
                from .qoi_policy import check_policy

                try:
                    qoi = check_policy(qoi)
                except ValueError as exc:
                    raise EncoderFormatError(str(exc)) from None
            return cls(int(spec["version"]), int(spec["trained_until_step"]), raw_fraction, psnr_db, variables, anomaly,
                       keyframe_every, bound, threads, qoi)
        except (KeyError, TypeError, AttributeError, ValueError, OverflowError, RuntimeError, MemoryError) as exc:
            if isinstance(exc, EncoderFormatError):
                raise
            raise EncoderFormatError(f"encoder spec is missing or mistyped: {exc!r}") from None

    # ------------------------------------------------------------- one byte frame
    def to_frame(self):
        """The spec and arrays as one self-describing byte frame (for MPI broadcast and files)."""
        return pack_frame(_FRAME_MAGIC, {"spec": self.spec()}, {k: v.tobytes() for k, v in self.arrays().items()})

    @classmethod
    def from_frame(cls, frame):
        """Inverse of :meth:`to_frame`, with the checks of :meth:`from_arrays`."""
        try:
            header, sections = unpack_frame(_FRAME_MAGIC, frame, "encoder frame")
        except ValueError as exc:
            raise EncoderFormatError(str(exc)) from None
        spec = header.get("spec")
        arrays = {}
        try:
            for name, vs in spec["variables"].items():
                for a, desc in vs["arrays"].items():
                    key = f"{name}/{a}"
                    if key in sections:
                        arrays[key] = np.frombuffer(bytes(sections[key]), dtype=np.float32).reshape(desc["shape"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EncoderFormatError(f"encoder frame does not match its spec: {exc}") from None
        extra = set(sections) - set(arrays)
        if extra:
            raise EncoderFormatError(f"encoder frame has unexpected sections {sorted(extra)}")
        return cls.from_arrays(spec, arrays)


def _variable_model(name, vs, arrays):
    """One variable's model from its spec entry and the named arrays (all checked)."""
    if vs.get("kind") == "stream":
        from .stream_model import StreamModelError, StreamVariableModel

        try:
            return StreamVariableModel.from_spec(name, vs, {a: arrays[f"{name}/{a}"] for a in vs["arrays"]})
        except StreamModelError as exc:
            raise EncoderFormatError(str(exc)) from None
    tile_shape = tuple(int(t) for t in vs["tile_shape"])
    kind = vs.get("kind", "pca")
    got = {}
    for a, want in vs["arrays"].items():
        arr = np.asarray(arrays[f"{name}/{a}"])
        if arr.dtype != np.float32 or want["dtype"] != "float32" or list(arr.shape) != list(want["shape"]):
            raise EncoderFormatError(f"encoder array {name}/{a}: got {arr.dtype}{list(arr.shape)}, spec says {want['dtype']}{want['shape']}")
        if not np.all(np.isfinite(arr)):
            raise EncoderFormatError(f"encoder array {name}/{a} contains NaN or Inf")
        got[a] = arr
    n_features = int(np.prod(tile_shape))
    lo, hi = float(vs["data_min"]), float(vs["data_max"])
    if kind == "pca":
        if set(got) != set(_ARRAYS):
            raise EncoderFormatError(f"encoder variable {name}: a PCA model carries exactly {list(_ARRAYS)}, got {sorted(got)}")
        if got["mean_"].shape != (n_features,) or got["components_"].ndim != 2 or got["components_"].shape[1] != n_features:
            raise EncoderFormatError(f"encoder variable {name}: arrays do not match tile shape {tile_shape}")
        return VariableModel(tile_shape, lo, hi, "pca", got["mean_"], got["components_"])
    if kind != "ae":
        raise EncoderFormatError(f"encoder variable {name}: unknown model kind {kind!r} (pca or ae)")
    from .autoencoder import AEFormatError, from_arrays

    ae_spec = vs.get("autoencoder")
    squeezed = [t for t in tile_shape if t > 1] or [1]  # the autoencoder convolves the axes longer than one
    if not isinstance(ae_spec, dict) or [int(t) for t in ae_spec.get("tile_shape", [])] not in (list(tile_shape), squeezed):
        raise EncoderFormatError(f"encoder variable {name}: autoencoder spec missing or its tile shape differs from {tile_shape}")
    weights = {}
    for a, arr in got.items():
        if not a.startswith("ae/"):
            raise EncoderFormatError(f"encoder variable {name}: unexpected array {a!r} for an autoencoder")
        weights[a[3:]] = arr
    model = VariableModel(tile_shape, lo, hi, "ae", autoencoder=ae_spec, ae_arrays=weights)
    try:
        model._module = from_arrays(ae_spec, weights)  # rebuild now: a bad update is rejected here, never used
    except AEFormatError as exc:
        raise EncoderFormatError(f"encoder variable {name}: {exc}") from None
    return model


def _check_bound(bound):
    if bound is None:
        return None
    if not isinstance(bound, dict) or len(bound) != 1 or next(iter(bound)) not in ("abs", "rel"):
        raise EncoderFormatError(f"encoder error_bound must be {{'abs': e}} or {{'rel': r}}, got {bound!r}")
    key, value = next(iter(bound.items()))
    if not (math.isfinite(float(value)) and float(value) > 0) or (key == "rel" and float(value) >= 1):
        raise EncoderFormatError(f"encoder error_bound {key} must be a positive number (rel below 1), got {value!r}")
    return {key: float(value)}


def _check_anomaly(a, variables):
    if not isinstance(a, dict) or a.get("method") not in ("threshold", "topk"):
        raise EncoderFormatError(f"encoder anomaly policy is malformed: {a!r}")
    out = {"method": a["method"], "threshold": float(a["threshold"]), "top_k": int(a["top_k"]),
           "report_score": float(a["report_score"]), "max_report": int(a["max_report"]),
           "persistence_steps": int(a["persistence_steps"]), "stats": {}, "n_components": {}}
    if any(m.kind != "pca" for m in variables.values()):
        raise EncoderFormatError("encoder anomaly policy needs PCA models (it scores the PCA residual)")
    for name, k in (a.get("n_components") or {}).items():
        if name not in variables or not 1 <= int(k) <= variables[name].components_.shape[0]:
            raise EncoderFormatError(f"encoder anomaly n_components for {name!r} is invalid: {k!r}")
        out["n_components"][name] = int(k)
    for name, pair in (a.get("stats") or {}).items():
        if name not in variables or len(pair) != 2 or not all(math.isfinite(float(x)) for x in pair):
            raise EncoderFormatError(f"encoder anomaly stats for {name!r} are malformed: {pair!r}")
        out["stats"][name] = [float(pair[0]), float(pair[1])]
    return out


def spec_to_bytes(spec):
    """UTF-8 JSON of a spec, as a uint8 array (how it travels as an ADIOS2 variable)."""
    return np.frombuffer(json.dumps(spec, separators=(",", ":")).encode(), dtype=np.uint8).copy()


def spec_from_bytes(data):
    """Inverse of :func:`spec_to_bytes` (raises :class:`EncoderFormatError` on bad JSON)."""
    try:
        return json.loads(np.asarray(data, dtype=np.uint8).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EncoderFormatError(f"encoder spec is not valid JSON: {exc!r}") from None

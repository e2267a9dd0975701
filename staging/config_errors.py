"""Messages for a run YAML that does not load: YAML syntax errors at the line of the mistake, and
validation errors naming the key path, the value and the fix (the nearest key for an unknown one).

Used by :func:`stagelearn.staging.config.load_config`; every function takes the root model
(``RunConfig``) as a parameter, so this module imports no configuration model.
"""

from __future__ import annotations

import difflib
import typing

from pydantic import BaseModel

from .sst_params import nearest_key

_SIM_TAGS = ("gray_scott", "heat2d", "gyrokinetic", "gyrokinetic_turbulence", "external")


def _model_at(root, loc):
    """The pydantic model class (under ``root``) holding the key at ``loc`` (a validation error's location), or None."""
    model, parts = root, list(loc[:-1])
    while parts:
        part = parts.pop(0)
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        options = [a for a in (typing.get_args(field.annotation) or (field.annotation,))
                   if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(options) > 1:  # a tagged union (simulation): the next part of loc is the tag
            tag = parts.pop(0) if parts else None
            options = [a for a in options if a.model_fields.get("type") and a.model_fields["type"].default == tag]
        if len(options) != 1:
            return None
        model = options[0]
    return model


def did_you_mean(root, loc):
    """`` (did you mean 'x'?)`` for the unknown key at ``loc``: the nearest field name at that path
    (:mod:`difflib`, over the fields of the model ``root`` reaches there), or ''."""
    model, key = _model_at(root, loc), loc[-1] if loc else None
    if model is None or not isinstance(key, str):
        return ""
    names = [n for n in model.model_fields if n != "source"]
    near = difflib.get_close_matches(key, names, n=1, cutoff=0.6) or difflib.get_close_matches(
        key.lower(), names, n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


_FIXES = {"missing": "add it"}

#: Fixes for the ``qoi:`` section, by the last key of the error's location.
_QOI_FIXES = {"tolerance": "a moment tolerance must be a finite number > 0 (0 cannot be met by a lossy code: the "
                           "output is float32); give e.g. 1.0e-3",
              "weights": "weights must be finite numbers, one per velocity node (n_vpar * n_mu, C order)"}


def _qoi_fix(err):
    """The ``qoi`` fix for ``err`` (tolerance or weights key), or None."""
    loc = [p for p in err["loc"] if isinstance(p, str)]
    if not loc or loc[0] != "qoi":
        return None
    key = next((p for p in reversed(loc) if p in _QOI_FIXES), None)
    return _QOI_FIXES.get(key)


def format_error(path, err, root):
    """One line for one pydantic error of the run YAML ``path``: the key path, the problem, the value, the fix."""
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _SIM_TAGS))
    fix = _FIXES.get(err["type"]) or _qoi_fix(err) or "see `stagelearn schema` for the expected form"
    if err["type"] == "extra_forbidden" and _sst_key_in_adios2(err["loc"]) and not did_you_mean(root, tuple(err["loc"])):
        return f"{path}: {loc}: {_sst_key_message(path, err['loc'][-1])}"
    if err["type"] == "extra_forbidden":
        hint = did_you_mean(root, tuple(err["loc"]))
        fix = f"unknown key{hint}; " + ("rename it" if hint else "remove it or check its spelling") + \
            " (all keys: docs/configuration.md, `stagelearn schema`)"
    value = err.get("input")
    if err["type"] == "value_error" and loc.startswith("qoi"):  # the qoi checks name the key and the fix themselves
        return f"{path}: {loc}: {err['msg'].removeprefix('Value error, ')}"
    if err["type"] == "value_error" and not loc:  # a check across sections: its message names the keys
        return f"{path}: {err['msg'].removeprefix('Value error, ')}"
    shown = "" if err["type"] == "missing" else f" (got {value!r})"
    return f"{path}: {loc or '<top>'}: {err['msg']}{shown}; {fix}"


def _sst_key_in_adios2(loc):
    """Whether ``loc`` is an unknown key of the ``adios2:`` section that is (near) an SST parameter."""
    return len(loc) == 2 and loc[0] == "adios2" and isinstance(loc[1], str) and nearest_key(loc[1]) is not None


#: SST keys the run YAML sets itself (config.py, Adios2Config).
_YAML_OF_SST = {"QueueLimit": "queue_limit", "QueueFullPolicy": "queue_full_policy",
                "NetworkInterface": "network_interface"}


def _sst_key_message(path, key):
    """An SST parameter written into the run YAML's ``adios2:`` section: the key meant and where it goes."""
    sst = nearest_key(key)
    meant = f"did you mean {sst!r}? " if sst != key else ""
    if sst in _YAML_OF_SST:
        return (f"an SST engine parameter ({meant.strip() or sst}); in the run YAML it is adios2.{_YAML_OF_SST[sst]}: "
                "rename it")
    return (f"an SST engine parameter ({meant}SST matches keys case-sensitively); the run YAML does not set it: "
            "SST parameters belong in the ADIOS2 XML, in the <engine type=\"SST\"> of the stream IO of "
            f"adios2.config_file (`stagelearn xml {path}` prints one)")


def yaml_error_message(path, exc):
    """``path:line:column: invalid YAML (...)`` at the line the mistake is on.

    The parser notices some mistakes (a key without ``:``, an unclosed bracket or quote) only lines
    later (``problem_mark``); then the token it was reading (``context_mark``: "while scanning a
    simple key", "while parsing a flow sequence") is where the mistake is, and that line is named
    first. A block mapping's context is only where the mapping began: there the problem mark is right.
    """
    mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    reading = str(getattr(exc, "context", None) or "")
    if (context is not None and mark is not None and context.line < mark.line
            and reading.startswith(("while scanning", "while parsing a flow"))):
        return (f"{path}:{context.line + 1}:{context.column + 1}: invalid YAML ({exc.context}: {problem}, "
                f"noticed at line {mark.line + 1}, column {mark.column + 1})")
    where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
    return f"{path}{where}: invalid YAML ({problem})"

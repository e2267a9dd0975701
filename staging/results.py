"""Result files: JSON that any reader accepts (non-finite floats as strings)."""

from __future__ import annotations

import json
import math


def write_json(path, obj):
    """Write JSON with non-finite floats as strings ("inf") so any JSON reader accepts it."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    with open(path, "w", encoding="utf-8") as f:
        json.dump(clean(obj), f, indent=2)
        f.write("\n")

"""Events injected into the mocks, to test anomaly detection against a known ground truth.

Three kinds, each starting at an output step:

- ``hotspot`` (heat2d): a second, stationary Gaussian heat source of width ``radius`` and
  strength ``amplitude`` appears at ``center`` and stays (a persistent change of regime).
- ``perturbation`` (gray_scott): a ball of radius ``radius`` at ``center`` is reset to
  ``U = 0.25, V = amplitude`` (the tutorial's seed), which then grows with the dynamics.
- ``spike`` (both): at that output step only, the written value of the first variable at the
  cell ``center`` is increased by ``amplitude`` (NaN-free but unphysical; the simulation state is
  untouched).
"""

from __future__ import annotations

from typing import List, Literal

from pydantic import BaseModel, ConfigDict, Field


class Event(BaseModel):
    """One injected event (a list of these is ``simulation.events`` in the run YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hotspot", "perturbation", "spike"]
    step: int = Field(..., ge=0, description="Output step at which the event starts.")
    center: List[int] = Field(..., description="Global cell index of the event centre.")
    radius: float = Field(3.0, gt=0, description="Radius (cells) of the perturbed region or source width.")
    amplitude: float = 1.0


def _mask(sim, ev):
    coords = sim.domain.global_coords()
    if len(ev.center) != len(coords):
        raise ValueError(f"event {ev.kind} at step {ev.step}: center {ev.center} must have {len(coords)} coordinates")
    r2 = sum((c - x) ** 2 for c, x in zip(coords, ev.center))
    return r2 <= ev.radius**2


def apply_state_events(sim, events, output_step):
    """Change the simulation state for the events starting at ``output_step`` (local, no communication)."""
    for ev in events:
        if ev.step != output_step:
            continue
        if ev.kind == "hotspot":
            if not hasattr(sim, "extra_sources"):
                raise ValueError("event hotspot needs the heat2d mock")
            sim.extra_sources.append((tuple(ev.center), ev.radius, ev.amplitude))
        elif ev.kind == "perturbation":
            if sim.variables != ("U", "V"):
                raise ValueError("event perturbation needs the gray_scott mock")
            inside = _mask(sim, ev)
            sim.domain.interior(sim.u)[inside] = 0.25
            sim.domain.interior(sim.v)[inside] = ev.amplitude


def written_fields(sim, events, output_step):
    """The blocks to write at ``output_step``: the state, plus this step's spikes on a copy."""
    fields = sim.fields()
    spikes = [ev for ev in events if ev.kind == "spike" and ev.step == output_step]
    if not spikes:
        return fields
    fields = dict(fields)
    first = sim.variables[0]
    block = fields[first].copy()
    for ev in spikes:
        if len(ev.center) != len(sim.domain.start):
            raise ValueError(f"event spike at step {ev.step}: center {ev.center} must have {len(sim.domain.start)} coordinates")
        local = [c - s for c, s in zip(ev.center, sim.domain.start)]
        if all(0 <= i < n for i, n in zip(local, sim.domain.count)):
            block[tuple(local)] += ev.amplitude
    fields[first] = block
    return fields


def ground_truth(events, shape):
    """JSON-serialisable description of the events (for ``events.json``)."""
    return {"shape": list(shape), "events": [ev.model_dump() for ev in events]}

"""Configuration of the mock simulations (the ``simulation:`` section of a run YAML)."""

from __future__ import annotations

from typing import ClassVar, List, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field

from .events import Event


class _MockBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ranks: int = Field(4, ge=1, description="Producer MPI ranks (M).")
    steps: int = Field(2000, ge=1, description="Simulation time steps.")
    plotgap: int = Field(10, ge=1, description="Time steps between output steps.")
    seed: int = 0
    events: List[Event] = Field(default_factory=list, description="Injected events (see sim_mocks/events.py).")


class GrayScottConfig(_MockBase):
    """ADIOS2 tutorial Gray-Scott (``settings-files.json`` names and defaults)."""

    type: Literal["gray_scott"] = "gray_scott"
    field_ndim: ClassVar[int] = 3  # fields U, V on an L x L x L grid
    L: int = Field(64, ge=4, description="Cells per side of the cubic grid.")
    F: float = 0.01
    k: float = 0.05
    Du: float = 0.2
    Dv: float = 0.1
    dt: float = 2.0
    noise: float = Field(1e-7, ge=0.0, description="Amplitude of the noise on du/dt (tutorial: 1e-7).")


class Heat2DConfig(_MockBase):
    """2D advection-diffusion with a moving source."""

    type: Literal["heat2d"] = "heat2d"
    field_ndim: ClassVar[int] = 2  # nx x ny
    nx: int = Field(256, ge=4)
    ny: int = Field(256, ge=4)
    kappa: float = Field(0.1, gt=0)
    velocity: Tuple[float, float] = (0.3, 0.1)
    amplitude: float = 1.0
    sigma: float = Field(6.0, gt=0)
    omega: float = 0.01
    decay: float = Field(0.002, ge=0)
    dt: float = Field(1.0, gt=0)


class GyrokineticConfig(_MockBase):
    """Gysela-like 5-D distribution function f(r, theta, phi, v_par, mu) (sim_mocks/gyrokinetic.py)."""

    type: Literal["gyrokinetic"] = "gyrokinetic"
    field_ndim: ClassVar[int] = 5  # f(r, theta, phi, v_par, mu)
    n_r: int = Field(16, ge=2)
    n_theta: int = Field(32, ge=1)
    n_phi: int = Field(8, ge=1)
    n_vpar: int = Field(32, ge=2)
    n_mu: int = Field(16, ge=2)
    dt: float = Field(1.0, gt=0, description="Time per simulation step (the modes' growth and drift).")
    noise: float = Field(1e-4, ge=0.0, description="Relative noise on f.")
    steps: int = Field(60, ge=1, description="Simulation time steps.")
    plotgap: int = Field(2, ge=1, description="Time steps between output steps.")


class GyrokineticTurbulenceConfig(GyrokineticConfig):
    """The harder Gysela-like f: broadband turbulence, non-Maxwellian velocity space
    (sim_mocks/gyrokinetic_turbulence.py)."""

    type: Literal["gyrokinetic_turbulence"] = "gyrokinetic_turbulence"
    m_max: int = Field(16, ge=1, description="Largest poloidal mode number of the spectrum.")
    n_max: int = Field(4, ge=0, description="Largest toroidal mode number of the spectrum.")
    spectrum_alpha: float = Field(2.0, ge=0.0, description="Power-law exponent of the mode amplitudes.")
    beam_density: float = Field(0.02, ge=0.0, le=1.0, description="Fast-beam density relative to n0 at its peak.")


class ExternalSimConfig(BaseModel):
    """An existing simulation code, run unchanged (in-transit mode: it writes with ADIOS2 itself)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["external"] = "external"
    field_ndim: ClassVar[Optional[int]] = None  # the code's own: known only from its stream
    ranks: int = Field(1, ge=1, description="MPI ranks of the simulation (M).")
    command: List[str] = Field(..., min_length=1, description="Argument list run as `mpiexec -n ranks COMMAND...` in the "
                               "run directory; script and config files (.py, .sh, .xml, .yaml, ...) named relative "
                               "to the YAML file are resolved.")
    steps: int = Field(0, ge=0, description="Output steps it writes, for the progress bar only (0: unknown).")
    plotgap: int = Field(1, ge=1, description="Kept for the progress bar: output steps = steps // plotgap + 1 when steps > 0.")
    events: List[Event] = Field(default_factory=list, max_length=0, description="Not available for external codes.")


SimulationConfig = Union[GrayScottConfig, Heat2DConfig, GyrokineticConfig, GyrokineticTurbulenceConfig, ExternalSimConfig]

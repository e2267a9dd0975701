"""Domain-decomposed mock simulations that write through :class:`stagelearn.staging.Producer`.

- :class:`GrayScott3D`: the ADIOS2 tutorial's 3D Gray-Scott reaction-diffusion (fields U, V).
- :class:`AdvectionDiffusion2D`: 2D heat/advection-diffusion with a moving source (field T).
- :class:`GyrokineticMock5D`: a Gysela-like distribution function f(r, theta, phi, v_par, mu)
  (field f; each spatial point's velocity-space slice is one sample).
- :class:`TurbulentGyrokineticMock5D`: the same f with broadband turbulence and non-Maxwellian
  velocity space (kinetic distortions, a resonant clump, a fast beam).
"""

from .gray_scott import GrayScott3D
from .gyrokinetic import GyrokineticMock5D
from .gyrokinetic_turbulence import TurbulentGyrokineticMock5D
from .heat2d import AdvectionDiffusion2D

__all__ = ["GrayScott3D", "AdvectionDiffusion2D", "GyrokineticMock5D", "TurbulentGyrokineticMock5D"]

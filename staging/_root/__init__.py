"""stagelearn: in-transit learning of compression models on ADIOS2 SST streams.

Subpackages
-----------
stagelearn.staging
    Everything that touches ADIOS2: producer API, staging service, M-to-N assignment,
    model channel (encoder push-back), XML, run launcher and CLI.
stagelearn.analytics
    Learners (distributed incremental PCA), codecs, metrics, baselines, plots.
stagelearn.sim_mocks
    Domain-decomposed mock simulations (Gray-Scott 3D, heat/advection-diffusion 2D).

This file is installed as ``stagelearn/__init__.py``; it lives in ``staging/_root/`` because
the repository keeps the three code folders at its top level (see ``pyproject.toml``).
"""

__version__ = "0.1.0"

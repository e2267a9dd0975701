"""``python -m stagelearn``: the command-line interface (see :mod:`stagelearn.staging.cli`)."""

from stagelearn.staging.cli import main

raise SystemExit(main())

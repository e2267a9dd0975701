"""The texts of ``stagelearn --help``: description, the examples and exit-code epilog, the ``config`` help.

Plain text (no reStructuredText): argparse prints it as written. The exit codes are those of
:data:`stagelearn.staging.cli.EXIT_CODES` and :mod:`stagelearn.staging.errors` (``tests/test_newcomer.py`` checks that they agree).
"""

DESCRIPTION = """\
stagelearn: staging ranks learn a compressor of a running MPI simulation's fields
and write its output compressed (ADIOS2 SST streams, BP5 output)."""

EPILOG = """\
examples:
  stagelearn validate run.yaml                      check a run YAML and its ADIOS2 XML
  stagelearn run run.yaml                           both sides (two mpiexec jobs), then the report
  mpiexec -n 1 stagelearn stage run.yaml --run-dir run &
  mpiexec -n 2 python my_sim.py --run-dir run       your own code through Producer
  stagelearn report run.yaml --run-dir run          table, summary.json, summary.png
  stagelearn decode run/compressed.bp --step 29 --var T -o T29.npy

exit codes:
  0    success
  1    any other error (a traceback is logged)
  2    invalid configuration, command line or input file; also a run directory in
       use by a live job (the message names it and the pid)
  3    a peer never came or stopped answering (timeouts; `run`: staging could not
       read the code's stream, or the code closed it before staging opened it)
  4    a peer went away mid-run
  5    a model update was malformed
  6    ADIOS2 missing or lacking MPI (stagelearn's own ADIOS2)
  7    the simulation failed: `run` with simulation.type external, the code exited
       non-zero (its status and last log lines are printed; e.g. an ADIOS2 exception
       such as MissingOperatorFailure aborting it)
  130  interrupted (SIGINT), 143 terminated (SIGTERM): the side stopped at a step boundary,
       or at once (within 2 s) while it waited in Open
"""

CONFIG_HELP = "the run YAML (keys: docs/configuration.md; check it with `stagelearn validate`)"

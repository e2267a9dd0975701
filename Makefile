# stagelearn: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
#
#   STAGELEARN_ADIOS2=mpi    (default) build ADIOS2 2.12.1 with MPI from the PyPI sdist, cached in
#                            ~/.cache/stagelearn (about 6 min once on 2 cores, seconds afterwards)
#   STAGELEARN_ADIOS2=wheel  use PyPI's serial adios2 wheel (no compiler; per-rank stream layout)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAGELEARN_ADIOS2 ?= mpi
ADIOS2_VERSION := 2.12.1.1001
STAMP := $(VENV)/.stagelearn-setup-$(STAGELEARN_ADIOS2)

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml .ci/build_adios2.sh Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	# MPI first: the ADIOS2 build compiles against the mpich wheel's mpicc (and its check imports numpy)
	$(PY) -m pip install -q --disable-pip-version-check "mpich>=4" "mpi4py>=4" numpy
ifeq ($(STAGELEARN_ADIOS2),wheel)
	rm -f $(VENV)/lib/python*/site-packages/stagelearn-adios2-mpi.pth
	$(PY) -m pip install -q --disable-pip-version-check "adios2==$(ADIOS2_VERSION)"
else ifeq ($(STAGELEARN_ADIOS2),mpi)
	$(PY) -m pip uninstall -q -y adios2 2>/dev/null || true
	PATH="$(abspath $(VENV))/bin:$$PATH" ADIOS2_VERSION=$(ADIOS2_VERSION) .ci/build_adios2.sh $(VENV)
else
	$(error STAGELEARN_ADIOS2 must be mpi or wheel, not $(STAGELEARN_ADIOS2))
endif
	$(PY) -m pip install -q --disable-pip-version-check -e ".[mpi,torch,baselines,bench,test,examples]"
	# compile the stream codec's numba kernels once (cached next to the modules), not in every rank of the first run
	$(PY) -m stagelearn.analytics.stream_codec.warmup
	rm -f $(VENV)/.stagelearn-setup-*
	touch $@

demo: setup
	$(VENV)/bin/stagelearn run examples/gray_scott.yaml

test: setup
	$(PY) -m pytest

# unit tests only (no mpiexec/SST processes)
test-fast: setup
	$(PY) -m pytest -m "not mpi and not sst"

# benchopt comparison (reduced config, about 1 min here, well under the 15-min budget) -> results/bench/summary.{md,csv}, rd_*.png
bench: setup
	rm -f benchmarks/outputs/bench.parquet  # benchopt never overwrites: it would write bench_1.parquet
	cd benchmarks && PATH="$(abspath $(VENV))/bin:$$PATH" ../$(VENV)/bin/benchopt run . --config run_config.yml --no-plot --no-html --no-cache --output bench
	$(PY) benchmarks/bench_summary.py benchmarks/outputs/bench.parquet --out results/bench

clean:
	rm -rf $(VENV) results build *.egg-info

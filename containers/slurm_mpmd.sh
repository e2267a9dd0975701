#!/bin/bash
# stagelearn launch --scheduler slurm --mode mpmd: generated from examples/gray_scott.yaml
# simulation: 4 ranks (gray_scott); staging: 2 ranks; run directory results/gray_scott
# Submit from the directory the relative paths are relative to (sbatch starts the job there).
# NOTE: this run's SST streams use NetworkInterface=lo (loopback; adios2.network_interface, default lo): both sides must then share one node; for a multi-node job set adios2.network_interface to the nodes' high-speed interface (e.g. hsn0, ib0) in the run YAML (containers/README.md)
# One allocation, two concurrent job steps (each its own MPI_COMM_WORLD); not --multi-prog,
# which would put both sides in one MPI_COMM_WORLD. With per-node memory allocation, add
# --mem-per-cpu so that the first step does not take all the memory of the node.
#SBATCH --job-name=stagelearn-gray_scott
#SBATCH --time=00:35:00
#SBATCH --ntasks=6
#SBATCH --nodes=1  # the XML's NetworkInterface=lo: both sides on one node

set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-$PWD}"
# Job steps get this script's environment, also under sbatch --export=NONE (which steps would inherit).
export SLURM_EXPORT_ENV=ALL
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} PYTHONUNBUFFERED=1
# SST contact files go to <run dir>/sst: a directory both sides must see (shared file system / bind).
# Stale ones of an earlier run are removed by the sides themselves, judged by their owner's claim
# (a live job's are never touched: a second job on this run directory stops with exit 2).
apptainer exec stagelearn.sif mkdir -p results/gray_scott/sst || exit 2

srun --exact --ntasks=2 --mpi=pmi2 apptainer run --app stage stagelearn.sif examples/gray_scott.yaml --run-dir results/gray_scott &
stage_pid=$!
srun --exact --ntasks=4 --mpi=pmi2 apptainer run --app sim stagelearn.sif examples/gray_scott.yaml --run-dir results/gray_scott &
sim_pid=$!
sim_rc=0; stage_rc=0
wait "$sim_pid" || sim_rc=$?
wait "$stage_pid" || stage_rc=$?
if [ "$sim_rc" -ne 0 ] || [ "$stage_rc" -ne 0 ]; then
  echo "stagelearn: simulation exited with $sim_rc, staging with $stage_rc" >&2
  if [ "$sim_rc" -ne 0 ]; then exit "$sim_rc"; else exit "$stage_rc"; fi
fi
apptainer exec stagelearn.sif stagelearn report examples/gray_scott.yaml --run-dir results/gray_scott

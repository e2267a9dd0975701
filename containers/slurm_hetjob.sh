#!/bin/bash
# stagelearn launch --scheduler slurm --mode hetjob: generated from examples/gray_scott.yaml
# simulation: 4 ranks (gray_scott); staging: 2 ranks; run directory results/gray_scott
# Submit from the directory the relative paths are relative to (sbatch starts the job there).
# NOTE: this run's SST streams use NetworkInterface=lo (loopback; adios2.network_interface, default lo): both sides must then share one node; for a multi-node job set adios2.network_interface to the nodes' high-speed interface (e.g. hsn0, ib0) in the run YAML (containers/README.md); this heterogeneous job stops at start (exit 2) if its components run on different nodes: set adios2.network_interface, or use --mode mpmd (pinned to one node)
# Heterogeneous job: component 0 = simulation, component 1 = staging.
#SBATCH --job-name=stagelearn-gray_scott
#SBATCH --time=00:35:00
#SBATCH --ntasks=4
#SBATCH hetjob
#SBATCH --time=00:35:00
#SBATCH --ntasks=2

set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-$PWD}"
# Job steps get this script's environment, also under sbatch --export=NONE (which steps would inherit).
export SLURM_EXPORT_ENV=ALL
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} PYTHONUNBUFFERED=1
# SST over lo (adios2.network_interface): both components must share ONE node, else stop now (exit 2).
g0=${SLURM_JOB_NODELIST_HET_GROUP_0:-}; g1=${SLURM_JOB_NODELIST_HET_GROUP_1:-}
if [ -z "$g0" ] || [ "$g0" != "$g1" ] || [[ "$g0" == *[,[]* ]]; then
  ifaces=$(echo $(ls /sys/class/net 2>/dev/null | grep -vx lo))
  echo "stagelearn: adios2.network_interface is lo (loopback) but this heterogeneous job's components run on ${g0:-?} (simulation) and ${g1:-?} (staging): SST cannot connect across nodes. Set adios2.network_interface in the run YAML to the nodes' interface (interfaces on this node: ${ifaces:-?}; hsn0 on Slingshot, ib0 on InfiniBand; 'ip -br addr' on a compute node) and regenerate, or use 'stagelearn launch --mode mpmd' on one node" >&2
  exit 2
fi
# SST contact files go to <run dir>/sst: a directory both sides must see (shared file system / bind).
# Stale ones of an earlier run are removed by the sides themselves, judged by their owner's claim
# (a live job's are never touched: a second job on this run directory stops with exit 2).
apptainer exec stagelearn.sif mkdir -p results/gray_scott/sst || exit 2

srun --het-group=1 --ntasks=2 --mpi=pmi2 apptainer run --app stage stagelearn.sif examples/gray_scott.yaml --run-dir results/gray_scott &
stage_pid=$!
srun --het-group=0 --ntasks=4 --mpi=pmi2 apptainer run --app sim stagelearn.sif examples/gray_scott.yaml --run-dir results/gray_scott &
sim_pid=$!
sim_rc=0; stage_rc=0
wait "$sim_pid" || sim_rc=$?
wait "$stage_pid" || stage_rc=$?
if [ "$sim_rc" -ne 0 ] || [ "$stage_rc" -ne 0 ]; then
  echo "stagelearn: simulation exited with $sim_rc, staging with $stage_rc" >&2
  if [ "$sim_rc" -ne 0 ]; then exit "$sim_rc"; else exit "$stage_rc"; fi
fi
apptainer exec stagelearn.sif stagelearn report examples/gray_scott.yaml --run-dir results/gray_scott

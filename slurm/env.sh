# Sourced by the sbatch templates: the job's environment, the same on every node.
# Site specifics go in $MEDWEAVE_SITE_ENV (module loads, proxies, scratch paths), for example:
#   export MEDWEAVE_SITE_ENV=$HOME/medweave-site.sh   # module load CUDA/12.4 NCCL/2.21 ...
if [ -n "${MEDWEAVE_SITE_ENV:-}" ]; then
  set +u  # module systems (Lmod) read unset variables
  # shellcheck disable=SC1090
  source "$MEDWEAVE_SITE_ENV"
  set -u
fi
# The project's virtual environment (bash scripts/setup.sh made it), unless one is active.
if [ -z "${VIRTUAL_ENV:-}" ]; then
  # shellcheck disable=SC1091
  source "${MEDWEAVE_VENV:-$SLURM_SUBMIT_DIR/.venv}/bin/activate"
fi
# Compute nodes have no internet: models load from local paths, never from a hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
# One rank per task: its threads are the CPUs Slurm gave that task, no more.
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# Rank 0's node, as every rank must reach it (Lightning reads MASTER_ADDR and MASTER_PORT).
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export MASTER_ADDR
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))  # not the submitting shell's: per job
export MPLCONFIGDIR=${MPLCONFIGDIR:-${TMPDIR:-/tmp}/medweave-mpl-$SLURM_JOB_ID}
echo "medweave job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST;" \
  "master $MASTER_ADDR:$MASTER_PORT; ${SLURM_NTASKS:-1} task(s); start $(date +%s.%N)"

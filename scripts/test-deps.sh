#!/usr/bin/env bash
# System packages the integration tests drive for real, from Debian when missing (needs root or
# sudo); a no-op when they are there:
#   chromium                               renders the evaluation report
#   postgresql                             the team MLflow server's database (scripts/mlflow-server.sh)
#   slurmctld slurmd slurm-client munge    a two-node Slurm cluster on this machine (tests/slurm_cluster.py)
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/lib/postgresql/15/bin/initdb ] || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
command -v munged >/dev/null 2>&1 || missing+=(munge)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null || echo "apt-get update failed; trying the cached package lists" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

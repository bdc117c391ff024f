#!/bin/bash
# Run a lesionsweep sweep on a SLURM allocation: Ray head on the first node, Ray workers on the
# others, then the sweep driver connects with --address.
#
#   sbatch cluster/slurm.sh specs/my_sweep.yaml
#
# The sweep folder (storage) MUST be on a filesystem every node mounts at the same path
# (e.g. $SCRATCH on Lustre/GPFS/NFS) or an object store URI.
#SBATCH --job-name=lesionsweep
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --output=lesionsweep-%j.log
set -euo pipefail

SPEC=${1:?usage: sbatch cluster/slurm.sh SPEC.yaml [extra lesionsweep sweep args]}
shift
STORAGE=${LESIONSWEEP_STORAGE:-$SCRATCH/lesionsweep-sweeps}
# source your environment here, e.g.: source ~/venvs/lesionsweep/bin/activate

# token authentication (Ray >= 2.52): one token per job, on the shared home/scratch filesystem
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/lesionsweep_${SLURM_JOB_ID}.token}
mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
python -c "import secrets; print(secrets.token_hex(32))" > "$RAY_AUTH_TOKEN_PATH"
chmod 600 "$RAY_AUTH_TOKEN_PATH"
trap 'rm -f "$RAY_AUTH_TOKEN_PATH"' EXIT

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
port=6379
export RAY_ADDRESS="$head_ip:$port"

echo "Ray head on $head ($RAY_ADDRESS)"
srun --nodes=1 --ntasks=1 -w "$head" \
  ray start --head --node-ip-address="$head_ip" --port=$port \
    --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_ON_NODE:-0}" \
    --dashboard-host=127.0.0.1 --block &
sleep 20

for node in "${nodes[@]:1}"; do
  echo "Ray worker on $node"
  srun --nodes=1 --ntasks=1 -w "$node" \
    ray start --address="$RAY_ADDRESS" \
      --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_ON_NODE:-0}" --block &
  sleep 5
done
sleep 10
ray status

# the driver runs here (first node's batch step); progress lines go to the job log.
# Resume after a preemption or time-out: lesionsweep resume "$STORAGE/<name>" --address "$RAY_ADDRESS"
lesionsweep sweep "$SPEC" --address "$RAY_ADDRESS" --set storage="$STORAGE" "$@"
ray stop

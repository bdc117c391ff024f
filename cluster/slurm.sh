#!/bin/bash
# Run a lesionsweep sweep on a SLURM allocation: Ray head on the first node, Ray workers on the
# others, then the sweep driver connects with --address.
#
#   sbatch cluster/slurm.sh specs/my_sweep.yaml [extra `lesionsweep sweep` arguments]
#
# The sweep folder (storage) MUST be on a filesystem every node mounts at the same path
# (e.g. $SCRATCH on Lustre/GPFS/NFS) or an object store URI.
#
# What this script guarantees:
# * the Ray token is private from its first byte (created under umask 077 in a 0700 folder) and
#   deleted when the job ends;
# * the sweep starts only once `ray status` lists every node of the allocation (it gives up with
#   a clear error after LESIONSWEEP_RAY_WAIT_S seconds, default 300);
# * at the end it stops only the Ray processes it started (its own `srun` steps; SLURM ends
#   every process of a step), never `ray stop`, which would also end other Ray processes of
#   yours on these nodes.
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
STORAGE=${LESIONSWEEP_STORAGE:-${SCRATCH:?set SCRATCH or LESIONSWEEP_STORAGE}/lesionsweep-sweeps}
WAIT_S=${LESIONSWEEP_RAY_WAIT_S:-300}
PORT=${LESIONSWEEP_RAY_PORT:-6379}
# source your environment here, e.g.: source ~/venvs/lesionsweep/bin/activate

ray_steps=()
token_dir=${LESIONSWEEP_TOKEN_DIR:-$HOME/.ray}
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$token_dir/lesionsweep_${SLURM_JOB_ID}.token"

cleanup() {
  # stop the Ray steps this job started (srun forwards the signal; SLURM ends the whole step)
  if ((${#ray_steps[@]})); then
    kill -TERM "${ray_steps[@]}" 2>/dev/null || true
    wait "${ray_steps[@]}" 2>/dev/null || true
  fi
  rm -f "$RAY_AUTH_TOKEN_PATH"
}
trap cleanup EXIT

# token authentication (Ray >= 2.52): one token per job on the shared home, private at once
(
  umask 077
  mkdir -p "$token_dir"
  chmod 700 "$token_dir"
  python -c "import secrets; print(secrets.token_hex(32))" > "$RAY_AUTH_TOKEN_PATH"
)

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
export RAY_ADDRESS="$head_ip:$PORT"

echo "Ray head on $head ($RAY_ADDRESS)"
srun --nodes=1 --ntasks=1 -w "$head" \
  ray start --head --node-ip-address="$head_ip" --port="$PORT" \
    --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_ON_NODE:-0}" \
    --dashboard-host=127.0.0.1 --block &
ray_steps+=("$!")

# wait_nodes N: until `ray status` lists N active nodes, or fail after WAIT_S seconds
wait_nodes() {
  local want=$1 have=0 waited=0
  while ((waited < WAIT_S)); do
    have=$(ray status --address "$RAY_ADDRESS" 2>/dev/null \
      | awk '/^Active:/ {a = 1; next} /^[^ ]/ {a = 0} a && /node_/ {n++} END {print n + 0}' \
      || echo 0)
    if ((have >= want)); then
      echo "Ray: $have/$want node(s) up after ${waited}s"
      return 0
    fi
    sleep 2
    waited=$((waited + 2))
  done
  echo "ERROR: only $have of $want Ray node(s) joined $RAY_ADDRESS within ${WAIT_S}s" \
    "(raise LESIONSWEEP_RAY_WAIT_S or see this job's log)" >&2
  return 1
}

wait_nodes 1
for node in "${nodes[@]:1}"; do
  echo "Ray worker on $node"
  srun --nodes=1 --ntasks=1 -w "$node" \
    ray start --address="$RAY_ADDRESS" \
      --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_ON_NODE:-0}" --block &
  ray_steps+=("$!")
done
wait_nodes "${#nodes[@]}"
ray status --address "$RAY_ADDRESS"

# the driver runs here (first node's batch step); progress lines go to the job log.
# Resume after a preemption or time-out: lesionsweep resume "$STORAGE/<name>" --address "$RAY_ADDRESS"
lesionsweep sweep "$SPEC" --address "$RAY_ADDRESS" --set storage="$STORAGE" "$@"

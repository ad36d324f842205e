#!/usr/bin/env bash
# Train laser_jax on GPU nodes of a SLURM cluster: writes an sbatch script and submits it.
#
# Usage (on a login node, from a checkout on a filesystem that the compute nodes share):
#   launch/slurm_gpu.sh --config=CONFIG.py[:variant] --workdir=DIR \
#       [--nodes=1] [--gpus_per_node=8] [--procs_per_node=GPUS_PER_NODE] \
#       [--partition=P] [--account=A] [--qos=Q] [--time=HH:MM:SS] [--job_name=laser_jax] \
#       [--cpus_per_task=N] [--mem=SIZE] [--exclusive] [--sbatch_arg=--reservation=R ...] \
#       [--venv=PATH | --container=IMAGE [--container_mounts=SRC:DST,...]] [--module=NAME ...] \
#       [--setup=SHELL_LINE ...] [--env=KEY=VALUE ...] [--mem_fraction=0.9] [--python=python] \
#       [--repo=DIR] [--log_dir=DIR] [--script=FILE] [--dry_run] [--check_python=PATH] [--skip_check] \
#       [--config.a.b=value ...] [-- EXTRA_TRAIN_ARGS ...]
#
# The job runs `srun python -m laser_jax.train --config=CONFIG --workdir=DIR [overrides]`, one
# task per GPU by default (--procs_per_node=1: one per node, owning all its GPUs; any divisor of
# --gpus_per_node works). Inside each task jax.distributed.initialize() detects SLURM by itself:
# coordinator = first node of the step (port derived from the job id), process count =
# SLURM_NTASKS, process id = SLURM_PROCID. Every task sees all GPUs of its node (--gpu-bind=none)
# and the script sets JAX_LOCAL_DEVICE_IDS from SLURM_LOCALID to give each task its own share.
# --workdir must be visible to all nodes (shared filesystem or gs://); a relative path is relative
# to --repo (default: this checkout).
#
# Environment in the job:
#   XLA_PYTHON_CLIENT_MEM_FRACTION  share of each GPU's memory JAX preallocates (--mem_fraction,
#                                   default 0.9; JAX's own default is 0.75).
#   NCCL_DEBUG                      WARN unless already set; INFO shows the topology/transport
#                                   NCCL picked (use it when a multi-node job hangs at start).
#   Often needed on multi-node clusters, set with --env (ask your cluster's documentation):
#   NCCL_SOCKET_IFNAME=ib0 or eth0 (interface for bootstrap), NCCL_IB_HCA=mlx5 (InfiniBand
#   adapters), NCCL_IB_DISABLE=1 (no InfiniBand), NCCL_NET_GDR_LEVEL (GPUDirect RDMA).
#   XLA_FLAGS, e.g. --env=XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true, for overlap of
#   communication and compute.
# Software: --venv sources PATH/bin/activate; --module runs `module load NAME`; --setup adds any
# shell line before srun; --container runs every task in IMAGE with pyxis/enroot
# (srun --container-image), mounting --repo at the same path.
#
# Before writing or submitting anything, the config is checked on this (login) node, without an
# accelerator: `python -m laser_jax.train --check --config=CONFIG --workdir=DIR [overrides]`
# validates every field and the data, tokenizer and model directories it names, so a job never
# waits in the queue to fail on a typo. It runs in --repo with --check_python (default:
# --venv's python, else --python); --skip_check skips it (e.g. when this node cannot run the
# training environment, or the paths exist only on the compute nodes).
#
# --dry_run prints the commands (mkdir, the sbatch script as a here-document, sbatch), executes
# nothing. The script is written to --script (default LOG_DIR/JOB_NAME-TIMESTAMP.sbatch; LOG_DIR
# defaults to REPO/runs/slurm, which also receives the job's output JOB_NAME-JOBID.out).
# The sbatch binary can be replaced with the LASER_SBATCH environment variable.
set -euo pipefail

PROG=slurm_gpu.sh
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SBATCH=${LASER_SBATCH:-sbatch}
HEREDOC_END=LASER_JAX_SBATCH_EOF

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

config="" workdir="" nodes=1 gpus_per_node=8 procs_per_node=""
partition="" account="" qos="" time_limit="" job_name=laser_jax cpus_per_task="" mem="" exclusive=0
venv="" container="" container_mounts="" mem_fraction=0.9 python=python
repo=$REPO_ROOT log_dir="" script="" dry_run=0 check_python="" skip_check=0
modules=() setups=() envs=() sbatch_args=() overrides=()

# Options take their value as --opt=value or --opt value.
while (($#)); do
  arg=$1
  shift
  case "$arg" in
    --) overrides+=("$@"); break ;;
    --config.*) overrides+=("$arg"); continue ;;
    -h | --help) usage; exit 0 ;;
    --dry_run) dry_run=1; continue ;;
    --exclusive) exclusive=1; continue ;;
    --skip_check) skip_check=1; continue ;;
  esac
  key=${arg%%=*}
  if [[ "$arg" == *=* ]]; then
    value=${arg#*=}
  else
    (($#)) || die "$key needs a value"
    value=$1
    shift
  fi
  case "$key" in
    --config) config=$value ;;
    --workdir) workdir=$value ;;
    --nodes) nodes=$value ;;
    --gpus_per_node) gpus_per_node=$value ;;
    --procs_per_node) procs_per_node=$value ;;
    --partition) partition=$value ;;
    --account) account=$value ;;
    --qos) qos=$value ;;
    --time) time_limit=$value ;;
    --job_name) job_name=$value ;;
    --cpus_per_task) cpus_per_task=$value ;;
    --mem) mem=$value ;;
    --sbatch_arg) sbatch_args+=("$value") ;;
    --venv) venv=$value ;;
    --container) container=$value ;;
    --container_mounts) container_mounts=$value ;;
    --module) modules+=("$value") ;;
    --setup) setups+=("$value") ;;
    --env) envs+=("$value") ;;
    --mem_fraction) mem_fraction=$value ;;
    --python) python=$value ;;
    --check_python) check_python=$value ;;
    --repo) repo=$value ;;
    --log_dir) log_dir=$value ;;
    --script) script=$value ;;
    --dry_run | --exclusive | --skip_check) die "$key takes no value" ;;
    *) die "unknown option '$key'" ;;
  esac
done

# ---- validate ----
[[ -n "$config" ]] || die "--config is required (e.g. --config=configs/base.py:variant, relative to --repo)"
[[ -n "$workdir" ]] || die "--workdir is required (a directory all nodes can write, or gs://BUCKET/DIR)"
check_int --nodes "$nodes"
check_int --gpus_per_node "$gpus_per_node"
procs_per_node=${procs_per_node:-$gpus_per_node}
check_int --procs_per_node "$procs_per_node"
((gpus_per_node % procs_per_node == 0)) ||
  die "--procs_per_node ($procs_per_node) must divide --gpus_per_node ($gpus_per_node)"
[[ -z "$cpus_per_task" ]] || check_int --cpus_per_task "$cpus_per_task"
[[ "$mem_fraction" =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "--mem_fraction must be a number in (0, 1] (got '$mem_fraction')"
[[ "$job_name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--job_name may only use letters, digits and _ . - (got '$job_name')"
[[ -z "$venv" || -z "$container" ]] || die "--venv and --container are alternatives; use --setup to activate a venv inside a container"
[[ -z "$container_mounts" || -n "$container" ]] || die "--container_mounts needs --container"
for e in "${envs[@]}"; do
  check_env_assignment "$e"
done
[[ -d "$repo" ]] || die "--repo '$repo' is not a directory"
repo=$(cd "$repo" && pwd)
log_dir=${log_dir:-$repo/runs/slurm}
[[ "$log_dir" == /* ]] || log_dir=$PWD/$log_dir
script=${script:-$log_dir/$job_name-$(date +%Y%m%d-%H%M%S).sbatch}
gpus_per_proc=$((gpus_per_node / procs_per_node))

# ---- the sbatch script ----
sbatch_script() {
  echo "#!/bin/bash"
  echo "# laser_jax training written by launch/slurm_gpu.sh: $nodes node(s) x $gpus_per_node GPU(s)," \
    "$procs_per_node process(es) per node, $gpus_per_proc GPU(s) per process."
  echo "#SBATCH --job-name=$job_name"
  echo "#SBATCH --nodes=$nodes"
  echo "#SBATCH --ntasks-per-node=$procs_per_node"
  echo "#SBATCH --gpus-per-node=$gpus_per_node"
  echo "#SBATCH --output=$log_dir/%x-%j.out"
  [[ -z "$partition" ]] || echo "#SBATCH --partition=$partition"
  [[ -z "$account" ]] || echo "#SBATCH --account=$account"
  [[ -z "$qos" ]] || echo "#SBATCH --qos=$qos"
  [[ -z "$time_limit" ]] || echo "#SBATCH --time=$time_limit"
  [[ -z "$cpus_per_task" ]] || echo "#SBATCH --cpus-per-task=$cpus_per_task"
  [[ -z "$mem" ]] || echo "#SBATCH --mem=$mem"
  ((exclusive == 0)) || echo "#SBATCH --exclusive"
  local a
  for a in "${sbatch_args[@]}"; do
    echo "#SBATCH $a"
  done
  echo "set -euo pipefail"
  echo
  echo "cd $(quote "$repo")"
  for a in "${modules[@]}"; do
    echo "module load $(quote "$a")"
  done
  if [[ -n "$venv" ]]; then
    echo "# shellcheck source=/dev/null"
    echo "source $(quote "$venv/bin/activate")"
  fi
  for a in "${setups[@]}"; do
    echo "$a"
  done
  echo
  echo "# Share of each GPU's memory that JAX preallocates."
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction"
  echo "# NCCL_DEBUG=INFO shows what NCCL picked; see launch/slurm_gpu.sh --help for other NCCL_* settings."
  echo "export NCCL_DEBUG=\${NCCL_DEBUG:-WARN}"
  for a in "${envs[@]}"; do
    echo "export $(quote "$a")"
  done
  if [[ -n "$cpus_per_task" ]]; then
    echo "# srun does not inherit --cpus-per-task from sbatch (Slurm >= 22.05)."
    echo "export SRUN_CPUS_PER_TASK=\$SLURM_CPUS_PER_TASK"
  fi
  echo "# GPUs per process; task SLURM_LOCALID uses GPUs [LOCALID * n, (LOCALID + 1) * n) of its node."
  echo "export LASER_GPUS_PER_PROC=$gpus_per_proc"
  echo
  echo "echo \"laser_jax: job \$SLURM_JOB_ID, nodes \$SLURM_JOB_NODELIST, \$SLURM_NTASKS processes\""
  local srun=(srun --kill-on-bad-exit=1 --gpu-bind=none)
  if [[ -n "$container" ]]; then
    local mounts="$repo:$repo${container_mounts:+,$container_mounts}"
    srun+=(--container-image="$container" --container-mounts="$mounts" --container-workdir="$repo")
  fi
  # shellcheck disable=SC2016  # expanded inside each task, not here
  local per_task='first=$((SLURM_LOCALID * LASER_GPUS_PER_PROC)); export JAX_LOCAL_DEVICE_IDS=$(seq -s, "$first" $((first + LASER_GPUS_PER_PROC - 1))); exec "$@"'
  local train=("$python" -m laser_jax.train "--config=$config" "--workdir=$workdir" "${overrides[@]}")
  echo "# bash -c: each task computes its GPU ids, then runs the training command (its \"\$@\")."
  echo "# shellcheck disable=SC2016"
  echo "$(quote_all "${srun[@]}") \\"
  echo "  bash -c $(squote "$per_task") laser_jax_task \\"
  echo "  $(quote_all "${train[@]}")"
}

# ---- check the config here, before anything is written or queued ----
if ((skip_check == 0)); then
  check_python=${check_python:-${venv:+$venv/bin/python}}
  check_python=${check_python:-$python}
  check=(env -C "$repo" JAX_PLATFORMS=cpu "$check_python" -m laser_jax.train --check "--config=$config"
    "--workdir=$workdir" "${overrides[@]}")
  if ((dry_run)); then
    run "${check[@]}"
  else
    echo "$PROG: checking the config: $(quote_all "${check[@]}")" >&2
    "${check[@]}" >&2 || die "the config did not pass the check above; nothing was submitted" \
      "(fix it, or --skip_check to submit anyway)"
  fi
fi

mkdirs=("$log_dir")
[[ "$(dirname "$script")" == "$log_dir" ]] || mkdirs+=("$(dirname "$script")")
run mkdir -p "${mkdirs[@]}"
if ((dry_run)); then
  echo "cat > $(quote "$script") <<'$HEREDOC_END'"
  sbatch_script
  echo "$HEREDOC_END"
else
  sbatch_script >"$script"
  echo "$PROG: wrote $script" >&2
fi
run "$SBATCH" "$script"

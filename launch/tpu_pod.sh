#!/usr/bin/env bash
# Train laser_jax on a Cloud TPU VM (single host or pod slice) with `gcloud compute tpus tpu-vm`.
#
# Usage:
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --config=CONFIG.py[:variant] --workdir=gs://BUCKET/DIR \
#       [--project=P] [--create --accelerator_type=v5p-32 --version=RUNTIME [--spot|--preemptible]] \
#       [--git_url=URL [--git_ref=REF]] [--skip_code] [--skip_install] [--detach] [--dry_run] \
#       [--config.a.b=value ...] [-- EXTRA_TRAIN_ARGS ...]
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --logs [--log_worker=0|all]   # follow the training log
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --stop                        # kill training on all workers
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --delete                      # delete the TPU VM
#
# Steps, in order (each is one gcloud command run on ALL workers with --worker=all):
#   create   only with --create: `gcloud compute tpus tpu-vm create` (--accelerator_type, --version
#            = TPU software runtime, e.g. tpu-ubuntu2204-base / v2-alpha-tpuv5 / v2-alpha-tpuv6e).
#   code     default: tar this checkout (without .git, .venv, runs/) and `tpu-vm scp` it to every
#            worker, unpacked into ~/REMOTE_DIR (--remote_dir, default laser_jax). With --git_url the
#            workers `git clone`/`git fetch` URL and check out --git_ref (default main) instead; the
#            workers then need read access to the repository. --skip_code skips this step.
#   install  `pip install -r requirements.txt 'jax[tpu]' -f <libtpu index>` with --python (default
#            python3; laser_jax needs Python >= 3.11, so pick a runtime that has it or install one
#            with --setup_cmd, e.g. --setup_cmd='sudo apt-get install -y python3.11-venv' and
#            --venv). --venv=NAME creates ~/NAME with --python and installs into it.
#            --skip_install skips this step (e.g. when only the code changed).
#   run      `python -m laser_jax.train --config=CONFIG --workdir=WORKDIR [overrides]` on every
#            worker at once: all hosts run the same command and jax.distributed.initialize() finds
#            the other workers from the TPU metadata. Output goes to the terminal and to
#            ~/laser_jax_train.log on each worker; with --detach training runs in the background
#            (nohup) and the script returns; follow it with --logs.
#
# Multi-host slices: every worker writes checkpoints and summaries to the same --workdir, so it must
# be a gs:// path; a local path is refused unless the slice is known to have one worker (from
# --accelerator_type, e.g. v4-8, v5p-8, v5litepod-8, v6e-8) or --single_host is given.
# Pass --accelerator_type without --create to let the script check an existing TPU. A local
# --workdir that is not absolute is taken relative to the worker's home directory.
#
# Other options:
#   --env=KEY=VALUE        extra environment variable for training (repeatable)
#   --config.x.y=VALUE     config override passed through to laser_jax.train (repeatable); so is
#                          everything after a bare `--`
#   --dry_run              print the commands (one per line, shell-quoted) and execute nothing
#   --help                 print this text
# The gcloud binary can be replaced with the GCLOUD environment variable (tests use a fake one).
# A stuck run ("TPU in use by another process") is usually a previous run still alive: use --stop.
set -euo pipefail

PROG=tpu_pod.sh
LIBTPU_INDEX=https://storage.googleapis.com/jax-releases/libtpu_releases.html
# shellcheck disable=SC2088  # expanded by the remote shell, hence literal here
LOG_FILE='~/laser_jax_train.log'
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GCLOUD=${GCLOUD:-gcloud}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Number of workers (hosts) of an accelerator type, or empty when unknown.
# v2/v3/v4/v5p count TensorCores (8 per host); v5e/v6e count chips (1-8 on one host, else 4 per host).
num_workers_of() {
  local type=$1 n
  [[ "$type" =~ -([0-9]+)$ ]] || return 0
  n=${BASH_REMATCH[1]}
  case "$type" in
    v2-* | v3-* | v4-* | v5p-*) echo $(((n + 7) / 8)) ;;
    v5litepod-* | v5e-* | v6e-*) if ((n <= 8)); then echo 1; else echo $((n / 4)); fi ;;
    *) ;;
  esac
}

# A file or directory name in the worker's home directory (these get rm -rf'ed, so keep them plain).
check_plain_name() {
  [[ "$2" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || die "$1 must be a plain directory name in the worker's home (got '$2')"
}

name="" zone="" project="" config="" workdir=""
create=0 accelerator_type="" version="" spot=0 preemptible=0 single_host=0
git_url="" git_ref=main remote_dir=laser_jax python=python3 venv="" setup_cmd=""
skip_code=0 skip_install=0 detach=0 dry_run=0
action=train log_worker=0
envs=() overrides=()

# Options take their value as --opt=value or --opt value.
while (($#)); do
  arg=$1
  shift
  case "$arg" in
    --) overrides+=("$@"); break ;;
    --config.*) overrides+=("$arg"); continue ;;
    -h | --help) usage; exit 0 ;;
  esac
  key=${arg%%=*}
  if [[ "$arg" == *=* ]]; then
    value=${arg#*=} has_value=1
  else
    value="" has_value=0
  fi
  case "$key" in
    --create | --spot | --preemptible | --single_host | --skip_code | --skip_install | --detach | \
      --dry_run | --logs | --stop | --delete)
      ((has_value == 0)) || die "$key takes no value"
      case "$key" in
        --create) create=1 ;;
        --spot) spot=1 ;;
        --preemptible) preemptible=1 ;;
        --single_host) single_host=1 ;;
        --skip_code) skip_code=1 ;;
        --skip_install) skip_install=1 ;;
        --detach) detach=1 ;;
        --dry_run) dry_run=1 ;;
        --logs) action=logs ;;
        --stop) action=stop ;;
        --delete) action=delete ;;
      esac
      continue
      ;;
  esac
  if ((has_value == 0)); then
    (($#)) || die "$key needs a value"
    value=$1
    shift
  fi
  case "$key" in
    --name) name=$value ;;
    --zone) zone=$value ;;
    --project) project=$value ;;
    --config) config=$value ;;
    --workdir) workdir=$value ;;
    --accelerator_type) accelerator_type=$value ;;
    --version) version=$value ;;
    --git_url) git_url=$value ;;
    --git_ref) git_ref=$value ;;
    --remote_dir) remote_dir=$value ;;
    --python) python=$value ;;
    --venv) venv=$value ;;
    --setup_cmd) setup_cmd=$value ;;
    --env) envs+=("$value") ;;
    --log_worker) log_worker=$value ;;
    *) die "unknown option '$key'" ;;
  esac
done

# ---- validate ----
[[ -n "$name" ]] || die "--name (the TPU VM name) is required"
[[ -n "$zone" ]] || die "--zone is required (e.g. --zone=us-central2-b)"
check_plain_name --remote_dir "$remote_dir"
[[ -z "$venv" ]] || check_plain_name --venv "$venv"
((spot + preemptible < 2)) || die "--spot and --preemptible are mutually exclusive"

# Flags every gcloud call shares.
where=(--zone="$zone")
[[ -z "$project" ]] || where+=(--project="$project")
tpu=("$GCLOUD" compute tpus tpu-vm)

case "$action" in
  delete)
    run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
    exit 0
    ;;
  logs)
    [[ "$log_worker" =~ ^([0-9]+|all)$ ]] || die "--log_worker must be a worker number or 'all'"
    run "${tpu[@]}" ssh "$name" "${where[@]}" --worker="$log_worker" --command="tail -n 200 -F $LOG_FILE"
    exit 0
    ;;
  stop)
    # The [.] keeps pkill from matching the remote shell that runs pkill itself.
    run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="pkill -f 'laser_jax[.]train' || true"
    exit 0
    ;;
esac

[[ -n "$config" ]] || die "--config is required (e.g. --config=configs/base.py:variant, relative to the repository root)"
[[ -n "$workdir" ]] || die "--workdir is required (a gs://BUCKET/DIR path for multi-host slices)"
if ((create)); then
  [[ -n "$accelerator_type" ]] || die "--create needs --accelerator_type (e.g. v5p-32, v6e-16, v4-8)"
  [[ -n "$version" ]] || die "--create needs --version, the TPU software runtime (e.g. tpu-ubuntu2204-base, v2-alpha-tpuv6e)"
else
  ((spot + preemptible == 0)) || die "--spot/--preemptible only apply with --create"
fi
for e in "${envs[@]}"; do
  check_env_assignment "$e"
done

workers=""
((single_host)) && workers=1
[[ -n "$workers" || -z "$accelerator_type" ]] || workers=$(num_workers_of "$accelerator_type")
if [[ "$workdir" != gs://* && "$workers" != 1 ]]; then
  if [[ -n "$workers" ]]; then
    what="$accelerator_type is a multi-host slice ($workers workers)"
  else
    what="the slice may have several workers (unknown --accelerator_type)"
  fi
  die "$what, so --workdir must be a gs://BUCKET/DIR path that every worker shares; got '$workdir'." \
    "A local path would give each worker its own, inconsistent checkpoints." \
    "For a single-host TPU pass its --accelerator_type (e.g. v4-8) or --single_host."
fi

# ---- build the remote commands ----
if [[ -n "$venv" ]]; then
  # shellcheck disable=SC2088  # the tilde is for the remote shell
  py="~/$venv/bin/python"
else
  py=$(quote "$python")
fi

install_cmd="cd $remote_dir"
[[ -z "$setup_cmd" ]] || install_cmd="$setup_cmd && $install_cmd"
[[ -z "$venv" ]] || install_cmd+=" && $(quote "$python") -m venv ~/$venv"
install_cmd+=" && $py -m pip install --upgrade pip"
install_cmd+=" && $py -m pip install -r requirements.txt $(quote 'jax[tpu]') -f $LIBTPU_INDEX"

train_cmd=$(quote_all "${envs[@]}")
if [[ "$workdir" == gs://* || "$workdir" == /* ]]; then
  workdir_arg=$(quote "--workdir=$workdir")
else
  # Relative to the worker's home, not to the code directory (which a new upload replaces).
  workdir_arg="--workdir=\"\$HOME\"/$(quote "$workdir")"
fi
train_cmd+="${train_cmd:+ }$py -m laser_jax.train $(quote "--config=$config") $workdir_arg"
[[ ${#overrides[@]} == 0 ]] || train_cmd+=" $(quote_all "${overrides[@]}")"
if ((detach)); then
  run_cmd="cd $remote_dir && (nohup $train_cmd > $LOG_FILE 2>&1 < /dev/null &)"
else
  run_cmd="set -o pipefail; cd $remote_dir && $train_cmd 2>&1 | tee $LOG_FILE"
fi

ssh_all=("${tpu[@]}" ssh "$name" "${where[@]}" --worker=all)

# ---- run ----
if ((create)); then
  create_cmd=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator_type" --version="$version")
  ((spot)) && create_cmd+=(--spot)
  ((preemptible)) && create_cmd+=(--preemptible)
  run "${create_cmd[@]}"
fi

if ((!skip_code)); then
  if [[ -n "$git_url" ]]; then
    d=$remote_dir
    run "${ssh_all[@]}" --command="if [ ! -d $d/.git ]; then rm -rf $d && git clone --quiet $(quote "$git_url") $d; fi && git -C $d fetch --quiet origin $(quote "$git_ref") && git -C $d checkout --quiet --force FETCH_HEAD"
  else
    tarball="${TMPDIR:-/tmp}/laser_jax_code-$name.tgz"
    run tar -czf "$tarball" --exclude=./.git --exclude=./.venv --exclude=./venv --exclude=./runs \
      --exclude=./workdir --exclude=__pycache__ --exclude='*.pyc' -C "$REPO_ROOT" .
    run "${tpu[@]}" scp "$tarball" "$name:laser_jax_code.tgz" "${where[@]}" --worker=all
    d=$remote_dir
    run "${ssh_all[@]}" --command="rm -rf $d.new && mkdir $d.new && tar -xzf laser_jax_code.tgz -C $d.new && rm -rf $d && mv $d.new $d"
  fi
fi

((skip_install)) || run "${ssh_all[@]}" --command="$install_cmd"

run "${ssh_all[@]}" --command="$run_cmd"

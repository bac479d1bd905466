#!/usr/bin/env bash
# Pretrain on several machines with torchrun's c10d rendezvous; start it once on EVERY node.
#
#   NNODES=4 MASTER=node001 launch/torchrun_multi_node.sh --config launch/configs/X.yaml [key=value ...]
#
# Run it from the repository root on each node, with runtime.out_dir on a file system all
# nodes share (checkpoints, the REQUEUE marker). Arguments go unchanged to
# `python -m eofm.pretrain`; this runs
#   torchrun --nnodes=$NNODES --nproc_per_node=$NPROC --rdzv_backend=c10d \
#            --rdzv_endpoint=$MASTER:${PORT:-29500} --rdzv_id=${RDZV_ID:-eofm} \
#            --rdzv_conf=join_timeout=${RDZV_JOIN_TIMEOUT:-120} -m eofm.pretrain "$@"
# Environment: NNODES (required; or MIN:MAX for an elastic range), MASTER (required: a host
# every node reaches, e.g. the first node; a name that does not resolve here is refused), PORT
# (default 29500), RDZV_ID (default eofm; use a fresh one per job, e.g. the scheduler's job id),
# NPROC (default: GPUs per node, else 1), RDZV_JOIN_TIMEOUT (default 120: the seconds the nodes
# that started wait for the others to join; torchrun's own default is 600. A node that never
# comes, e.g. because its check below refused the run, then fails the others after this long.
# Raise it where nodes start far apart, e.g. a slow shared file system delaying Python's
# start-up), TORCHRUN, PYTHON. launch/slurm/pretrain.sbatch sets them from a SLURM allocation.
# Before torchrun starts, the configuration is checked on this node for NNODES x NPROC ranks
# (an elastic MIN:MAX range: for what holds at any size); a refusal is one error and status 2.
# SIGTERM/SIGUSR1 sent to this script reach the ranks of this node; all ranks agree to stop.
# Exit status: the run's, except 75 when it stopped to be requeued (status 75 or a REQUEUE file
# in runtime.out_dir). Shared logic: launch/common.sh.
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
_eofm_refuse() { echo "eofm launch: error: $*" >&2; exit 2; }
[[ ${NNODES:-} =~ ^[1-9][0-9]*(:[1-9][0-9]*)?$ ]] ||
    _eofm_refuse "NNODES: expected the number of nodes (e.g. 4) or an elastic range MIN:MAX," \
                 "got '${NNODES:-}'"
[ -n "${MASTER:-}" ] || _eofm_refuse "MASTER: expected the rendezvous host (e.g. the first node)"
[[ ${PORT:-29500} =~ ^[0-9]+$ ]] && [ "${PORT:-29500}" -ge 1 ] && [ "${PORT:-29500}" -le 65535 ] ||
    _eofm_refuse "PORT: expected a TCP port 1..65535, got '${PORT:-}'"
[[ ${RDZV_JOIN_TIMEOUT:-120} =~ ^[1-9][0-9]*$ ]] ||
    _eofm_refuse "RDZV_JOIN_TIMEOUT: expected the seconds to wait for every node to join" \
                 "(a whole number >= 1), got '${RDZV_JOIN_TIMEOUT:-}'"
eofm_check_host MASTER "$MASTER" || eofm_exit_early $?  # unresolved: c10d would wait out its timeout
nproc=$(eofm_nproc) || eofm_exit_early $?
eofm_torchrun --nnodes="$NNODES" --nproc_per_node="$nproc" --rdzv_backend=c10d \
    --rdzv_endpoint="$MASTER:${PORT:-29500}" --rdzv_id="${RDZV_ID:-eofm}" \
    --rdzv_conf=join_timeout="${RDZV_JOIN_TIMEOUT:-120}" -- "$@"

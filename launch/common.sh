# shellcheck shell=bash
# Shared by launch/torchrun_single_node.sh, launch/torchrun_multi_node.sh and
# launch/slurm/pretrain.sbatch; source it, do not run it.
#
#   eofm_torchrun TORCHRUN_ARGS... -- PRETRAIN_ARGS...
#       Check the configuration for the world size TORCHRUN_ARGS start (eofm_preflight with
#       EOFM_WORLD_SIZE from eofm_world_size: status 2 when refused), then run `torchrun
#       TORCHRUN_ARGS -m eofm.pretrain PRETRAIN_ARGS` under eofm_supervise and exit with its
#       status, or with 75 when the run asked to be requeued (see below).
#   eofm_supervise child|workers CMD...
#       Run CMD in the background and forward SIGTERM/SIGUSR1 received by this shell: to CMD
#       itself (`child`: srun) or to CMD's child processes (`workers`: the ranks torchrun
#       started, each in a session of its own, so a signal sent to this script or its process
#       group does not reach them otherwise). With `child`, either signal goes to srun as
#       SIGUSR1: srun passes SIGUSR1 on to every process of its step unchanged, but turns a
#       SIGTERM it receives into SIGKILL of every task ("srun: forcing job termination"), which
#       would end the ranks without a checkpoint; the ranks treat SIGUSR1 as they treat SIGTERM.
#       If srun then ends with 128+SIGUSR1 (it, or a node's launcher, was killed by that
#       SIGUSR1: a process dies of it only before it installs its handler, so no training had
#       started), this returns 75 as after an early stop.
#       With `workers`, CMD starts with SIGUSR1 ignored: torchrun does not handle it and would
#       die of it, orphaning the ranks, when it reaches torchrun itself (srun and SLURM signal
#       every process of the step); the ranks install their own SIGUSR1 handler over it.
#       A signal that arrives before CMD has anyone to take it (received while this shell was
#       still checking the config, or, with `workers`, before every rank has its handler for
#       it installed: USR1 would be ignored and TERM kill ranks that have not trained) stops
#       CMD instead (SIGTERM to torchrun, which then starts no training) and makes this
#       return 75: nothing was trained since the newest checkpoint, so the job is requeued.
#       Returns CMD's exit status (75 after such an early stop, unless CMD succeeded).
#   eofm_exit_early STATUS
#       Exit 75 when eofm_stopped_before_start (a stop signal that reaches every process of a
#       SLURM step also kills the check that was running), else exit STATUS.
#   eofm_stopped_before_start
#       Whether a SIGTERM/SIGUSR1 arrived since common.sh was sourced and before any command
#       started under eofm_supervise (true: also says so on stderr). Sourcing common.sh
#       installs the traps that remember such a signal; without them it would end the shell
#       (USR1's default, or 143 for TERM) and the job would not be requeued.
#   eofm_preflight PRETRAIN_ARGS...
#       Check the configuration as `eofm-pretrain` and its trainer do before any work (YAML,
#       every key and value, data.path; the checks against the world size: the global batch,
#       the strategy, the model, DeepSpeed, a resume from a checkpoint of another world size
#       without runtime.resume_elastic) and print runtime.out_dir; a refused one prints
#       eofm-pretrain's error and returns 2 (eofm_torchrun then exits 2 without starting
#       torchrun: one message, not every rank's error followed by torchrun's ChildFailedError
#       traceback). The world size is EOFM_WORLD_SIZE in its environment (set it for this call
#       only: EOFM_WORLD_SIZE=8 eofm_preflight ...); unset or empty, only the checks that hold
#       for any world size are made (eofm.pretrain.cli.preflight).
#   eofm_world_size TORCHRUN_ARGS...
#       Print the ranks in all, --nnodes=N (default 1) x --nproc_per_node=P, as the launchers
#       pass them; nothing when that is not a fixed number (an elastic --nnodes=MIN:MAX).
#   eofm_check_host NAME HOST
#       Refuse (error naming NAME and HOST, status 2) a HOST that is not an IP address and
#       does not resolve here: torchrun's c10d rendezvous would otherwise retry it until its
#       timeout (minutes) before failing. An IP literal (also [IPv6]) is not looked up.
#   eofm_exit_status STATUS OUT_DIR
#       Print 75 when STATUS is 75 or OUT_DIR/REQUEUE exists, else STATUS.
#   eofm_nproc
#       Print the ranks per node: NPROC when set (a whole number >= 1, else an error and
#       status 2), else the GPUs this node's torch sees
#       (CUDA_VISIBLE_DEVICES honoured), else 1. torchrun's own "auto" starts one rank per CPU
#       core on a machine without GPUs: 64 ranks of one core each on a 64-core server, a batch
#       no CPU recipe divides; one rank uses every core through its threads.
#
# The requeue convention (pretrain/preemption.py): on SIGTERM/SIGUSR1 or a first Ctrl-C the
# trainer finishes the step, checkpoints, writes <out_dir>/REQUEUE on each node's first rank (so
# every node's launcher finds it without waiting for rank 0's write to reach it) and exits 75.
# torchrun reports any failed worker as 1, hence the marker. The marker is removed before each
# launch (the trainer removes it too), so a stale one cannot requeue a run that failed; a
# refused configuration exits 2 before that, without looking at the marker (and the sbatch
# template requeues only on status 75, after removing any marker itself before srun).
#
# Environment: PYTHON (default python) resolves the config; TORCHRUN (default torchrun);
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default here 110 s): how long torchrun, when it is itself
# signalled, waits for the ranks to checkpoint before it kills them (torch >= 2.9; 30 s before).

EOFM_REQUEUE_EXIT_CODE=75
EOFM_REQUEUE_MARKER=REQUEUE

# A stop signal before there is a run to pass it to is remembered, not fatal (see
# eofm_stopped_before_start and eofm_supervise).
_eofm_remember_signals() {  # until eofm_supervise forwards them, and again after
    trap '_eofm_pending=TERM' TERM
    trap '_eofm_pending=USR1' USR1
}
_eofm_pending=""
_eofm_remember_signals

_eofm_nworkers=""

eofm_stopped_before_start() {
    [ -n "$_eofm_pending" ] || return 1
    echo "eofm launch: received SIG$_eofm_pending before the run started; nothing to" \
         "checkpoint, stopping to be requeued (exit $EOFM_REQUEUE_EXIT_CODE)" >&2
}

eofm_exit_early() {  # STATUS: exit 75 after a stop signal (it may have killed the step), else STATUS
    eofm_stopped_before_start && exit "$EOFM_REQUEUE_EXIT_CODE"
    exit "$1"
}

eofm_preflight() {
    "${PYTHON:-python}" - "$@" <<'PY'
import sys

from eofm.pretrain.cli import preflight

sys.exit(preflight(sys.argv[1:]))
PY
}

eofm_world_size() {
    local a nnodes=1 nproc=""
    for a in "$@"; do
        case $a in
            --nnodes=*) nnodes=${a#*=} ;;
            --nproc_per_node=* | --nproc-per-node=*) nproc=${a#*=} ;;
        esac
    done
    if [[ $nnodes =~ ^[1-9][0-9]*$ && $nproc =~ ^[1-9][0-9]*$ ]]; then
        echo $((nnodes * nproc))
    fi
}

eofm_check_host() {
    "${PYTHON:-python}" - "$1" "$2" <<'PY'
import ipaddress
import socket
import sys

name, host = sys.argv[1:]
try:
    ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
except ValueError:  # a host name: look it up as the rendezvous will
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as e:  # socket.gaierror; UnicodeError: an empty label
        why = getattr(e, "strerror", None) or e
        print(f"eofm launch: error: {name}: expected a host name that resolves on this node "
              f"({socket.gethostname()}) or an IP address, got '{host}', which does not "
              f"resolve ({why})", file=sys.stderr)
        sys.exit(2)
PY
}

eofm_exit_status() {
    if [ "$1" -eq "$EOFM_REQUEUE_EXIT_CODE" ] || { [ -n "$2" ] && [ -e "$2/$EOFM_REQUEUE_MARKER" ]; }
    then
        echo "$EOFM_REQUEUE_EXIT_CODE"
    else
        echo "$1"
    fi
}

_eofm_catches() {  # SIGNAL PID...: whether every PID has a handler for SIGNAL installed
    local pid mask bit
    bit=$(kill -l "$1") || return 0
    for pid in "${@:2}"; do
        # Linux: /proc/PID/status's SigCgt, a hex mask with bit N-1 for signal N. Elsewhere
        # (no /proc) a started rank is taken to catch it, as before this check existed.
        mask=$(awk '$1 == "SigCgt:" { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
        [ -n "$mask" ] || continue
        (( (16#$mask >> (bit - 1)) & 1 )) || return 1
    done
}

_eofm_forward() {  # SIGNAL: pass it on (see eofm_supervise)
    _eofm_signalled=1
    local pids=""
    if [ "$_eofm_target" = workers ]; then
        pids=$(pgrep -P "$_eofm_child" 2>/dev/null | tr "\n" " " || true)
        if [ "$_eofm_forwarded" = 1 ]; then  # every rank took an earlier one: they are stopping
            if [ -z "$pids" ]; then
                echo "eofm launch: received SIG$1 again; the ranks took the first one and" \
                     "have exited (checkpointed): nothing to forward" >&2
                return
            fi
            echo "eofm launch: received SIG$1 again, forwarding it to the ranks still" \
                 "stopping ($pids)" >&2
            # shellcheck disable=SC2086
            kill -s "$1" $pids 2>/dev/null || true
            return
        fi
        # shellcheck disable=SC2086
        if [ -z "$pids" ] || { [ -n "$_eofm_nworkers" ] &&
               [ "$(echo $pids | wc -w)" -lt "$_eofm_nworkers" ]; } ||
               ! _eofm_catches "$1" $pids; then
            echo "eofm launch: received SIG$1 before every rank could take it (no training" \
                 "started); stopping torchrun (SIGTERM to $_eofm_child) to be requeued" >&2
            _eofm_early=1
            kill -s TERM "$_eofm_child" 2>/dev/null || true
            return
        fi
    fi
    if [ "$_eofm_target" = child ]; then
        # srun answers SIGTERM (and SIGHUP) with SIGKILL to every task, no checkpoint; it passes
        # SIGUSR1 on unchanged (SchedMD slurm src/srun/libsrun/srun_job.c, _srun_signal_mgr)
        _eofm_forwarded=1
        if [ "$1" = USR1 ]; then
            echo "eofm launch: received SIGUSR1, forwarding it to srun ($_eofm_child)" >&2
        else
            echo "eofm launch: received SIG$1, forwarding it to srun as SIGUSR1 (srun would" \
                 "turn SIG$1 into SIGKILL)" >&2
        fi
        kill -s USR1 "$_eofm_child" 2>/dev/null || true
        return
    fi
    echo "eofm launch: received SIG$1, forwarding it to ${pids:-$_eofm_child}" >&2
    _eofm_forwarded=1
    # shellcheck disable=SC2086
    kill -s "$1" ${pids:-$_eofm_child} 2>/dev/null || true
}

eofm_supervise() {
    _eofm_target=$1
    shift
    if [ "$_eofm_target" = workers ]; then
        (trap '' USR1; exec "$@") &  # an ignored signal stays ignored across exec
    else
        "$@" &
    fi
    _eofm_child=$!
    _eofm_early=0
    _eofm_forwarded=0
    trap '_eofm_forward TERM' TERM
    trap '_eofm_forward USR1' USR1
    if [ -n "$_eofm_pending" ]; then  # arrived while CMD was being started
        _eofm_forward "$_eofm_pending"
        _eofm_pending=""
    fi
    # Ctrl-C reaches the whole foreground process group (torchrun, srun) by itself; this shell
    # only keeps waiting so that it still reports the exit status.
    trap '_eofm_signalled=1' INT
    local status
    while :; do
        _eofm_signalled=0
        wait "$_eofm_child"
        status=$?
        # A trapped signal interrupts `wait` (status > 128) while the child runs on; wait again.
        [ "$_eofm_signalled" = 1 ] && [ "$status" -gt 128 ] || break
    done
    _eofm_remember_signals
    trap - INT
    if [ "$_eofm_early" = 1 ] && [ "$status" -ne 0 ]; then
        echo "eofm launch: stopped before training started (exit $status); nothing to" \
             "checkpoint, requeue (exit $EOFM_REQUEUE_EXIT_CODE)" >&2
        status=$EOFM_REQUEUE_EXIT_CODE
    elif [ "$_eofm_target" = child ] && [ "$_eofm_forwarded" = 1 ] && [ "$status" -eq $((128 + $(kill -l USR1))) ]; then
        # Nothing but a stop signal sends SIGUSR1, and only a process without its handler yet
        # dies of it (srun before it blocks it, a node's launcher before its traps, the shell
        # forked to exec srun): a crash does not end this way, so it cannot be requeued.
        echo "eofm launch: srun ended by the SIGUSR1 it was sent (exit $status): it reached" \
             "srun or a node's launcher before they could take it, so no training had started;" \
             "nothing to checkpoint, requeue (exit $EOFM_REQUEUE_EXIT_CODE)" >&2
        status=$EOFM_REQUEUE_EXIT_CODE
    fi
    return "$status"
}

eofm_nproc() {
    if [ -n "${NPROC:-}" ]; then
        case $NPROC in
            *[!0-9]* | 0*)
                echo "eofm launch: error: NPROC: expected a whole number of ranks per node" \
                     "(1 or more), got '$NPROC'" >&2
                return 2 ;;
        esac
        echo "$NPROC"
        return
    fi
    local gpus
    gpus=$("${PYTHON:-python}" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null)
    if [ "${gpus:-0}" -gt 0 ] 2>/dev/null; then echo "$gpus"; else echo 1; fi
}

eofm_torchrun() {
    local launch=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        launch+=("$1")
        shift
    done
    [ "${1:-}" = -- ] && shift
    local out status a
    _eofm_nworkers=""
    for a in "${launch[@]}"; do
        case $a in --nproc_per_node=* | --nproc-per-node=*) _eofm_nworkers=${a#*=} ;; esac
    done
    [[ $_eofm_nworkers =~ ^[1-9][0-9]*$ ]] || _eofm_nworkers=""
    case " $* " in
        *" --help "* | *" -h "*) out="" ;;  # eofm-pretrain's own help, from the ranks
        *) out=$(EOFM_WORLD_SIZE=$(eofm_world_size "${launch[@]}") eofm_preflight "$@") ||
               eofm_exit_early $? ;;  # refused: its error, status 2 (the marker is not consulted)
    esac
    [ -n "$out" ] && rm -f "$out/$EOFM_REQUEUE_MARKER"
    eofm_stopped_before_start && exit "$EOFM_REQUEUE_EXIT_CODE"
    export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-110}"
    eofm_supervise workers "${TORCHRUN:-torchrun}" "${launch[@]}" -m eofm.pretrain "$@"
    status=$(eofm_exit_status $? "$out")
    [ "$status" -eq "$EOFM_REQUEUE_EXIT_CODE" ] &&
        echo "eofm launch: the run stopped to be requeued (exit $status; checkpoint in ${out:-out_dir})" >&2
    exit "$status"
}

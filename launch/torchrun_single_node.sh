#!/usr/bin/env bash
# Pretrain on one machine with torchrun: one process per GPU (one process without GPUs).
#
#   launch/torchrun_single_node.sh --config launch/configs/X.yaml [key=value ...]
#   NPROC=2 launch/torchrun_single_node.sh --config launch/configs/quickstart.yaml schedule.steps=20
#
# Run it from the directory the config's relative paths start from (the repository root).
# Arguments go unchanged to `python -m eofm.pretrain`; this runs
#   torchrun --standalone --nproc_per_node=$NPROC -m eofm.pretrain "$@"
# Environment: NPROC (default: the GPU count, else 1), TORCHRUN, PYTHON.
# SIGTERM/SIGUSR1 sent to this script reach every rank: they checkpoint and stop.
# Exit status: the run's, except 75 when it stopped to be requeued (status 75 or a REQUEUE file
# in runtime.out_dir); running the same command again resumes from the newest checkpoint.
# Shared logic: launch/common.sh.
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
nproc=$(eofm_nproc) || eofm_exit_early $?
eofm_torchrun --standalone --nproc_per_node="$nproc" -- "$@"

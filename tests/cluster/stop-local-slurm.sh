#!/usr/bin/env bash
# Stop the daemons start-local-slurm.sh started (listed in $SLURM_RUNDIR/started), by PID,
# newest first; daemons that were already running before it are left alone.
set -uo pipefail

RUNDIR=${SLURM_RUNDIR:-/tmp/duvflow-slurm}
LIST=$RUNDIR/started
say() { echo "[local-slurm] $*" >&2; }

[[ -f $LIST ]] || { say "nothing to stop ($LIST missing)"; exit 0; }

# jobs first, so slurmd has nothing left to clean up
if grep -q '^slurmctld ' "$LIST"; then
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
fi

tac "$LIST" | while read -r name pidfile; do
    [[ -n $name ]] || continue
    if [[ ! -f $pidfile ]]; then
        say "$name: no pid file $pidfile"
        continue
    fi
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        say "stopped $name (pid $pid)"
    else
        say "$name (pid $pid) was not running"
    fi
done
rm -f "$LIST"

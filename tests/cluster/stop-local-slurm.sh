#!/usr/bin/env bash
# Undo start-local-slurm.sh (what it lists in $SLURM_RUNDIR/started), newest first: stop the
# daemons it started, by PID; remove the files it wrote (/etc/slurm/*.conf, a munge key that it or
# installing munge made), putting back the files that were there before; remove the folders it
# created if empty. Daemons, files and packages that were there before it are left alone.
set -uo pipefail

RUNDIR=${SLURM_RUNDIR:-/tmp/duvflow-slurm}
LIST=$RUNDIR/started
say() { echo "[local-slurm] $*" >&2; }

[[ -f $LIST ]] || { say "nothing to stop ($LIST missing)"; exit 0; }

# jobs first, so slurmd has nothing left to clean up
if grep -q '^slurmctld ' "$LIST"; then
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
fi

tac "$LIST" | while read -r name pidfile backup; do
    [[ -n $name ]] || continue
    if [[ $name == file ]]; then
        if [[ -n ${backup:-} && -e $backup ]]; then
            mv -f "$backup" "$pidfile" && say "restored $pidfile"
        elif [[ -e $pidfile ]]; then
            rm -f "$pidfile" && say "removed $pidfile"
        fi
        continue
    fi
    if [[ $name == dir ]]; then
        rmdir "$pidfile" 2>/dev/null && say "removed $pidfile"
        continue
    fi
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

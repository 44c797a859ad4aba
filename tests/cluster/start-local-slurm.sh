#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests: munged + slurmctld + slurmd (Debian's
# SLURM packages), no systemd, no cgroups, no accounting daemon, optional fake GPUs.
# Needs root. Installs the packages with apt-get when they are missing.
#
#   tests/cluster/start-local-slurm.sh        # start (idempotent); prints sinfo
#   tests/cluster/stop-local-slurm.sh         # stop what this script started, by PID
#
# Environment:
#   SLURM_RUNDIR     state, logs, pid files              (default /tmp/duvflow-slurm)
#   SLURM_PARTITION  name of the one partition           (default debug)
#   SLURM_FAKE_GPUS  GPUs the node advertises            (default 2; 0 = none)
#   SLURM_INSTALL    0 = never run apt-get               (default 1)
#
# What this script starts or writes outside $SLURM_RUNDIR is listed in $SLURM_RUNDIR/started:
# daemons (`<name> <pidfile>`), files (`file <path> [<backup>]`: /etc/slurm/*.conf, a munge key
# that it or installing munge made) and folders it created (`dir <path>`). The stop script stops
# exactly those daemons, removes those files (putting back any file that was there before) and
# the folders if empty.
set -euo pipefail

RUNDIR=${SLURM_RUNDIR:-/tmp/duvflow-slurm}
PARTITION=${SLURM_PARTITION:-debug}
FAKE_GPUS=${SLURM_FAKE_GPUS:-2}
NODE=$(hostname -s)
START=$SECONDS

say() { echo "[local-slurm] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
# own PATH: PATH is about to be written (or removed) by this script; a file that was already there
# is copied to $RUNDIR/backup first, so that the stop script can put it back
own() {
    local path=$1 backup=""
    grep -q "^file $path\( \|$\)" "$RUNDIR/started" && return 0   # ours since an earlier start
    if [[ -e $path ]]; then
        backup="$RUNDIR/backup/${path//\//_}"
        cp -a "$path" "$backup"
    fi
    echo "file $path $backup" >> "$RUNDIR/started"
}
own_dir() { [[ -d $1 ]] || { mkdir -p "$1"; echo "dir $1" >> "$RUNDIR/started"; }; }

[[ $(id -u) == 0 ]] || die "must run as root (daemons, /etc/slurm, munge key)"

mkdir -p "$RUNDIR"/{state,spool,log,dev,backup}
chmod 755 "$RUNDIR"
touch "$RUNDIR/started"

# --- packages ------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
    [[ ${SLURM_INSTALL:-1} == 1 ]] || die "SLURM is not installed and SLURM_INSTALL=0"
    command -v apt-get >/dev/null || die "SLURM is not installed and apt-get is not available"
    say "installing slurmctld slurmd slurm-client munge (apt-get)"
    # installing munge generates /etc/munge/munge.key: ours to remove again
    [[ -e /etc/munge/munge.key ]] || own /etc/munge/munge.key
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
        || die "apt-get install failed"
fi

# --- already up? ----------------------------------------------------------------------------
if alive "$RUNDIR/slurmctld.pid" && alive "$RUNDIR/slurmd.pid" \
   && sinfo -h -n "$NODE" -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc)$'; then
    say "already running"
    exit 0
fi

# --- munge (authentication between the SLURM commands and daemons) ----------------------------
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    own /etc/munge/munge.key
    head -c 1024 /dev/urandom > /etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged   # munged refuses to run as root
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged does not answer"
    echo "munged /run/munge/munged.pid" >> "$RUNDIR/started"
fi

# --- configuration ----------------------------------------------------------------------------
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
GRES=""
[[ $FAKE_GPUS -gt 0 ]] && GRES="Gres=gpu:$FAKE_GPUS"
own_dir /etc/slurm
own /etc/slurm/slurm.conf
own /etc/slurm/gres.conf
cat > /etc/slurm/slurm.conf <<EOF
# written by duvflow tests/cluster/start-local-slurm.sh
ClusterName=duvflowtest
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ReturnToService=2
StateSaveLocation=$RUNDIR/state
SlurmdSpoolDir=$RUNDIR/spool/slurmd-%n
SlurmctldPidFile=$RUNDIR/slurmctld.pid
SlurmdPidFile=$RUNDIR/slurmd.pid
SlurmctldLogFile=$RUNDIR/log/slurmctld.log
SlurmdLogFile=$RUNDIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# containers: no cgroups, no accounting database
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue/scontrol (the executor plugin polls with squeue)
MinJobAge=3600
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((MEM_MB / CPUS))
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $GRES State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

if [[ $FAKE_GPUS -gt 0 ]]; then
    # slurmd counts one GPU per device file; character devices like /dev/null stand in for cards.
    # Jobs granted one then see CUDA_VISIBLE_DEVICES=<its index>.
    for i in $(seq 0 $((FAKE_GPUS - 1))); do
        [[ -e $RUNDIR/dev/fakegpu$i ]] || mknod -m 666 "$RUNDIR/dev/fakegpu$i" c 1 3
    done
    cat > /etc/slurm/gres.conf <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=$RUNDIR/dev/fakegpu[0-$((FAKE_GPUS - 1))]
EOF
else
    rm -f /etc/slurm/gres.conf
fi

# --- daemons ----------------------------------------------------------------------------------
if ! alive "$RUNDIR/slurmctld.pid"; then
    say "starting slurmctld"
    /usr/sbin/slurmctld -c -i   # -c: forget old jobs (a fresh cluster every start)
    echo "slurmctld $RUNDIR/slurmctld.pid" >> "$RUNDIR/started"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
if ! alive "$RUNDIR/slurmd.pid"; then
    say "starting slurmd"
    /usr/sbin/slurmd
    echo "slurmd $RUNDIR/slurmd.pid" >> "$RUNDIR/started"
fi

# --- wait until the node takes jobs -----------------------------------------------------------
state=""
for _ in $(seq 300); do
    state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
    case $state in
        idle|mix|alloc) scontrol show node "$NODE" 2>/dev/null | grep -q 'Version=[0-9]' && break ;;
        inval*) break ;;
        down*|drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
done
case $state in
    idle|mix|alloc) ;;
    *) say "node state '$state'; daemon logs:"; tail -n 20 "$RUNDIR"/log/*.log >&2; die "node not ready" ;;
esac
say "ready after $((SECONDS - START)) s (partition $PARTITION, $CPUS CPUs, $FAKE_GPUS fake GPUs)"
sinfo

#!/usr/bin/env bash
# A real one-node SLURM on this machine (Debian 12, as root) for the slurm tests (`pytest -m slurm`):
#   bash .ci/slurm_up.sh          install (once), configure and start munged, slurmctld and slurmd; idempotent
#   bash .ci/slurm_up.sh down     stop the three daemons this script started (by the ids in their pid files)
# One node (this host, all its CPUs, no GPU), one partition; no accounting database, so `sacct` knows nothing:
# advdpnp.cluster reads job states from `squeue` and submitit's result files instead.
# Measured on the 2-core development VM (slurm 22.05.8): 10 s the first time (apt download and install; 7 s from apt's cache),
# 0.1 s when it is up already; `down` 5 s.
set -euo pipefail
PARTITION=${SLURM_PARTITION:-debug}
CONF=/etc/slurm/slurm.conf
PIDS=(/run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid)   # stopped in this order

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

down() {
  for pidfile in "${PIDS[@]}"; do
    if running "$pidfile"; then
      pid=$(cat "$pidfile"); kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      echo "slurm_up: stopped $(basename "$pidfile" .pid) (pid $pid)"
    fi
  done
}

if [ "${1:-up}" = down ]; then down; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "slurm_up: run as root (it installs packages and starts daemons)" >&2; exit 1; fi

# 1. packages (about 33 s once)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null; }
fi

# 2. munge: a key, then munged as the munge user
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
running /run/munge/munged.pid || runuser -u munge -- munged --pid-file=/run/munge/munged.pid

# 3. slurm.conf: this host with all its CPUs, one partition; linuxproc tracking, no cgroups, no accounting.
# KillWait: seconds between SIGTERM and SIGKILL when a job is cancelled or requeued (30 by default).
NODE=$(hostname)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > "$CONF.new" <<EOF
ClusterName=advdpnp
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
MinJobAge=300
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE CPUs=$(nproc) State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
changed=0
if ! cmp -s "$CONF.new" "$CONF"; then mv "$CONF.new" "$CONF"; changed=1; else rm "$CONF.new"; fi

# 4. the daemons (a changed configuration restarts them)
if [ "$changed" = 1 ] && { running /run/slurmctld.pid || running /run/slurmd.pid; }; then
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    if running "$pidfile"; then pid=$(cat "$pidfile"); kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; fi
  done
fi
running /run/slurmctld.pid || slurmctld
running /run/slurmd.pid || slurmd

# 5. wait for the node, bring it back if a stop left it down, and run one job
for _ in $(seq 100); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)
  case "$state" in idle*|mixed*|allocated*|completing*) break;; down*|drain*) scontrol update nodename="$NODE" state=resume || true;; esac
  sleep 0.2
done
case "$state" in idle*|mixed*|allocated*|completing*) ;;
  *) echo "slurm_up: node $NODE is '${state:-unknown}' after 20 s; see /var/log/slurm/slurmd.log and slurmctld.log" >&2; exit 1;; esac
out=$(srun -p "$PARTITION" -N1 -n1 -t 1 hostname)
echo "slurm_up: SLURM $(sinfo -V | cut -d' ' -f2) up: partition $PARTITION, node $NODE ($(nproc) CPUs, $state); srun hostname: $out"

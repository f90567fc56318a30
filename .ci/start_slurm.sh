#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the cluster tests (tests/ablation_slurm_test.py)
# and for trying `python -m experiments.ablation --launcher=slurm` by hand. Run as root:
#
#   sudo bash .ci/start_slurm.sh      # installs slurm-wlm and munge (Debian/Ubuntu), starts
#                                     # munged, slurmctld and slurmd; idempotent
#
# The node is this host (`hostname -s`) with all its CPUs; a job asking 1 CPU shares it with
# others. No slurmdbd: job records go to a text file that `sacct -c` reads. Stop it with
# `kill $(cat /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid)`.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "$0: needs root (apt-get, /etc/slurm, the daemons): run it with sudo." >&2
  exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
   ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
conf=$(mktemp)
cat >"$conf" <<EOF
# Written by .ci/start_slurm.sh: one node, this host.
ClusterName=vggjax
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups in containers: processes are tracked by parent, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# CPUs are the consumable: two 1-CPU jobs run side by side on a 2-core node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
# No accounting database; finished jobs are kept in slurmctld for 10 minutes (squeue,
# scontrol) and written to a text file that \`sacct -c\` reads.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
MinJobAge=600
KillWait=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
changed=0
if ! cmp -s "$conf" /etc/slurm/slurm.conf; then
  install -m 644 "$conf" /etc/slurm/slurm.conf
  changed=1
fi
rm -f "$conf"

running() {  # running NAME PIDFILE: the daemon of that pid file is alive.
  [ -s "$2" ] && [ "$(cat /proc/"$(cat "$2")"/comm 2>/dev/null)" = "$1" ]
}
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key /run/munge && chmod 400 /etc/munge/munge.key
if ! running munged /run/munge/munged.pid; then
  runuser -u munge -- munged
fi
for daemon in slurmctld slurmd; do
  if [ "$changed" = 1 ] && running "$daemon" "/run/$daemon.pid"; then
    kill "$(cat "/run/$daemon.pid")" && sleep 2  # Restarted below with the new slurm.conf.
  fi
  if ! running "$daemon" "/run/$daemon.pid"; then
    "$daemon"
  fi
done

# Up when the node takes jobs: idle, mixed or allocated (not down or drained).
for _ in $(seq 60); do
  state=$(sinfo -h -N -n "$host" -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*) echo "SLURM is up: node $host ($(nproc) CPUs), $state."; exit 0 ;;
    down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "$0: the node $host did not come up; see /var/log/slurm/slurmctld.log and slurmd.log." >&2
exit 1

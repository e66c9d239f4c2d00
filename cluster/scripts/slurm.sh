#!/usr/bin/env bash
# Single-node SLURM (Debian's slurm-wlm + munge) on loopback, for knunu's tests and laptops.
#   slurm.sh up      install if needed, write the config, start munged/slurmctld/slurmd, wait
#   slurm.sh down    stop exactly the daemons this script started (pid files)
#   slurm.sh status  exit 0 if this script's daemons are running
#   slurm.sh env     print the SLURM_CONF export line
# Scratch state lives in $KNUNU_SLURM_DIR (default /tmp/knunu-slurm), never in the repository.
set -euo pipefail

DIR=${KNUNU_SLURM_DIR:-/tmp/knunu-slurm}
CONF=$DIR/slurm.conf
READY_TIMEOUT=${KNUNU_SLURM_TIMEOUT:-60}
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    # CPUs and memory from slurmd -C (nproc follows OMP_NUM_THREADS, which Dask sets to 1).
    local probe
    probe=$(slurmd -C | head -1)
    cpus=$(sed -E 's/.*CPUs=([0-9]+).*/\1/' <<<"$probe")
    mem=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$probe")
    mem=$((mem * 9 / 10))
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF" <<CONF
ClusterName=knunu
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=${host} NodeAddr=127.0.0.1 CPUs=$((cpus * 2)) RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
}

up() {
    install
    mkdir -p "$DIR"
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
        log "already running ($DIR)"
        return
    fi
    write_conf
    export SLURM_CONF=$CONF
    if ! alive /run/munge/munged.pid || [ ! -S /run/munge/munge.socket.2 ]; then
        mkdir -p /run/munge && chown munge: /run/munge
        [ -f /etc/munge/munge.key ] || { /usr/sbin/mungekey --create >/dev/null 2>&1 || true; }
        chown munge: /etc/munge/munge.key 2>/dev/null || true
        rm -f /run/munge/munged.pid
        runuser -u munge -- /usr/sbin/munged
        # munged daemonises and writes its own pid file; wait for it (bounded)
        for _ in $(seq 100); do
            alive /run/munge/munged.pid && [ -S /run/munge/munge.socket.2 ] && break
            sleep 0.05
        done
        alive /run/munge/munged.pid || { log "munged did not start (see /var/log/munge)"; exit 1; }
        cp /run/munge/munged.pid "$DIR/munged.pid"
        touch "$DIR/munged.started-here"
    fi
    slurmctld -c -f "$CONF"
    slurmd -f "$CONF"
    wait_ready "$READY_TIMEOUT" "$DIR/log" node_idle || { down; exit 1; }
    timeout "$READY_TIMEOUT" srun -N1 -n1 hostname >/dev/null
    log "ready: SLURM_CONF=$CONF"
}

node_idle() { sinfo -h -o '%T' 2>/dev/null | grep -qx idle; }

down() {
    export SLURM_CONF=$CONF
    if [ -f "$CONF" ] && alive "$DIR/slurmctld.pid"; then
        scancel --full --quiet -u root 2>/dev/null || true
    fi
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
    # a daemon that died before writing its pid file is still ours if it runs our config
    pkill -f "^slurmd -f $CONF\$" 2>/dev/null || true
    pkill -f "^slurmctld -c -f $CONF\$" 2>/dev/null || true
    if [ -f "$DIR/munged.started-here" ]; then
        stop_pidfile "$DIR/munged.pid"
        rm -f "$DIR/munged.started-here"
    fi
    log "stopped"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Personal HTCondor pool (central manager + submit + execute) on loopback, for knunu's tests.
# HTCondor is not packaged for Debian 12, so the pool runs from a Debian 13 chroot (debootstrap);
# host-side wrappers condor_submit/condor_q/condor_rm/condor_status run the real tools in the
# chroot as an unprivileged user (root cannot submit).
#   htcondor.sh up      build the chroot if needed, mount, configure, start condor_master, wait
#   htcondor.sh down    stop exactly the daemons this script started (pid file), unmount
#   htcondor.sh status  exit 0 if this script's condor_master runs
#   htcondor.sh env     print the PATH export line for the wrappers
# Settings: KNUNU_CONDOR_DIR (scratch, default /tmp/knunu-condor), KNUNU_CONDOR_ROOT (the chroot,
# default /var/tmp/knunu-htcondor-root, about 600 MB, kept between runs), KNUNU_PYTHON (the
# interpreter whose prefix, venv and project are bound into the chroot so jobs run it).
set -euo pipefail

DIR=${KNUNU_CONDOR_DIR:-/tmp/knunu-condor}
ROOT=${KNUNU_CONDOR_ROOT:-/var/tmp/knunu-htcondor-root}
PY=${KNUNU_PYTHON:-python3}
JOBUSER=knunu
READY_TIMEOUT=${KNUNU_CONDOR_TIMEOUT:-90}
MIRROR=${KNUNU_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

build_chroot() {
    [ -f "$ROOT/.knunu-ready" ] && return
    debootstrap_partial "$ROOT" "$MIRROR"
    mount -t proc proc "$ROOT.partial/proc"
    local rc=0
    chroot "$ROOT.partial" /bin/sh -c "
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends htcondor libgomp1 >/dev/null
        useradd --create-home --shell /bin/sh $JOBUSER
    " >"$ROOT.apt.log" 2>&1 || rc=$?
    umount "$ROOT.partial/proc"
    ((rc == 0)) || { log "installing htcondor in the chroot failed, see $ROOT.apt.log"; exit 1; }
    chmod 1777 "$ROOT.partial/tmp"
    finish_chroot "$ROOT"
}

# Bind mounts: each host path at the same path inside the chroot.
bind() {
    local src=$1 target="$ROOT$1"
    mkdir -p "$target"
    mountpoint -q "$target" && return
    mount --bind "$src" "$target"
}

mount_all() {
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    bind /dev
    bind /dev/pts
    mountpoint -q "$ROOT/dev/shm" || mount -t tmpfs -o mode=1777 tmpfs "$ROOT/dev/shm"
    bind /tmp # the scratch dir, dask-jobqueue's job files and test data live here
    # the interpreter jobs run: its base prefix, the venv and the (editable) project
    local paths
    paths=$("$PY" -c 'import sys, pathlib, knunu
print(sys.base_prefix); print(sys.prefix); print(pathlib.Path(knunu.__file__).resolve().parents[1])')
    local p q
    while read -r p; do
        case "$p" in /tmp/*) continue ;; esac # already visible
        # a path inside another one of the list (the venv in the project) comes with it
        while read -r q; do [ "$q" != "$p" ] && [[ "$p" == "$q"/* ]] && continue 2; done <<<"$paths"
        bind "$p"
        # the job user must traverse the parents inside the chroot (e.g. /root)
        local parent
        parent=$(dirname "$p")
        while [ "$parent" != / ]; do chmod o+x "$ROOT$parent"; parent=$(dirname "$parent"); done
    done <<<"$paths"
}

unmount_all() {
    # everything mounted under the chroot, in reverse mount order (not only what this run did)
    local m
    awk '{print $2}' /proc/mounts | grep -E "^$ROOT/" | tac | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    rm -f "$DIR/mounts"
}

write_conf() {
    mkdir -p "$DIR/execute" "$DIR/log" "$DIR/spool" "$DIR/bin" "$DIR/shared" "$DIR/joblogs"
    chmod 1777 "$DIR/shared" "$DIR/joblogs" # TLS material and job logs of the tests
    chroot "$ROOT" chown condor:condor "$DIR/execute" "$DIR/spool" "$DIR/log"
    cat >"$ROOT/etc/condor/config.d/99-knunu.conf" <<CONF
use ROLE: CentralManager
use ROLE: Submit
use ROLE: Execute
CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
BIND_ALL_INTERFACES = False
ENABLE_IPV6 = False
SEC_DEFAULT_AUTHENTICATION = REQUIRED
SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_MIN_INTERVAL = 1
SCHEDD_INTERVAL = 5
UPDATE_INTERVAL = 5
STARTER_UPDATE_INTERVAL = 5
START = True
SUSPEND = False
PREEMPT = False
KILL = False
BASE_CGROUP =
USE_PID_NAMESPACES = False
MOUNT_UNDER_SCRATCH =
RUNBENCHMARKS = 0
NUM_CPUS = $(($(nproc --all) * 2))
EXECUTE = $DIR/execute
SPOOL = $DIR/spool
LOG = $DIR/log
CONF
    # wrappers: the real tools in the chroot as the job user; submit files go in on stdin
    local tool
    for tool in condor_q condor_rm condor_status; do
        cat >"$DIR/bin/$tool" <<WRAP
#!/bin/sh
exec chroot --userspec=$JOBUSER:$JOBUSER "$ROOT" /usr/bin/$tool "\$@"
WRAP
    done
    cat >"$DIR/bin/condor_submit" <<WRAP
#!/bin/sh
# dask-jobqueue calls "condor_submit FILE"; the file is read here and fed on stdin.
# Jobs run as $JOBUSER, not as the (root) submitter: hand it the private TLS directories the
# job's arguments name (on a real pool submitter and job user are the same person).
if [ \$# -ge 1 ] && [ -f "\$1" ]; then
    for d in \$(grep -oE -- '--tls-(ca-file|cert|key) [^ \x27]+' "\$1" | awk '{print \$2}' | xargs -r -n1 dirname | sort -u); do
        chroot "$ROOT" chown -R $JOBUSER: "\$d"
    done
fi
[ \$# -ge 1 ] && [ -f "\$1" ] && { f=\$1; shift; exec chroot --userspec=$JOBUSER:$JOBUSER "$ROOT" /usr/bin/condor_submit "\$@" <"\$f"; }
exec chroot --userspec=$JOBUSER:$JOBUSER "$ROOT" /usr/bin/condor_submit "\$@"
WRAP
    chmod 755 "$DIR/bin/"*
}

pool_ready() { [ -n "$("$DIR/bin/condor_status" -af Name 2>/dev/null)" ] && "$DIR/bin/condor_q" >/dev/null 2>&1; }

up() {
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    if alive "$DIR/master.pid"; then
        log "already running ($DIR)"
        return
    fi
    if [ -d "$ROOT" ] && [ -n "$(pool_processes)" ]; then
        log "a pool runs in $ROOT without this script's pid file; run: $0 down"
        exit 1
    fi
    build_chroot
    mount_all
    write_conf
    # in the foreground (-f) under setsid, so $! is the master itself and outlives this script
    setsid chroot "$ROOT" /usr/sbin/condor_master -f >"$DIR/master.out" 2>&1 </dev/null &
    echo $! >"$DIR/master.pid"
    wait_ready "$READY_TIMEOUT" "$DIR/log" pool_ready || { down; exit 1; }
    log "ready: export PATH=$DIR/bin:\$PATH"
}

# every process whose root is the chroot: the pool's daemons and jobs
pool_processes() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && echo "${p#/proc/}"
    done
    return 0
}

down() {
    if alive "$DIR/master.pid"; then
        "$DIR/bin/condor_rm" -all >/dev/null 2>&1 || true
    fi
    stop_pidfile "$DIR/master.pid" 150 # condor_master shuts its daemons down on TERM
    # anything of this pool that outlived the master (only processes inside our chroot)
    local p
    for p in $(pool_processes); do kill -9 "$p" 2>/dev/null || true; done
    unmount_all
    log "stopped"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) alive "$DIR/master.pid" ;;
    env) echo "export PATH=$DIR/bin:\$PATH" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac

# Shared by the cluster scripts (sourced): logging, pid files, bounded readiness waits, chroots.

log() { echo "$(basename "$0"): $*" >&2; }

# alive PIDFILE: the process named in the pid file runs
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pidfile PIDFILE [TENTHS]: TERM, wait up to TENTHS/10 s (default 5 s), then KILL; drop the file
stop_pidfile() {
    local f=$1 tenths=${2:-50}
    if alive "$f"; then
        kill "$(cat "$f")" 2>/dev/null || true
        for _ in $(seq "$tenths"); do alive "$f" || break; sleep 0.1; done
        alive "$f" && kill -9 "$(cat "$f")" 2>/dev/null || true
    fi
    rm -f "$f"
}

# wait_ready SECONDS LOGDIR COMMAND...: poll COMMAND every 0.5 s; after SECONDS say so and fail
wait_ready() {
    local timeout=$1 logs=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if ((SECONDS > deadline)); then
            log "not ready after ${timeout}s; see $logs"
            return 1
        fi
        sleep 0.5
    done
}

# debootstrap_partial ROOT MIRROR [PACKAGES]: a minimal Debian 13 (trixie) in ROOT.partial, with
# PACKAGES (comma-separated) included; installs debootstrap on the host first if needed. Refuses
# while anything is mounted under ROOT (never delete through a bind mount).
debootstrap_partial() {
    local root=$1 mirror=$2 include=${3:-}
    log "building the Debian 13 chroot in $root (a few minutes, once)"
    export DEBIAN_FRONTEND=noninteractive
    if ! command -v debootstrap >/dev/null; then
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    if grep -qE " ($root|$root.partial)[/ ]" /proc/mounts; then
        log "refusing to rebuild: something is mounted under $root (unmount it first)"
        exit 1
    fi
    rm -rf "$root" "$root.partial"
    mkdir -p "$(dirname "$root")"
    debootstrap --variant=minbase ${include:+--include=$include} trixie "$root.partial" "$mirror" \
        >"$root.debootstrap.log" 2>&1 || { log "debootstrap failed, see $root.debootstrap.log"; exit 1; }
}

# finish_chroot ROOT: clean apt's cache, mark ROOT.partial complete and move it to ROOT
finish_chroot() {
    local root=$1
    chroot "$root.partial" /bin/sh -c "apt-get clean"
    touch "$root.partial/.knunu-ready"
    mv "$root.partial" "$root"
}

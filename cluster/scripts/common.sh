# Shared by slurm.sh and htcondor.sh (sourced): logging, pid files, bounded readiness waits.

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

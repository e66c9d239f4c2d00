#!/usr/bin/env bash
# knunu on Debian 13's Python 3.13, from the same lock as the host's 3.11: builds a Debian 13
# (trixie) chroot with python3 (once; KNUNU_PY313_ROOT, default /var/tmp/knunu-py313-root, about
# 2 GB with the venv), copies the committed project into it (git archive HEAD), creates a venv
# there, installs requirements.lock and knunu, runs the tiny analysis (configs/tiny.yaml) on a
# local Dask cluster, and compares every histogram of its histograms.root and the measurement's
# with a run of the same config on the host (values and variances, to 1e-12 relative, the
# measurement's fitted templates to 1e-6: the two systems' libm may differ in the last bit).
#   python313.sh [HOST_RUN_DIR]   (default: runs the host's tiny analysis into a temporary dir)
# Exit 0: installed, ran, and the same as the host's; the lines printed say what was compared.
set -euo pipefail

ROOT=${KNUNU_PY313_ROOT:-/var/tmp/knunu-py313-root}
MIRROR=${KNUNU_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HOSTPY=${KNUNU_PYTHON:-$PROJECT/.venv/bin/python}
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

build_chroot() {
    [ -f "$ROOT/.knunu-ready" ] && return
    debootstrap_partial "$ROOT" "$MIRROR" python3,python3-venv,ca-certificates,libgomp1
    finish_chroot "$ROOT"
}

mounts() {
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
    mountpoint -q "$ROOT/dev/shm" || mount -t tmpfs -o mode=1777 tmpfs "$ROOT/dev/shm"
}

unmounts() {
    local m
    for m in "$ROOT/dev/shm" "$ROOT/dev" "$ROOT/proc"; do
        if mountpoint -q "$m"; then
            umount "$m" 2>/dev/null || umount -l "$m" || log "could not unmount $m"
        fi
    done
    return 0
}

[ "$(id -u)" = 0 ] || { log "needs root (debootstrap, chroot, mounts)"; exit 2; }
if [ -n "$(git -C "$PROJECT" status --porcelain --untracked-files=no)" ]; then
    log "the chroot gets the committed project (HEAD); the host run uses the working tree, which differs"
fi
build_chroot
trap unmounts EXIT
mounts
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" # PyPI from inside
# the site's own certificate authorities (a proxy's), as the host trusts them
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    chroot "$ROOT" update-ca-certificates >/dev/null 2>&1
fi
rm -rf "$ROOT/opt/knunu"
mkdir -p "$ROOT/opt/knunu"
git -C "$PROJECT" archive HEAD | tar -x -C "$ROOT/opt/knunu"
log "installing with $(chroot "$ROOT" python3 --version) from requirements.lock"
chroot "$ROOT" env -u PIP_FIND_LINKS /bin/sh -ec "
    cd /opt/knunu
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet uv==\$(sed -n 's/^UV_VERSION := //p' Makefile)
    .venv/bin/uv pip install --quiet --python .venv/bin/python --only-binary pythia8mc -r requirements.lock
    .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps .
"
log "the tiny analysis under Python 3.13"
chroot "$ROOT" /bin/sh -ec "cd /opt/knunu && HOME=/opt/knunu .venv/bin/knunu run -c configs/tiny.yaml -o runs/tiny" \
    >"$ROOT.run.log" 2>&1 || { log "the run failed, see $ROOT.run.log"; tail -3 "$ROOT.run.log" >&2; exit 1; }
HOSTRUN=${1:-}
if [ -z "$HOSTRUN" ]; then
    HOSTRUN=$(mktemp -d /tmp/knunu-py311-XXXX)
    log "the tiny analysis on the host ($("$HOSTPY" --version)) into $HOSTRUN"
    (cd "$PROJECT" && "$HOSTPY" -m knunu.cli run -c configs/tiny.yaml -o "$HOSTRUN") >"$HOSTRUN.log" 2>&1 \
        || { log "the host run failed, see $HOSTRUN.log"; exit 1; }
fi
"$HOSTPY" - "$ROOT/opt/knunu/runs/tiny" "$HOSTRUN" <<'PY'
import sys
from pathlib import Path

import numpy as np
import uproot

# Debian 13's libm (glibc 2.41) may round exp/log differently in the last bit from the host's:
# the processors' sums then agree to 1e-12 relative; the measurement's factorised templates
# come out of fits (converged to about 1e-8), which carry such a bit further: 1e-6
RTOL = {"histograms.root": 1e-12, "measurement/histograms.root": 1e-6}
py313, host = map(Path, sys.argv[1:])
for name, rtol in RTOL.items():
    with uproot.open(py313 / name) as a, uproot.open(host / name) as b:
        keys = sorted(k.split(";")[0] for k in a.keys(cycle=True))
        if keys != sorted(k.split(";")[0] for k in b.keys(cycle=True)):
            sys.exit(f"{name}: the two runs hold different histograms")
        exact, worst = 0, 0.0
        for key in keys:
            pairs = [(a[key].values(flow=True), b[key].values(flow=True)),
                     (a[key].variances(flow=True), b[key].variances(flow=True))]
            if all(np.array_equal(x, y, equal_nan=True) for x, y in pairs):
                exact += 1
                continue
            for x, y in pairs:
                rel = np.abs(x - y) / np.maximum(np.abs(y), np.finfo(float).tiny)
                if not np.all(np.isfinite(rel)):  # NaN or inf in one run only
                    sys.exit(f"{name}: {key} is not finite in one of the runs")
                worst = max(worst, float(np.max(rel, initial=0.0)))
            if worst > rtol:
                sys.exit(f"{name}: {key} differs between Python 3.13 and the host ({worst:.1e} relative)")
        print(f"{name}: {len(keys)} histograms, {exact} bit-identical to the host's, the others "
              f"within {worst:.1e} relative (values and variances)")
PY

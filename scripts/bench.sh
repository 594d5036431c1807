#!/usr/bin/env bash
# Runs every benchmark of the project and prints their tables.
#
# The proxy benchmark compares the coordinator with Debian's nginx in front
# of the same children, so nginx is installed first when missing (Debian's
# `nginx` package: in bookworm `nginx-light` is only a transitional package
# that pulls `nginx` plus an extra module, so `nginx` is the smallest).
# Without root or apt-get the nginx column is skipped, not the run.
#
# Usage: scripts/bench.sh [proxy|routing|supervision ...]   (default: all)
# Env: BENCH_MEASURE_MS (proxy cell window, default 1500),
#      BENCH_ROUTING_MS (routing run window, default 3000).
set -euo pipefail

cd "$(dirname "$0")/.."

have_nginx() {
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]
}

if ! have_nginx; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench.sh: installing Debian's nginx for the proxy comparison"
        apt-get update -qq
        # A container has no init: keep the package from starting a
        # system-wide nginx on port 80, which the benchmark does not use.
        DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
            apt-get install -y -qq --no-install-recommends nginx >/dev/null
    else
        echo "bench.sh: nginx missing and cannot be installed here (need root and apt-get); the nginx column will be skipped"
    fi
fi
if have_nginx; then
    echo "bench.sh: $( (command -v nginx || echo /usr/sbin/nginx) | head -n1): $( (nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1) | head -n1)"
fi

benches=("$@")
if [ "${#benches[@]}" -eq 0 ]; then
    benches=(proxy routing supervision)
fi

args=()
for b in "${benches[@]}"; do
    args+=(--bench "$b")
done

echo "bench.sh: building (release) ..."
cargo bench --no-run "${args[@]}"

echo "bench.sh: $(nproc) CPUs, $(uname -sr)"
for b in "${benches[@]}"; do
    echo
    cargo bench -q --bench "$b"
done

#!/usr/bin/env bash
# Runs every benchmark of the project and prints their tables.
#
# The proxy benchmark compares the coordinator with Debian's nginx in front
# of the same children; the fleet benchmark compares its fleet queue with
# Debian's HAProxy (maxconn 1 per server and its queue) and nginx, and reads
# the handoff times from a capture of the children's ports by Debian's
# tcpdump. The missing ones of those three packages are installed first
# (Debian's `nginx`: in bookworm `nginx-light` is only a transitional
# package that pulls `nginx` plus an extra module, so `nginx` is the
# smallest). Without root or apt-get their columns are skipped, not the run.
#
# Usage: scripts/bench.sh [proxy|routing|supervision|fleet|hydrate|edge|dialect|hold ...]
#        (default: proxy routing supervision fleet dialect)
# Env: BENCH_MEASURE_MS (proxy and dialect cell window, default 1500),
#      BENCH_ROUTING_MS (routing run window, default 3000),
#      BENCH_FLEET_MS (fleet run window, default 6000),
#      BENCH_FLEET_REPS (fleet repetitions, default 3).
set -euo pipefail

cd "$(dirname "$0")/.."

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

missing=()
for tool in nginx haproxy tcpdump; do
    have "$tool" || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench.sh: installing Debian's ${missing[*]} for the comparisons"
        apt-get update -qq
        # A container has no init: keep the packages from starting a
        # system-wide nginx on port 80 or haproxy, which the benchmarks do
        # not use.
        DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "bench.sh: ${missing[*]} missing and cannot be installed here (need root and apt-get); their columns will be skipped"
    fi
fi
if have nginx; then
    echo "bench.sh: nginx: $( (nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1) | head -n1)"
fi
if have haproxy; then
    echo "bench.sh: haproxy: $( (haproxy -v 2>/dev/null || /usr/sbin/haproxy -v 2>/dev/null) | head -n1)"
fi

benches=("$@")
if [ "${#benches[@]}" -eq 0 ]; then
    benches=(proxy routing supervision fleet dialect)
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

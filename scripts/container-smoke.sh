#!/usr/bin/env bash
# A real container run of the static coordinator, with podman (no Docker
# engine is needed, nor any base image: the image is FROM scratch).
#
#  1. scripts/build-static.sh builds static aistudioproxy and aisp-testchild
#     (skip with SMOKE_SKIP_BUILD=1 when target/static/ already has both).
#  2. Builds a scratch image laid out like Dockerfile.prod's `coordinator`
#     stage (same ENV, WORKDIR /app, non-root UID 65532), plus the test child
#     as CHILD_COMMAND.
#  3. Runs it with two sample profiles mounted read-only, the test child in
#     its real-child mode (TESTCHILD_REAL_CHILD=1: each launcher starts a
#     "browser" in its own session holding the camoufox port, and a stream
#     helper that ignores SIGTERM and so keeps the launcher alive), publishes
#     2048 on 127.0.0.1 only, and checks /live and /ready with curl, and that
#     each slot has its launcher, helper and session-detached browser.
#  4. SIGKILLs one launcher from the host, which orphans its browser and
#     helper: they must be stopped, and the slot must come back ready with a
#     new launcher and browser on the same ports.
#  5. `podman stop` (SIGTERM): the coordinator must stop every tree itself
#     (its log counts at least launcher, helper and browser per slot; the
#     helpers take the grace and SIGKILL) and exit 0 well inside the stop
#     timeout; no process of the container may be left on the host.
#
# Needs root (podman with runc; rootless is not set up on the build machines).
# Installs podman, runc and curl with apt-get when they are missing.
# Everything it creates (container, image, temp dirs) is removed on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT_DIR=${STATIC_OUT_DIR:-$ROOT/target/static}
TAG=$$
IMAGE=localhost/aistudioproxy-smoke:$TAG
NAME=aistudioproxy-smoke-$TAG
STOP_TIMEOUT=30   # what `podman stop` waits before SIGKILL
CHILD_GRACE=10    # CHILD_STOP_GRACE_S inside the container
# In this sandbox the default runtime (crun) and the default rlimits do not
# work for podman; runc with explicit limits does.
PODMAN_RUN_FLAGS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

SLOTS=2           # POOL_SIZE, and the number of profiles
step() { printf '== %s\n' "$*"; }
die() { printf 'container-smoke: FAIL: %s\n' "$*" >&2; dump_logs; exit 1; }
dump_logs() {
    if [ -n "${started:-}" ]; then
        echo "---- podman logs $NAME (last 60 lines) ----" >&2
        podman logs "$NAME" 2>&1 | tail -n 60 >&2 || true
    fi
}

work=$(mktemp -d /tmp/aisp-smoke.XXXXXX)
cleanup() {
    podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
    podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "container-smoke: run as root (podman with runc)" >&2; exit 1; }
missing=()
for p in podman runc curl; do
    command -v "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi

if [ "${SMOKE_SKIP_BUILD:-0}" != 1 ]; then
    step "static build"
    scripts/build-static.sh
fi
for bin in aistudioproxy aisp-testchild; do
    [ -x "$OUT_DIR/$bin" ] || die "$OUT_DIR/$bin is missing: run scripts/build-static.sh"
done

# A free TCP port on the host for the published coordinator port.
host_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$host_port"

step "image $IMAGE (FROM scratch)"
ctx=$work/ctx
mkdir -p "$ctx/rootfs/tmp" "$ctx/rootfs/app"
chmod 1777 "$ctx/rootfs/tmp"
cp "$OUT_DIR/aistudioproxy" "$OUT_DIR/aisp-testchild" "$ctx/"
cat >"$ctx/Containerfile" <<EOF
FROM scratch
COPY --chown=65532:65532 rootfs/ /
COPY aistudioproxy /usr/local/bin/aistudioproxy
COPY aisp-testchild /usr/local/bin/aisp-testchild
ENV PROFILE_BACKEND=local \\
    LOCAL_PROFILE_DIR=auth_profiles/active \\
    AUTH_PROFILE_CACHE_DIR=/tmp/auth_profiles \\
    COORDINATOR_HOST=0.0.0.0 \\
    COORDINATOR_PORT=2048 \\
    BASE_API_PORT=3100 \\
    BASE_STREAM_PORT=3200 \\
    BASE_CAMOUFOX_PORT=9222 \\
    PORT_STEP=1 \\
    HEADLESS=true \\
    COORDINATOR_LOG_DIR=logs/coordinator \\
    POOL_SIZE=2 \\
    READY_TIMEOUT_S=60 \\
    CHILD_STOP_GRACE_S=$CHILD_GRACE \\
    CHILD_COMMAND=/usr/local/bin/aisp-testchild
WORKDIR /app
USER 65532:65532
EXPOSE 2048
ENTRYPOINT ["/usr/local/bin/aistudioproxy"]
EOF
podman build --quiet --runtime runc -t "$IMAGE" -f "$ctx/Containerfile" "$ctx" >/dev/null
podman image inspect --format 'image size {{.Size}} bytes, layers {{len .RootFS.Layers}}' "$IMAGE"

# Two profiles; the test child reads its knobs from the "testchild" object.
prof=$work/profiles
mkdir -p "$prof/active"
printf '{"cookies": [], "origins": [], "testchild": {"ready_after_ms": 300}}\n' >"$prof/active/alpha.json"
printf '{"cookies": [], "origins": [], "testchild": {"ready_after_ms": 300}}\n' >"$prof/active/bravo.json"
chmod -R a+rX "$prof"

step "run $NAME (profiles mounted read-only, 127.0.0.1:$host_port -> 2048)"
podman run -d --name "$NAME" "${PODMAN_RUN_FLAGS[@]}" \
    -p "127.0.0.1:$host_port:2048" \
    -v "$prof:/profiles:ro" \
    -e LOCAL_PROFILE_DIR=/profiles/active \
    -e TESTCHILD_REAL_CHILD=1 \
    "$IMAGE" >/dev/null
started=1
cid=$(podman inspect --format '{{.Id}}' "$NAME")

# wait_http PATH STATUS DEADLINE_S: poll until GET PATH answers STATUS.
wait_http() {
    local path=$1 want=$2 deadline=$(( $(date +%s) + $3 )) code
    while :; do
        code=$(curl -s -o "$work/body" -w '%{http_code}' --max-time 2 "$base$path" || true)
        [ "$code" = "$want" ] && return 0
        [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" = true ] \
            || die "container exited while waiting for $path"
        [ "$(date +%s)" -lt "$deadline" ] || die "GET $path: wanted $want, last answer ${code:-none} after $3 s: $(cat "$work/body" 2>/dev/null)"
        sleep 0.2
    done
}

# ready_state: "<ready count> <slot:pid:state:restarts ...>" from /ready's JSON.
ready_state() {
    curl -s --max-time 2 "$base/ready" | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    print("0 unparsable"); sys.exit()
print(len(d.get("ready_children", [])),
      " ".join("%s:%s:%s:%s" % (s["slot"], s.get("pid"), s["state"], s.get("restarts", 0)) for s in d.get("slots", [])))
'
}

# stat_field HPID N: field N of /proc/HPID/stat, counted after the command
# name (2 ppid, 4 session, 20 start time); fails when the process is gone.
stat_field() {
    local stat f
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    read -r -a f <<<"${stat##*) }"
    printf '%s\n' "${f[$(($2 - 1))]}"
}
cmd_of() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }
# ident HPID: "hpid:start", so a recycled pid is never taken for the old process.
ident() { printf '%s:%s\n' "$1" "$(stat_field "$1" 20)"; }
alive() { [ "$(stat_field "${1%%:*}" 20 2>/dev/null)" = "${1#*:}" ]; }
# pids IDENT...: the pids of "hpid:start" identities, space-separated.
pids() { local i; for i in "$@"; do printf ' %s' "${i%%:*}"; done; }
# procs ROLE: host pids of the container's processes in ROLE: launcher (the
# child itself, with --server-port), browser or helper.
procs() {
    local p c
    for p in $(podman top "$NAME" hpid | tail -n +2); do
        c=$(cmd_of "$p")
        case "$1:$c" in
            launcher:*aisp-testchild*--server-port*) echo "$p" ;;
            browser:*aisp-testchild\ --browser*) echo "$p" ;;
            helper:*aisp-testchild\ --helper*) echo "$p" ;;
        esac
    done
}
# kids_of HPID: its child processes (by parent link, any session).
kids_of() {
    local p
    for p in $(podman top "$NAME" hpid | tail -n +2); do
        [ "$(stat_field "$p" 2 2>/dev/null)" = "$1" ] && echo "$p"
    done
    return 0
}
# wait_trees N DEADLINE_S: until N launchers each have a browser and a helper.
wait_trees() {
    local deadline=$(( $(date +%s) + $2 ))
    while :; do
        [ "$(procs launcher | wc -l)" = "$1" ] && [ "$(procs browser | wc -l)" = "$1" ] \
            && [ "$(procs helper | wc -l)" = "$1" ] && return 0
        [ "$(date +%s)" -lt "$deadline" ] \
            || die "wanted $1 launchers, browsers and helpers; have $(procs launcher | wc -l), $(procs browser | wc -l), $(procs helper | wc -l)"
        sleep 0.2
    done
}

step "GET /live"
wait_http /live 200 20
echo "   $(cat "$work/body")"
step "GET /ready (both children ready)"
deadline=$(( $(date +%s) + 60 ))
until [ "$(ready_state | cut -d' ' -f1)" = "$SLOTS" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "two ready children never appeared: $(ready_state)"
    sleep 0.2
done
wait_http /ready 200 5
echo "   ready: $(ready_state)"

step "processes in the container (each slot: launcher, helper, browser in its own session)"
wait_trees "$SLOTS" 10
podman top "$NAME" hpid pid user args
for l in $(procs launcher); do
    for k in $(kids_of "$l"); do
        case "$(cmd_of "$k")" in
            *--browser*)
                [ "$(stat_field "$k" 4)" != "$(stat_field "$l" 4)" ] \
                    || die "browser $k is in its launcher's session: the test child is not in real-child mode"
                ;;
        esac
    done
done

# The first launcher's host PID and its PID inside the container, and the
# browser and helper it leaves orphaned when it is killed.
read -r victim_hpid victim_pid < <(podman top "$NAME" hpid pid args | awk '/aisp-testchild/ && /--server-port/ {print $1, $2; exit}')
[ -n "${victim_hpid:-}" ] || die "no launcher process in the container"
mapfile -t orphans < <(for k in $(kids_of "$victim_hpid"); do ident "$k"; done)
[ "${#orphans[@]}" -ge 2 ] || die "launcher $victim_hpid has no browser and helper:$(pids "${orphans[@]}")"
step "SIGKILL launcher pid $victim_pid (host pid $victim_hpid); its orphans go, its slot comes back"
kill -KILL "$victim_hpid"
# The orphaned helper ignores SIGTERM: the restart waits out the grace.
recover_s=$((CHILD_GRACE + 20))
deadline=$(( $(date +%s) + recover_s ))
while :; do
    state=$(ready_state)
    # Recovered: two ready children again, and none of them is the victim.
    if [ "$(echo "$state" | cut -d' ' -f1)" = "$SLOTS" ] && ! echo "$state" | grep -qE "(^| )[0-9]+:$victim_pid:"; then
        break
    fi
    [ "$(date +%s)" -lt "$deadline" ] || die "slot did not recover within $recover_s s: $state"
    sleep 0.2
done
echo "   recovered: $state"
wait_http /ready 200 5
for o in "${orphans[@]}"; do
    ! alive "$o" || die "orphan ${o%%:*} of the killed launcher survived the restart: $(cmd_of "${o%%:*}")"
done
echo "   orphans stopped:$(pids "${orphans[@]}")"
wait_trees "$SLOTS" 10

mapfile -t all < <(for p in $(podman top "$NAME" hpid | tail -n +2); do ident "$p"; done)
step "podman stop -t $STOP_TIMEOUT (SIGTERM to PID 1)"
t0=$(date +%s.%N)
podman stop -t "$STOP_TIMEOUT" "$NAME" >/dev/null
elapsed=$(python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)")
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
echo "   stopped in ${elapsed}s, exit code $code"
[ "$code" = 0 ] || die "coordinator exit code $code after SIGTERM (137 means podman had to SIGKILL it)"
# The helpers ignore SIGTERM, so each tree takes the grace and then SIGKILL;
# the coordinator, not podman, must have finished it.
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "$elapsed" "$((CHILD_GRACE + 5))" \
    || die "stop took ${elapsed}s: the coordinator should be done soon after the ${CHILD_GRACE}s grace, well before the ${STOP_TIMEOUT}s stop timeout"
# Each slot's last stop line counts the processes of its tree: at least the
# launcher, its helper and its browser, which is in another session.
stops=$(podman logs "$NAME" 2>&1 | sed -n '/received: shutting down/,$p' \
    | grep -E 'slot [0-9]+: profile .* (processes gone|ignored SIGTERM)' || true)
[ "$(echo "$stops" | grep -c .)" = "$SLOTS" ] || die "wanted $SLOTS stop lines after the signal, got: ${stops:-none}"
while read -r line; do
    n=$(echo "$line" | sed -nE 's/.* of its ([0-9]+) processes .*/\1/p; s/.*: ([0-9]+) processes gone.*/\1/p')
    [ "${n:-0}" -ge 3 ] || die "a tree of fewer than 3 processes was stopped (the browser was missed?): $line"
done <<<"$stops"
while read -r line; do echo "   $line"; done <<<"$stops"
! podman logs "$NAME" 2>&1 | grep -q 'could not be stopped' || die "the coordinator could not stop some processes"
left=""
for p in "${all[@]}"; do
    alive "$p" && left="$left ${p%%:*}($(cmd_of "${p%%:*}"))"
done
for c in /proc/[0-9]*/cgroup; do
    grep -q "$cid" "$c" 2>/dev/null && left="$left ${c//[^0-9]/}(in the container's cgroup)"
done
[ -z "$left" ] || die "processes left after stop:$left"
echo "   no process left of:$(pids "${all[@]}"), none in the container's cgroup"
echo "---- coordinator log (last 15 lines) ----"
podman logs "$NAME" 2>&1 | tail -n 15
echo "container-smoke: PASS"

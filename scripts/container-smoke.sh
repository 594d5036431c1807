#!/usr/bin/env bash
# A real container run of the static coordinator, with podman (no Docker
# engine is needed, nor any base image: the image is FROM scratch).
#
#  1. scripts/build-static.sh builds static aistudioproxy and aisp-testchild
#     (skip with SMOKE_SKIP_BUILD=1 when target/static/ already has both).
#  2. Builds a scratch image laid out like Dockerfile.prod's `coordinator`
#     stage (same ENV, WORKDIR /app, non-root UID 65532), plus the test child
#     as CHILD_COMMAND.
#  3. Runs it with two sample profiles mounted read-only, publishes 2048 on
#     127.0.0.1 only, and checks /live and /ready with curl.
#  4. SIGKILLs one child from the host and waits for its slot to come back
#     ready with a new process.
#  5. `podman stop` (SIGTERM): the coordinator must exit 0 well inside the
#     stop timeout, and none of its processes may be left.
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
    "$IMAGE" >/dev/null
started=1

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

step "GET /live"
wait_http /live 200 20
echo "   $(cat "$work/body")"
step "GET /ready (both children ready)"
deadline=$(( $(date +%s) + 60 ))
until [ "$(ready_state | cut -d' ' -f1)" = 2 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "two ready children never appeared: $(ready_state)"
    sleep 0.2
done
wait_http /ready 200 5
echo "   ready: $(ready_state)"

step "processes in the container"
podman top "$NAME" hpid pid user args

# The first test child's host PID and its PID inside the container.
read -r victim_hpid victim_pid < <(podman top "$NAME" hpid pid args | awk '/aisp-testchild/ {print $1, $2; exit}')
[ -n "${victim_hpid:-}" ] || die "no aisp-testchild process in the container"
step "SIGKILL child pid $victim_pid (host pid $victim_hpid); its slot must come back"
kill -KILL "$victim_hpid"
deadline=$(( $(date +%s) + 30 ))
while :; do
    state=$(ready_state)
    # Recovered: two ready children again, and none of them is the victim.
    if [ "$(echo "$state" | cut -d' ' -f1)" = 2 ] && ! echo "$state" | grep -qE "(^| )[0-9]+:$victim_pid:"; then
        break
    fi
    [ "$(date +%s)" -lt "$deadline" ] || die "slot did not recover within 30 s: $state"
    sleep 0.2
done
echo "   recovered: $state"
wait_http /ready 200 5

all_hpids=$(podman top "$NAME" hpid | tail -n +2 | tr -s ' \n' ' ')
step "podman stop -t $STOP_TIMEOUT (SIGTERM to PID 1)"
t0=$(date +%s.%N)
podman stop -t "$STOP_TIMEOUT" "$NAME" >/dev/null
elapsed=$(python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)")
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
echo "   stopped in ${elapsed}s, exit code $code"
[ "$code" = 0 ] || die "coordinator exit code $code after SIGTERM (137 means podman had to SIGKILL it)"
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "$elapsed" "$CHILD_GRACE" \
    || die "stop took ${elapsed}s: children should exit on SIGTERM, well before the ${CHILD_GRACE}s grace and the ${STOP_TIMEOUT}s stop timeout"
left=""
for p in $all_hpids; do
    [ -d "/proc/$p" ] && left="$left $p($(tr '\0' ' ' <"/proc/$p/cmdline"))"
done
[ -z "$left" ] || die "processes left after stop:$left"
echo "   no process left of:$all_hpids"
echo "---- coordinator log (last 15 lines) ----"
podman logs "$NAME" 2>&1 | tail -n 15
echo "container-smoke: PASS"

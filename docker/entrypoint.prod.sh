#!/bin/sh
# Production entrypoint: hydrate auth profiles once, then become the
# coordinator.
#
#  1. `aistudioproxy --hydrate-only` stages the profiles from the configured
#     backend (PROFILE_BACKEND=local|s3) under $AUTH_PROFILE_CACHE_DIR/active
#     and key.txt beside it, and prints one JSON object:
#       {"profiles_dir": "<abs dir>", "key_file": "<abs path>"|null, "profiles": N}
#  2. When a key file came, export AUTH_KEY_FILE_PATH so the children find it.
#  3. Force PROFILE_BACKEND=local with LOCAL_PROFILE_DIR at the staged
#     directory, so the coordinator adopts it instead of downloading again.
#  4. exec the coordinator: it becomes PID 1, receives SIGTERM from
#     `docker stop`/Kubernetes, stops its children and reaps orphans.
#
# Every failure is the binary's own one-line message on stderr and its exit
# code (1 hydration failed, 2 invalid configuration); this script adds none
# of its own for those cases.
#
# The JSON is parsed with sed rather than python or jq: the runtime image is
# not guaranteed to have jq, python may be named differently there, and the
# object is small, flat and produced by our own binary.
set -eu

BIN=${AISTUDIOPROXY_BIN:-aistudioproxy}

log() { printf '[entrypoint] %s\n' "$*" >&2; }

# json_string KEY: the string value of KEY in $summary, empty when it is null
# or absent. Paths with characters that JSON escapes (", \, control
# characters) are refused rather than mis-parsed.
json_string() {
    printf '%s' "$summary" | tr '\n' ' ' \
        | sed -n 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*"\([^"\\]*\)".*/\1/p'
}

out_file=$(mktemp "${TMPDIR:-/tmp}/aistudioproxy-hydrate.XXXXXX")
# Run hydration in the background and wait for it: as PID 1 this shell would
# otherwise ignore SIGTERM until an S3 download finished.
"$BIN" --hydrate-only >"$out_file" &
hydrate_pid=$!
trap 'kill -TERM "$hydrate_pid" 2>/dev/null; rm -f "$out_file"; exit 143' TERM
trap 'kill -INT "$hydrate_pid" 2>/dev/null; rm -f "$out_file"; exit 130' INT
status=0
wait "$hydrate_pid" || status=$?
trap - TERM INT
summary=$(cat "$out_file")
rm -f "$out_file"
# The binary already printed its one-line reason on stderr.
[ "$status" -eq 0 ] || exit "$status"

profiles_dir=$(json_string profiles_dir)
if [ -z "$profiles_dir" ]; then
    log "aistudioproxy --hydrate-only printed no usable profiles_dir: $summary"
    exit 1
fi
key_file=$(json_string key_file)
profiles=$(printf '%s' "$summary" | tr '\n' ' ' | sed -n 's/.*"profiles"[[:space:]]*:[[:space:]]*\([0-9]*\).*/\1/p')
log "hydrated ${profiles:-?} profile(s) from ${PROFILE_BACKEND:-local} into $profiles_dir"

if [ -n "$key_file" ]; then
    export AUTH_KEY_FILE_PATH="$key_file"
    log "AUTH_KEY_FILE_PATH=$key_file"
elif [ -n "${AUTH_KEY_FILE_PATH:-}" ]; then
    log "no key.txt hydrated; keeping AUTH_KEY_FILE_PATH=$AUTH_KEY_FILE_PATH from the environment"
else
    log "no key.txt hydrated; API key checks are disabled"
fi

export PROFILE_BACKEND=local
export LOCAL_PROFILE_DIR="$profiles_dir"

exec "$BIN" "$@"

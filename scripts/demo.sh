#!/usr/bin/env bash
# Build aistudioproxy and run it in front of the project's test child with the
# sample profiles in scripts/demo-profiles: no browser, no S3, no credentials.
# Then, from another terminal:
#   curl -s localhost:2048/ready
#   curl -s localhost:2048/v1/chat/completions -H 'Content-Type: application/json' \
#       -d '{"messages":[{"role":"user","content":"hi"}]}'
# Ctrl-C stops it (children included).
#
# Besides COORDINATOR_PORT (2048) the two slots need six more ports on
# 127.0.0.1: 3100/3101 (child API), 3200/3201 (stream), 9222/9223 (camoufox).
# Move them with BASE_API_PORT, BASE_STREAM_PORT, BASE_CAMOUFOX_PORT or
# PORT_STEP, e.g. BASE_API_PORT=4100 ./scripts/demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# Not --quiet: the first build compiles every dependency (about 90 s), and
# a silent terminal for that long looks like a hang.
if [ -x target/debug/aistudioproxy ] && [ -x target/debug/aisp-testchild ]; then
    echo "demo: building..." >&2
else
    echo "demo: building (first time about 90 s)..." >&2
fi
cargo build --bins
demo_dir=$(mktemp -d "${TMPDIR:-/tmp}/aistudioproxy-demo.XXXXXX")
trap 'rm -rf "$demo_dir"' EXIT
export LOCAL_PROFILE_DIR="$PWD/scripts/demo-profiles/active"
export AUTH_PROFILE_CACHE_DIR="$demo_dir/cache"
export COORDINATOR_LOG_DIR="$demo_dir/logs"
export COORDINATOR_PORT="${COORDINATOR_PORT:-2048}"
export RUST_LOG="${RUST_LOG:-info}"
echo "demo: child logs in $COORDINATOR_LOG_DIR" >&2
echo "demo: try: curl -s localhost:$COORDINATOR_PORT/ready" >&2
# Not exec: the trap above removes the scratch directory after the exit.
./target/debug/aistudioproxy "$@" -- "$PWD/target/debug/aisp-testchild"

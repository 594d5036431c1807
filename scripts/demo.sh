#!/usr/bin/env bash
# Build aistudioproxy and run it in front of the project's test child with the
# sample profiles in scripts/demo-profiles: no browser, no S3, no credentials.
# Then, from another terminal:
#   curl -s localhost:2048/ready
#   curl -s localhost:2048/v1/chat/completions -d '{"messages":[{"role":"user","content":"hi"}]}'
# Ctrl-C stops it (children included).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bins
demo_dir=$(mktemp -d "${TMPDIR:-/tmp}/aistudioproxy-demo.XXXXXX")
trap 'rm -rf "$demo_dir"' EXIT
export LOCAL_PROFILE_DIR="$PWD/scripts/demo-profiles/active"
export AUTH_PROFILE_CACHE_DIR="$demo_dir/cache"
export COORDINATOR_LOG_DIR="$demo_dir/logs"
export COORDINATOR_PORT="${COORDINATOR_PORT:-2048}"
export RUST_LOG="${RUST_LOG:-info}"
echo "demo: child logs in $COORDINATOR_LOG_DIR; try: curl -s localhost:$COORDINATOR_PORT/ready" >&2
# Not exec: the trap above removes the scratch directory after the exit.
./target/debug/aistudioproxy "$@" -- "$PWD/target/debug/aisp-testchild"

#!/usr/bin/env bash
# Install what the test suite needs on a fresh machine, then run all of it:
# formatting and lints, the Rust unit and integration tests (the real
# binaries against real test children, a real signature-checking S3 server,
# the official OpenAI, Anthropic and Google Gen AI Python SDKs, the Claude Code
# CLI; the real AI Studio proxy child, current and
# older fork, from ../shared/realchild), the deployment checks (shellcheck,
# hadolint, Kubernetes schemas) and, under CI=true or AISP_CONTAINER_SMOKE=1,
# the real container run of scripts/container-smoke.sh. Exits non-zero if
# anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*" >&2; }
export PATH="$HOME/.cargo/bin:$PATH"

missing=()
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
# The status page test drives Debian's Chromium (no browser download).
[ -x /usr/lib/chromium/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# An S3-compatible server that checks request signatures; the S3 tests start
# their own instances of it on 127.0.0.1. 0.14.1: later ones need a newer rustc.
# It also enforces If-Match and If-None-Match: * on PutObject, which the
# write-back tests rely on (tests/writeback.rs proves it); it ignores If-Match
# on DeleteObject and cannot deny single permissions (fakes cover a 403).
if ! command -v s3s-fs >/dev/null 2>&1; then
    say "installing s3s-fs 0.14.1 (cargo install)"
    cargo install --quiet --locked s3s-fs@0.14.1 --features binary
fi

say "Python venv (.venv) for the OpenAI SDK test and the deployment checks"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt

# The Claude Code CLI for tests/dialect.rs, in a local prefix (ignored by
# git); npm skips the download when the pinned version is there already.
say "Claude Code CLI (.npm-tools)"
if ! command -v npm >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -x .npm-tools/node_modules/.bin/claude ]; then
    npm install --prefix .npm-tools --no-audit --no-fund --silent @anthropic-ai/claude-code@2
fi

# The real child (tests/upstream_child.rs): chromium (apt), a copy of each
# flavour's source and its venv, in .realchild/ (ignored by git; idempotent).
# Without ../shared/realchild those tests say how to get it and skip.
realchild_src=${AISP_REALCHILD_SRC:-../shared/realchild}
if [ -f "$realchild_src/setup.sh" ]; then
    for flavour in current fork; do
        say "the real child ($flavour) in .realchild/$flavour"
        bash "$realchild_src/setup.sh" ".realchild/$flavour" "$flavour" >/dev/null
    done
else
    say "no real child at $realchild_src: tests/upstream_child.rs will skip (see its SKIPPED line)"
fi

status=0
steps_passed=0
steps_failed=0
run() {
    say "$*"
    if "$@"; then
        steps_passed=$((steps_passed + 1))
    else
        status=1
        steps_failed=$((steps_failed + 1))
        say "FAILED: $*"
    fi
}
run cargo fmt --all -- --check
run cargo clippy --locked --all-targets -- -D warnings
run cargo build --locked --bins --tests
# The real-child tests run last and alone (a browser per child), printing
# their MEASURED figures.
real='test(/^upstream_child::/)'
if cargo nextest --version >/dev/null 2>&1; then
    run cargo nextest run --locked --no-fail-fast -E "not ($real)"
    run cargo nextest run --locked --no-fail-fast --no-capture -E "$real"
else
    run cargo test --locked --no-fail-fast -- --skip upstream_child::
    run cargo test --locked --no-fail-fast --test tests -- --test-threads 1 --nocapture upstream_child::
fi
run env CI="${CI:-}" .venv/bin/python -m pytest -q tests/python
# The real container run (static musl build, FROM scratch image, podman):
# about 4 minutes the first time, so CI runs it and a developer asks for it.
if [ "${CI:-}" = true ] || [ "${AISP_CONTAINER_SMOKE:-}" = 1 ]; then
    run ./scripts/container-smoke.sh
else
    say "skipping scripts/container-smoke.sh (set AISP_CONTAINER_SMOKE=1 to run it; CI always does)"
fi
printf '\nsteps: %d passed, %d failed\n' "$steps_passed" "$steps_failed"
exit "$status"

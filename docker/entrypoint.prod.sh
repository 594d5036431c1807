#!/bin/sh
# Production entrypoint: become the coordinator.
#
# The coordinator hydrates its auth profiles itself, from the configured
# backend (PROFILE_BACKEND=local|s3), and keeps that backend as its source
# for the whole run:
#   - write-back of the logins its children refresh goes to the S3 prefix
#     (or, with AUTH_WRITEBACK=all, to LOCAL_PROFILE_DIR);
#   - a reload (SIGHUP, `aistudioproxy ctl reload`, PROFILE_RELOAD_INTERVAL_S)
#     reads that source again.
# An earlier version of this script ran `aistudioproxy --hydrate-only` and
# then forced PROFILE_BACKEND=local at the staged copy, which silently turned
# both off in production: the coordinator believed the cache was its source.
#
# What that version did still happens, in the coordinator:
#   - a SIGTERM during a long S3 download stops it at once (it handles
#     SIGTERM from its first line, so it does as PID 1 too; exit code 143);
#   - a hydrated key.txt is handed to every child as AUTH_KEY_FILE_PATH, and
#     an AUTH_KEY_FILE_PATH from the environment is used when none was
#     hydrated;
#   - a failed hydration ends the container at once with the binary's own
#     one-line message on stderr and its exit code (1 hydration failed,
#     2 invalid configuration); this script adds nothing.
#
# `exec`, so the coordinator is PID 1: it receives SIGTERM from `docker stop`
# or Kubernetes, stops its children's process trees and reaps orphans.
set -eu

BIN=${AISTUDIOPROXY_BIN:-aistudioproxy}

exec "$BIN" "$@"

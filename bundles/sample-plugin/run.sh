#!/bin/sh
# stella sample plugin, protocol v1: the request arrives on stdin (its scalar inputs also as
# STELLA_INPUT_* variables); events go to stdout as NDJSON; the exit code confirms the result.
# This one needs only the variables and leaves stdin unread: stella does not wait for a plugin
# to read its request (and a `cat` to drain it would be a second process per attempt).
set -eu
printf '{"event":"log","message":"sample plugin: step %s attempt %s"}\n' "$STELLA_STEP" "$STELLA_ATTEMPT"
if [ -n "${STELLA_INPUT_FILE:-}" ]; then
  printf '%s start\n' "$STELLA_STEP" >>"$STELLA_INPUT_FILE"
  sleep "${STELLA_INPUT_SLEEP:-0}"
  printf '%s end\n' "$STELLA_STEP" >>"$STELLA_INPUT_FILE"
fi
printf '{"event":"output","name":"attempt","value":%s}\n' "$STELLA_ATTEMPT"
printf '{"event":"result","outputs":{"step":"%s"}}\n' "$STELLA_STEP"

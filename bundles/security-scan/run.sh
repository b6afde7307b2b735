#!/bin/sh
# stella sample gate plugin, protocol v1: kind `gate`. It receives the artifact being promoted
# (STELLA_INPUT_ARTIFACT, STELLA_INPUT_DIGEST), where it comes from (STELLA_INPUT_FROM), the
# environment's target (STELLA_INPUT_TARGET) and the gate's config (STELLA_INPUT_CONFIG, JSON),
# and passes with its evidence or fails with the reason.
# Make it slow or failing on purpose, for drills and tests, with a file in the target directory:
#   .scan-slow   the scan takes as many seconds as the file says first
#   .scan-fail   the scan finds a critical vulnerability (the file's text names it)
set -eu
t="${STELLA_INPUT_TARGET:?the target directory is an input}"
a="${STELLA_INPUT_ARTIFACT:?the artifact is an input}"
mkdir -p "$t"
slow=$(cat "$t/.scan-slow" 2>/dev/null || true)
printf '{"event":"log","message":"scanning %s for %s"}\n' "$a" "${STELLA_INPUT_ENV:-?}"
sleep "${slow:-0}"
if [ -e "$t/.scan-fail" ]; then
  finding=$(head -c 200 "$t/.scan-fail" | tr -d '"\\\n')
  printf 'scan of %s: critical finding %s (remove %s/.scan-fail)\n' "$a" "${finding:-CVE-0000-0000}" "$t" >&2
  exit 1
fi
printf '{"event":"result","outputs":{"passed":true,"artifact":"%s","digest":"%s","findings":0,"scanner":"sample-scan 1.0"}}\n' \
  "$a" "${STELLA_INPUT_DIGEST:-}"

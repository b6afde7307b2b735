#!/bin/sh
# stella sample deploy agent plugin, protocol v1. The target is a directory
# (STELLA_INPUT_TARGET); an artifact is a directory of files (STELLA_INPUT_SOURCE). Kinds:
#   deploy        copies the artifact into TARGET/current/ and writes TARGET/deployed.json;
#                 a reset (STELLA_INPUT_KIND=reset) writes the baseline to TARGET/config.json
#   health        reads TARGET/deployed.json back: the artifact and digest asked for must be there
#   connectivity  whether the target can be reached
#   credentials   whether the agent authenticates and is authorized on the target
#   observe       the target's current configuration (TARGET/config.json) as output `config`
# Break it on purpose, for drills and tests, with a file in the target directory:
#   .unreachable       every kind fails: the target cannot be reached
#   .bad-credentials   deploy and credentials fail: authentication is refused
#   .unauthorized      deploy and credentials fail: authenticated, not authorized
#   .unhealthy         health fails
#   .slow              deploy sleeps as many seconds as the file says first
set -eu
cat >/dev/null
t="${STELLA_INPUT_TARGET:?the target directory is an input}"
kind="${STELLA_KIND:-deploy}"
say() { printf '{"event":"log","message":"%s"}\n' "$1"; }
fail() { printf '%s\n' "$1" >&2; exit 1; }
mkdir -p "$t"
[ -e "$t/.unreachable" ] && fail "connect $t: target unreachable (remove $t/.unreachable)"
creds() {
  [ -e "$t/.bad-credentials" ] && fail "authenticate to $t: credentials refused (remove $t/.bad-credentials)"
  [ -e "$t/.unauthorized" ] && fail "authorize on $t: not permitted to deploy (remove $t/.unauthorized)"
  return 0
}
case "$kind" in
deploy)
  creds
  # Read once: a drill may remove the file meanwhile.
  slow=$(cat "$t/.slow" 2>/dev/null || true)
  sleep "${slow:-0}"
  if [ "${STELLA_INPUT_KIND:-direct}" = reset ]; then
    printf '%s\n' "$STELLA_INPUT_BASELINE" >"$t/config.json.new" && mv "$t/config.json.new" "$t/config.json"
    say "reset $t to the baseline"
  else
    rm -rf "$t/next" && mkdir -p "$t/next"
    cp -R "$STELLA_INPUT_SOURCE/." "$t/next/"
    rm -rf "$t/previous"
    [ -d "$t/current" ] && mv "$t/current" "$t/previous"
    mv "$t/next" "$t/current"
    [ -e "$t/config.json" ] || printf '%s\n' "$STELLA_INPUT_BASELINE" >"$t/config.json"
    say "installed $STELLA_INPUT_ARTIFACT into $t/current"
  fi
  printf '{"artifact":"%s","digest":"%s","deployment":"%s"}\n' \
    "$STELLA_INPUT_ARTIFACT" "$STELLA_INPUT_DIGEST" "$STELLA_INPUT_DEPLOYMENT" >"$t/deployed.json.new"
  mv "$t/deployed.json.new" "$t/deployed.json"
  printf '{"event":"result","outputs":{"artifact":"%s","target":"%s"}}\n' "$STELLA_INPUT_ARTIFACT" "$t"
  ;;
health)
  [ -e "$t/.unhealthy" ] && fail "health of $t: the service does not answer (remove $t/.unhealthy)"
  grep -q "\"artifact\":\"$STELLA_INPUT_ARTIFACT\"" "$t/deployed.json" 2>/dev/null ||
    fail "health of $t: $STELLA_INPUT_ARTIFACT is not what runs there"
  printf '{"event":"result","outputs":{"healthy":true,"artifact":"%s"}}\n' "$STELLA_INPUT_ARTIFACT"
  ;;
connectivity)
  printf '{"event":"result","outputs":{"reach":"ok","target":"%s"}}\n' "$t"
  ;;
credentials)
  creds
  printf '{"event":"result","outputs":{"authenticate":"ok","authorize":"ok"}}\n'
  ;;
observe)
  if [ -e "$t/config.json" ]; then config=$(cat "$t/config.json"); else config=null; fi
  printf '{"event":"result","outputs":{"config":%s}}\n' "$config"
  ;;
*)
  fail "unknown kind $kind"
  ;;
esac

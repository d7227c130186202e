#!/usr/bin/env bash
# `make test`: the three tiers, each in its own pytest process (the unit tier forbids importing
# Ray/vLLM process-wide, and one tier's Ray and vLLM state must stay out of another's).
#
# The e2e tier, the longest, starts at once, alongside the unit tier; a unit failure stops it
# and the run. The integration tier follows the unit tier, still alongside the e2e tier.
# Why running them side by side is sound:
#   - The integration tier mostly waits (Ray round trips, bounded polls, loopback servers): its
#     pytest process used ~20% of this machine's two cores over its run.
#   - The e2e tier mostly computes (vLLM on CPU), and every wait in it is a long bounded poll
#     whose seconds are printed, never asserted.
#   - So the e2e tier runs at the lowest CPU priority (nice 19, inherited by the Ray and vLLM
#     processes it starts): whenever an integration test wants a core, it gets it first, and the
#     e2e tier takes the rest (each tier still runs slower side by side: bench/RESULTS.md).
#   - Nothing is shared between them: each tier starts its own Ray clusters on free ports with
#     their own temp dirs, each pytest process has its own THAWLINE_CACHE_DIR
#     (tests/conftest.py), and no test stops a Ray it did not start (testkit/sandbox.py). One
#     exception: a `ray.init` Ray's dashboard agent takes Ray's default HTTP port when it is free,
#     and the other tier's agent then runs without its HTTP server, which no test here uses.
# Output: the integration tier prints live; the e2e tier's output is kept in a file and printed
# once the integration tier is done (what it printed so far, then live).
# Exit status: non-zero when any tier failed, naming which.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
PYTEST=("$PY" -m pytest -q -ra)

logs="$(mktemp -d "${TMPDIR:-/tmp}/thawline-tiers.XXXXXX")"
e2e_log="$logs/e2e.log"
e2e_pid=""
# Stopping the e2e tier: SIGINT to its pytest, which then stops like on Ctrl-C and runs its
# teardowns (Ray shut down, sandboxed clusters stopped); a minute later, SIGKILL to its session.
# (SIGTERM would not do: Ray's driver turns it into SystemExit, which pytest reports as one failed
# test and goes on.)
stop_e2e() {
  if [ -n "$e2e_pid" ]; then
    kill -INT "$e2e_pid" 2>/dev/null
    for _ in $(seq 120); do kill -0 "$e2e_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- -"$e2e_pid" 2>/dev/null
    wait "$e2e_pid" 2>/dev/null
  fi
  rm -rf "$logs"
}
trap 'stop_e2e; exit 130' INT
trap 'stop_e2e; exit 143' TERM
trap 'stop_e2e; exit 129' HUP
# Its own session: neither a Ctrl-C meant for the foreground tier nor the end of this script
# reaches it unless sent; -w: the exit status is pytest's even where setsid has to fork.
# A background job of a non-interactive shell starts with SIGINT ignored; tests/conftest.py
# takes SIGINT back, so stop_e2e's SIGINT works.
setsid -w nice -n 19 "${PYTEST[@]}" tests/e2e >"$e2e_log" 2>&1 &
e2e_pid=$!
echo "e2e tier started alongside (nice 19); its output follows the integration tier's: $e2e_log"

if ! "${PYTEST[@]}" tests/unit; then
  stop_e2e
  echo "make test: the unit tier failed (the e2e tier was stopped)" >&2
  exit 1
fi

"${PYTEST[@]}" tests/integration
integration_rc=$?

echo
echo "=== e2e tier (it ran alongside the integration tier; its output so far, then live) ==="
tail -n +1 -f --pid="$e2e_pid" "$e2e_log"
wait "$e2e_pid"
e2e_rc=$?
rm -rf "$logs"

failed=()
[ "$integration_rc" -eq 0 ] || failed+=("integration (exit $integration_rc)")
[ "$e2e_rc" -eq 0 ] || failed+=("e2e (exit $e2e_rc)")
if [ "${#failed[@]}" -gt 0 ]; then
  echo "make test: failed tiers: ${failed[*]}" >&2
  exit 1
fi

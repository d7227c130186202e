"""The cold-start timeline contract: its marks, its phases (in order), and marks -> phase seconds.

One owner for every side that names a phase: the LLM replica and router take the marks and
record the phases (serve_apps/llm/timeline.py, server.py, router.py), the gateway draws them in
traces (gateway/tracing.py) and the /ui waterfall (gateway/ui/page.py), the operator CLI and the
demo print them (cluster/cli/ops/timeline.py, cluster/demo/session.py). It lives in gateway/ (a
base) so all of them may import it.

Marks (time.time(), seconds; all on one node's clock except `request`, taken in the router):
  request          the router got a request while no replica was warm
  process_start    the replica's worker process was created (Ray forks a new worker for each
                   replica; one started before the request was reused)
  init_start       the replica's constructor began (Serve imported the deployment module)
  imports_done     vLLM is imported (in a claimed warm-pool host: already done, ~0 s)
  engine_prepared  snapshot resolved and checked, engine files materialised from the node cache,
                   weight prefetch started; NO weight is loaded yet
  engine_ready     vLLM engine up (EngineCore, workers, weight load, KV cache), OpenAI serving
                   state built
  first_token      the router saw the first token / the full answer of that request

Phases are named by what they time; `engine_start_with_weights` says that the weights load
inside the engine's start (the snapshot loader runs in the TP workers vLLM starts).

Pure: no Ray, no vLLM.
"""
from __future__ import annotations

REQUEST = "request"
PROCESS_START = "process_start"
INIT_START = "init_start"
IMPORTS_DONE = "imports_done"
ENGINE_PREPARED = "engine_prepared"
ENGINE_READY = "engine_ready"
FIRST_TOKEN = "first_token"

MARKS = (REQUEST, PROCESS_START, INIT_START, IMPORTS_DONE, ENGINE_PREPARED, ENGINE_READY, FIRST_TOKEN)

SERVE_SCHEDULING = "serve_scheduling"
WORKER_START = "worker_start"
IMPORTS = "imports"
ENGINE_PREPARE = "engine_prepare"
ENGINE_START_WITH_WEIGHTS = "engine_start_with_weights"
FIRST_TOKEN_PHASE = FIRST_TOKEN  # the phase ending at the first_token mark bears its name
TOTAL = "total"  # request -> first token, alongside the phases in every `phases_s`

# phase name -> (from mark, to mark); the order is the order they run in, back to back.
PHASES: dict[str, tuple[str, str]] = {
    SERVE_SCHEDULING: (REQUEST, PROCESS_START),
    WORKER_START: (PROCESS_START, INIT_START),
    IMPORTS: (INIT_START, IMPORTS_DONE),
    ENGINE_PREPARE: (IMPORTS_DONE, ENGINE_PREPARED),
    ENGINE_START_WITH_WEIGHTS: (ENGINE_PREPARED, ENGINE_READY),
    FIRST_TOKEN_PHASE: (ENGINE_READY, FIRST_TOKEN),
}
PHASE_ORDER: tuple[str, ...] = tuple(PHASES)


def phases(marks: dict[str, float]) -> dict[str, float]:
    """Seconds per phase, plus `total`. A phase whose marks are missing is left out. A replica that
    was already starting before the request arrived gives negative early phases: clamp to 0."""
    out: dict[str, float] = {}
    for name, (a, b) in PHASES.items():
        if a in marks and b in marks:
            out[name] = round(max(0.0, marks[b] - marks[a]), 4)
    if REQUEST in marks and FIRST_TOKEN in marks:
        out[TOTAL] = round(marks[FIRST_TOKEN] - marks[REQUEST], 4)
    return out


def ordered(phases_s: dict) -> list[tuple[str, float]]:
    """(phase, seconds) of the phases present in `phases_s`, in the order they run (no `total`)."""
    return [(name, float(phases_s[name])) for name in PHASE_ORDER if name in phases_s]

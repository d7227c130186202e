"""The configuration reference pages (docs/config-*.md) match the pydantic schemas they are
generated from; a schema change without `python docs/gen_config_docs.py` fails here."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gen():
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "docs" / "gen_config_docs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_config_reference_pages_are_current():
    gen = _gen()
    for page in gen.PAGES:
        expected = gen.render_page(page)
        actual = (ROOT / "docs" / page.out).read_text()
        assert actual == expected, f"docs/{page.out} is stale: run python docs/gen_config_docs.py"


def test_every_field_is_documented():
    gen = _gen()
    for page in gen.PAGES:
        text = gen.render_page(page)
        rows = [line for line in text.splitlines() if line.startswith("| `")]
        assert rows, page.out
        undocumented = [r.split("|")[1].strip() for r in rows if r.rstrip().endswith("| |")]
        assert not undocumented, f"{page.out}: fields without Field(description=...): {undocumented}"

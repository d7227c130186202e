"""JSON Schema -> Gemini's Schema object (an OpenAPI 3.0 subset), or a refusal naming what it can't express.

Gemini's `responseSchema` and function `parameters` take a restricted Schema: a single `type`
(nullability via `nullable`), string-only `enum`, `properties`/`required`, `items`, `anyOf`, and a
few bounds. Anything that would change what the model may produce and has no counterpart there
($ref, oneOf, allOf, not, patternProperties, open `additionalProperties`, ...) raises
`Unexpressible` with the JSON pointer of the keyword, so the caller can refuse the request by name
instead of silently loosening the schema. Pure annotations that constrain nothing ($schema,
$comment, examples, `additionalProperties: false`, whose effect Gemini's closed objects already
have) are dropped.
"""
from __future__ import annotations

from typing import Any

_TYPES = {"string": "STRING", "number": "NUMBER", "integer": "INTEGER", "boolean": "BOOLEAN",
          "array": "ARRAY", "object": "OBJECT"}
# JSON Schema keyword -> Gemini Schema field, copied as is
_PLAIN = {"description": "description", "title": "title", "format": "format", "minimum": "minimum",
          "maximum": "maximum", "minItems": "minItems", "maxItems": "maxItems", "minLength": "minLength",
          "maxLength": "maxLength", "pattern": "pattern", "minProperties": "minProperties",
          "maxProperties": "maxProperties", "default": "default", "nullable": "nullable",
          "propertyOrdering": "propertyOrdering"}
# deeper than any real tool schema, far below Python's recursion limit (each level recurses twice)
MAX_DEPTH = 64
_DROP = {"$schema", "$id", "$comment", "examples", "example", "readOnly", "writeOnly", "deprecated"}


class Unexpressible(ValueError):
    """The schema uses something Gemini's Schema cannot express; `pointer` says where."""

    def __init__(self, pointer: str, why: str):
        super().__init__(f"{pointer or '/'}: {why}")
        self.pointer, self.why = pointer, why


def to_gemini_schema(schema: Any, pointer: str = "", _depth: int = 0) -> dict:
    if _depth > MAX_DEPTH:
        raise Unexpressible(pointer, f"schema nested deeper than {MAX_DEPTH} levels")
    if not isinstance(schema, dict):
        raise Unexpressible(pointer, "a schema must be an object (boolean schemas are not supported)")
    out: dict[str, Any] = {}
    for k, v in schema.items():
        p = f"{pointer}/{k}"
        if k in _DROP:
            continue
        if k == "type":
            types = [v] if isinstance(v, str) else v
            if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
                raise Unexpressible(p, "must be a type name or a list of them")
            nonnull = [t for t in types if t != "null"]
            if len(nonnull) != 1:
                raise Unexpressible(p, f"type {v!r} has no single non-null type")
            if nonnull[0] not in _TYPES:
                raise Unexpressible(p, f"unknown type {nonnull[0]!r}")
            out["type"] = _TYPES[nonnull[0]]
            if len(nonnull) < len(types):
                out["nullable"] = True
        elif k in _PLAIN:
            out[_PLAIN[k]] = v
        elif k in ("enum", "const"):
            vals = v if k == "enum" else [v]
            if not isinstance(vals, list) or not all(isinstance(x, str) for x in vals):
                raise Unexpressible(p, "Gemini enums hold strings only")
            out["enum"] = list(vals)
            out.setdefault("format", "enum")
        elif k == "properties":
            if not isinstance(v, dict):
                raise Unexpressible(p, "must be an object")
            out["properties"] = {name: to_gemini_schema(sub, f"{p}/{name}", _depth + 1) for name, sub in v.items()}
        elif k == "required":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise Unexpressible(p, "must be a list of property names")
            out["required"] = list(v)
        elif k == "items":
            out["items"] = to_gemini_schema(v, p, _depth + 1)
        elif k == "anyOf":
            if not isinstance(v, list) or not v:
                raise Unexpressible(p, "must be a non-empty list of schemas")
            out["anyOf"] = [to_gemini_schema(sub, f"{p}/{i}", _depth + 1) for i, sub in enumerate(v)]
        elif k == "additionalProperties":
            if v is not False:
                raise Unexpressible(p, "open objects (additionalProperties) are not supported")
        else:
            # $ref/$defs, oneOf, allOf, not, if/then/else, patternProperties, prefixItems,
            # uniqueItems, multipleOf, exclusiveMinimum, ...: would loosen the contract if dropped
            raise Unexpressible(p, f"keyword {k!r} is not supported")
    if "enum" in out and out.get("type", "STRING") != "STRING":
        raise Unexpressible(f"{pointer}/enum", "Gemini enums must be of type string")
    if "enum" in out:
        out["type"] = "STRING"
    return out

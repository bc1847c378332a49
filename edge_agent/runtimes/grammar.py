"""A manifest's JSON schema as a llama.cpp GBNF grammar, and the longest output that grammar allows.

Own code rather than llama-cpp-python's json-schema converter because the answer must come out in
exactly the form training used: compact JSON, keys in schema order, optional keys skipped in place,
and every part bounded (enums, maxLength, digit counts, maxItems), so max_tokens follows from it.
The output is validated again after generation (`edge_agent.contract.schema`): the grammar shapes, the
validator decides. `maxProperties` is not in the grammar (counting keys in GBNF multiplies rules); it
bounds max_tokens, and the validator rejects an answer with more keys.
"""

from __future__ import annotations

import json
from typing import Any

DEFAULT_MAX_LENGTH = 64  # strings without maxLength
DEFAULT_MAX_ITEMS = 8  # arrays without maxItems
DEFAULT_DIGITS = 9  # numbers without a range
FRACTION_DIGITS = 6
CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" ["\\/bfnrt]'  # no \uXXXX: answers are rendered with ensure_ascii=False
CHAR_BYTES = 4  # the longest one string character can be: a 4-byte UTF-8 sequence


def literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


class _Builder:
    def __init__(self) -> None:
        self.rules: dict[str, str] = {}

    def add(self, body: str) -> str:
        name = f"r{len(self.rules)}"
        self.rules[name] = body
        return name

    def node(self, schema: dict[str, Any], where: str) -> str:
        """A rule for `schema`; returns its name."""
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else list(schema["enum"])
            return self.add(
                " | ".join(literal(json.dumps(v, ensure_ascii=False, separators=(",", ":"))) for v in values)
            )
        if "anyOf" in schema:
            return self.add(" | ".join(self.node(s, where) for s in schema["anyOf"]))
        kind = schema.get("type")
        if isinstance(kind, list):
            return self.add(" | ".join(self.node({**schema, "type": k}, where) for k in kind))
        handler = {
            "string": self.string,
            "integer": self.integer,
            "number": self.number,
            "boolean": lambda s, w: self.add('"true" | "false"'),
            "null": lambda s, w: self.add('"null"'),
            "array": self.array,
            "object": self.object,
        }.get(str(kind))
        if handler is None:
            raise ValueError(f"{where}: schema needs a type (string, integer, number, boolean, null, array, object)")
        return handler(schema, where)

    def string(self, schema: dict[str, Any], where: str) -> str:
        top = int(schema.get("maxLength", DEFAULT_MAX_LENGTH))
        return self.add(f'"\\"" ({CHAR}){{0,{top}}} "\\""')

    def integer(self, schema: dict[str, Any], where: str) -> str:
        return self.add(_integer(schema))

    def number(self, schema: dict[str, Any], where: str) -> str:
        return self.add(f'{_integer(schema)} ("." [0-9]{{1,{FRACTION_DIGITS}}})?')

    def array(self, schema: dict[str, Any], where: str) -> str:
        item = self.node(schema.get("items", {"type": "string"}), f"{where}[]")
        top = int(schema.get("maxItems", DEFAULT_MAX_ITEMS))
        more = f' ("," {item}){{0,{top - 1}}}' if top > 1 else ""
        return self.add(f'"[" ({item}{more})? "]"' if top > 0 else '"[]"')

    def object(self, schema: dict[str, Any], where: str) -> str:
        """Keys in schema order; optional keys may be skipped. `first_i`: nothing written yet;
        `rest_i`: something written, so the next key needs a comma."""
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        names = list(props)
        first, rest = "", ""
        for name in reversed(names):
            pair = f"{literal(json.dumps(name, ensure_ascii=False) + ':')} {self.node(props[name], f'{where}.{name}')}"
            after = rest or '""'
            new_rest = f'"," {pair} {after}' + ("" if name in required else f" | {after}")
            new_first = f"{pair} {after}" + ("" if name in required else f" | {first or chr(34) * 2}")
            rest, first = self.add(new_rest), self.add(new_first)
        return self.add(f'"{{" {first} "}}"' if first else '"{}"')


def _integer(schema: dict[str, Any]) -> str:
    digits = _digits(schema)
    sign = '"-"? ' if schema.get("minimum", -1) < 0 else ""
    tail = f" [0-9]{{0,{digits - 1}}}" if digits > 1 else ""
    return f'{sign}("0" | [1-9]{tail})'


def _digits(schema: dict[str, Any]) -> int:
    if "minimum" in schema and "maximum" in schema:
        return max(len(str(abs(int(schema["minimum"])))), len(str(abs(int(schema["maximum"])))))
    return DEFAULT_DIGITS


def gbnf(schema: dict[str, Any]) -> str:
    """The grammar text; `root` allows one leading space (SentencePiece answers start with one)."""
    builder = _Builder()
    top = builder.node(schema, "$")
    lines = [f'root ::= " "? {top}'] + [f"{name} ::= {body}" for name, body in builder.rules.items()]
    return "\n".join(lines) + "\n"


def max_bytes(schema: dict[str, Any]) -> int:
    """The longest UTF-8 output the grammar allows (without the leading space)."""
    if "const" in schema or "enum" in schema:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        return max(len(json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode()) for v in values)
    if "anyOf" in schema:
        return max(max_bytes(s) for s in schema["anyOf"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return max(max_bytes({**schema, "type": k}) for k in kind)
    if kind == "string":
        return 2 + CHAR_BYTES * int(schema.get("maxLength", DEFAULT_MAX_LENGTH))
    if kind in ("integer", "number"):
        return 1 + _digits(schema) + (1 + FRACTION_DIGITS if kind == "number" else 0)
    if kind in ("boolean", "null"):
        return 5
    if kind == "array":
        top = int(schema.get("maxItems", DEFAULT_MAX_ITEMS))
        return 2 + top * (max_bytes(schema.get("items", {"type": "string"})) + 1)
    props: dict[str, Any] = schema.get("properties", {})
    sizes = {k: len(json.dumps(k, ensure_ascii=False).encode()) + 2 + max_bytes(v) for k, v in props.items()}
    required = [k for k in schema.get("required", []) if k in sizes]
    optional = sorted((n for k, n in sizes.items() if k not in required), reverse=True)
    room = int(schema.get("maxProperties", len(sizes))) - len(required)
    return 2 + sum(sizes[k] for k in required) + sum(optional[: max(0, room)])

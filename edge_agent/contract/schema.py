"""The JSON Schema subset that answer schemas use, checked without a dependency.

Keywords: type, enum, const, properties, required, additionalProperties, minProperties, maxProperties,
items, minItems, maxItems, minimum, maximum, minLength, maxLength, pattern, anyOf. Others are ignored (permissive), so a
manifest may carry richer schemas; what is checked is checked strictly.
"""

from __future__ import annotations

import re
from typing import Any

TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Every way `value` breaks `schema`, as 'path: problem' lines; empty when it validates."""
    found = _type(value, schema, where)
    if found:
        return found
    checks = (_enum, _object, _array, _number, _string, _any_of)
    return [line for check in checks for line in check(value, schema, where)]


def _type(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    wanted = schema.get("type")
    if wanted is None:
        return []
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    for name in names:
        kinds = TYPES.get(name, (object,))
        if isinstance(value, kinds) and not (isinstance(value, bool) and name in ("integer", "number")):
            return []
    return [f"{where}: expected {' or '.join(names)}, got {type(value).__name__}"]


def _enum(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of the allowed values"]
    if "const" in schema and value != schema["const"]:
        return [f"{where}: must be {schema['const']!r}"]
    return []


def _object(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    props: dict[str, Any] = schema.get("properties", {})
    found = [f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value]
    if len(value) < schema.get("minProperties", 0):
        found.append(f"{where}: fewer than {schema['minProperties']} keys")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        found.append(f"{where}: more than {schema['maxProperties']} keys")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            found += errors(item, props[key], f"{where}.{key}")
        elif extra is False:
            found.append(f"{where}: unexpected key {key!r}")
        elif isinstance(extra, dict):
            found += errors(item, extra, f"{where}.{key}")
    return found


def _array(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    if not isinstance(value, list):
        return []
    found = []
    if len(value) < schema.get("minItems", 0):
        found.append(f"{where}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        found.append(f"{where}: more than {schema['maxItems']} items")
    if isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += errors(item, schema["items"], f"{where}[{i}]")
    return found


def _number(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return []
    found = []
    if "minimum" in schema and value < schema["minimum"]:
        found.append(f"{where}: below {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        found.append(f"{where}: above {schema['maximum']}")
    return found


def _string(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    if not isinstance(value, str):
        return []
    found = []
    if len(value) < schema.get("minLength", 0):
        found.append(f"{where}: shorter than {schema['minLength']}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        found.append(f"{where}: longer than {schema['maxLength']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        found.append(f"{where}: does not match {schema['pattern']!r}")
    return found


def _any_of(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    options = schema.get("anyOf")
    if not options or any(not errors(value, option, where) for option in options):
        return []
    return [f"{where}: matches none of anyOf"]

"""Options the encoder and causal verbs share, in one place so both paths sign, publish and take their
recipes alike."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Recipe = TypeVar("Recipe", bound=DataclassInstance)


def add_signing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--signing-key-file", type=Path, help="Ed25519 private key (PEM, edge-trainer keygen): manifest.sig")
    p.add_argument("--registry", type=Path, help="also add the artifact to this registry folder ({name}/{version}/)")


def build_options(a: argparse.Namespace) -> dict[str, Any]:
    """The `artifact.Build` fields every building verb takes from its options (name, where, scoring, signing)."""
    from trainer import artifact  # signing: only when a verb runs

    return {
        "name": a.name,
        "out": a.out,
        "work": a.work,
        "test": a.test,
        "max_tokens": a.max_tokens,
        "target_accuracy": a.target_accuracy,
        "version": a.version,
        "key": artifact.read_key(a.signing_key_file),
        "registry": a.registry,
    }


def add_recipe_options(p: argparse.ArgumentParser, recipe: type[DataclassInstance]) -> None:
    """Every field of a recipe dataclass as `--field-name`, typed by its default."""
    group = p.add_argument_group("recipe")
    for f in dataclasses.fields(recipe):
        kind: Callable[[str], Any] = _flag if isinstance(f.default, bool) else type(f.default)
        group.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help=f"(default {f.default})")


def recipe_from(a: argparse.Namespace, recipe: type[Recipe]) -> Recipe:
    return recipe(**{f.name: getattr(a, f.name) for f in dataclasses.fields(recipe)})


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return text.lower() in ("true", "1", "yes")

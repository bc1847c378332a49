"""Stage `causal-data`: labelled JSONL -> prompt and answer token ids, with the base's own tokenizer.

Input lines: `text` + `intent` (classify), and/or `text` + a `fields` object, or `text` + `entities`
turned into fields (extract; the intent, when there is one, becomes the first field). Output folder:
`task.json` (task, labels, fields schema, prompt: what the manifest will carry), `train.jsonl`,
`dev.jsonl` (ids per example), `stage.json`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.contract import schema as json_schema
from edge_agent.contract.manifest import Prompt
from trainer import records, stage
from trainer.causal import base as causal_base
from trainer.causal import fields, prompts
from trainer.causal.prompts import CausalTask
from trainer.errors import DataError, UsageError

TASK_FILE = "task.json"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bases are folders on disk; the hub is never asked


@dataclass(frozen=True)
class Example:
    text: str
    intent: str | None = None
    fields: dict[str, Any] | None = None
    line: int = 0
    from_entities: bool = False  # fields made from spans: open vocabularies


@dataclass
class TaskSpec:
    """What serving must know, decided here once: the manifest copies it."""

    task: CausalTask
    labels: list[str]
    prompt: dict[str, Any]
    fields_schema: dict[str, Any] | None = None
    max_input_tokens: int = 64
    max_answer_tokens: int | None = None
    base: str = ""
    base_source: dict[str, Any] | None = None  # set when the base was imported from a GGUF file
    tokenizer: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        (folder / TASK_FILE).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: Path) -> TaskSpec:
        return cls(**json.loads((folder / TASK_FILE).read_text()))

    @property
    def prompt_model(self) -> Prompt:
        return Prompt.model_validate(self.prompt)

    def answer(self, ex: Example) -> str:
        if self.task == "classify":
            return ex.intent or ""
        return fields.render(ex.fields or {}, self.fields_schema or {})


def load_tokenizer(base: Path) -> Any:
    """The base's tokenizer, checked against the model's embedding size (a silently tiny vocabulary
    is a known failure of tokenizer loading).

    A folder with only a SentencePiece `tokenizer.model` gets the class its tokenizer_config declares:
    transformers 5 would otherwise pick the model type's own class (Qwen2's byte-level BPE), which is
    not what llama.cpp's converter reads from that folder.
    """
    import transformers

    if not (base / "config.json").is_file():
        raise UsageError(f"{base}: not a Hugging Face model folder (no config.json)")
    loader: Any = transformers.AutoTokenizer
    declared = _declared_class(base)
    if declared and not (base / "tokenizer.json").is_file() and hasattr(transformers, declared):
        loader = getattr(transformers, declared)
    try:
        tokenizer = loader.from_pretrained(base)
        config = transformers.AutoConfig.from_pretrained(base)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{base}: transformers cannot load its tokenizer: {_first_line(exc)}") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    archs = getattr(config, "architectures", None) or []
    if archs and not set(archs) & {*CAUSAL.values()}:
        raise UsageError(f"{base}: not a causal LM (its config names {', '.join(archs)})")
    embedded = int(config.vocab_size)
    if not embedded // 2 <= len(tokenizer) <= embedded:
        raise UsageError(f"{base}: tokenizer has {len(tokenizer)} tokens but the model embeds {embedded}")
    return tokenizer


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _declared_class(base: Path) -> str | None:
    path = base / "tokenizer_config.json"
    if not path.is_file():
        return None
    declared = json.loads(path.read_text()).get("tokenizer_class")
    return declared.removesuffix("Fast") if isinstance(declared, str) else None


def read(path: Path, task: CausalTask, schema: dict[str, Any] | None = None) -> list[Example]:
    """Classify needs intents; extract takes `fields` objects or entities (as fields). Which entity types
    are lists comes from `schema` when given (dev and test must take train's shape), else from the file."""
    first = _first_object(path)
    if task == "extract" and "fields" in first:
        return _read_fields(path)
    recs = records.read(path)
    if task == "classify":
        return [Example(r.text, r.intent, None, r.line) for r in recs]
    if schema is None:
        repeated = fields.repeated_types(recs)
    else:
        repeated = {k for k, v in schema.get("properties", {}).items() if v.get("type") == "array"}
    return [
        Example(r.text, r.intent, {"intent": r.intent, **fields.from_entities(r, repeated)}, r.line, True) for r in recs
    ]


def _first_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(path, None, "no such file")
    for number, raw in records.lines(path):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(path, number, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
        return obj if isinstance(obj, dict) else {}
    raise DataError(path, 1, "file is empty (no JSON records)")


def _read_fields(path: Path) -> list[Example]:
    return [_fields_line(path, number, raw) for number, raw in records.lines(path)]


def _fields_line(path: Path, line: int, raw: str) -> Example:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(path, line, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
        raise DataError(path, line, "expected an object with a non-empty string `text`")
    values, intent = obj.get("fields"), obj.get("intent")
    if not isinstance(values, dict):
        raise DataError(path, line, "`fields` must be a JSON object")
    inner = values.get(fields.INTENT)
    if intent is not None and inner is not None and inner != intent:
        raise DataError(path, line, f"`intent` {intent!r} and `fields.intent` {inner!r} disagree")
    intent = intent if intent is not None else inner  # an intent given among the fields is the label too
    if intent is not None and (not isinstance(intent, str) or not intent.strip()):
        raise DataError(path, line, "`intent` must be a non-empty string")
    merged = {fields.INTENT: intent, **values} if intent else dict(values)
    return Example(obj["text"], intent, merged, line)


def spec_for(train: list[Example], tokenizer: Any, task: CausalTask, path: Path, max_tokens: int) -> TaskSpec:
    labels = sorted({ex.intent for ex in train if ex.intent})
    if task == "classify" and len(labels) < 2:
        raise DataError(path, None, f"classification needs at least 2 intents, found {len(labels)}")
    schema = None
    if task == "extract":
        try:
            closed = not any(ex.from_entities for ex in train)
            schema = fields.infer_schema([ex.fields or {} for ex in train], labels, closed)
        except ValueError as exc:
            raise DataError(path, None, str(exc)) from None
    prompt = prompts.make(tokenizer, task)
    return TaskSpec(task, labels, prompt.model_dump(), schema, max_tokens)


def encode(ex: Example, spec: TaskSpec, tokenizer: Any) -> dict[str, Any]:
    prompt = spec.prompt_model
    answer = spec.answer(ex)
    return {
        "text": ex.text,
        "answer": answer,
        "intent": ex.intent,
        "fields": ex.fields,
        "text_tokens": len(prompts.plain(tokenizer, ex.text)),
        "prompt_ids": prompts.prompt_ids(tokenizer, prompt, ex.text),
        "answer_ids": prompts.answer_ids(tokenizer, prompt, answer),
    }


def run(train: Path, dev: Path, out: Path, base: Path, task: CausalTask = "classify", max_tokens: int = 64) -> Path:
    """Validate both files, decide the task spec from train, encode both splits. A GGUF base is imported
    first, into OUT/../base (once)."""
    base = causal_base.resolve(base, out.parent / "base")
    base, train, dev = base.resolve(), train.resolve(), dev.resolve()  # later stages read them from task.json
    tokenizer = load_tokenizer(base)
    train_ex = read(train, task)
    spec = spec_for(train_ex, tokenizer, task, train, max_tokens)
    dev_ex = read(dev, task, spec.fields_schema)
    if task == "extract":
        spec.max_answer_tokens = answer_bound([*train_ex, *dev_ex], spec, tokenizer)
    spec.base, spec.tokenizer = str(base), {"vocab_size": len(tokenizer), "class": type(tokenizer).__name__}
    spec.base_source = causal_base.source_of(base)
    spec.data = {"train": stage.file_info(train), "dev": stage.file_info(dev)}
    _check_dev(dev, dev_ex, spec)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(out)
    counts = {
        name: records.write_split(
            out / f"{name}.jsonl",
            (encode(ex, spec, tokenizer) for ex in exs),
            _text_tokens,
            spec.max_input_tokens,
            ensure_ascii=False,
        )
        for name, exs in (("train", train_ex), ("dev", dev_ex))
    }
    stage.write(
        out,
        "causal-data",
        {"task": task, "max_tokens": max_tokens, "base": str(base)},
        {"train": train, "dev": dev},
        {"counts": counts, "labels": len(spec.labels)},
    )
    return out


def answer_bound(examples: list[Example], spec: TaskSpec, tokenizer: Any) -> int:
    """The longest answer generation may produce, in tokens: the longest seen (train and dev) plus room
    for a whole input copied into it, or twice the longest, whichever is more. The schema's own bound
    counts every string at its maxLength in 4-byte characters (thousands of tokens for a wide schema),
    and the context, hence KV memory on the device, is sized from it; an answer longer than this one is
    degenerate: it is cut, fails validation and escalates as invalid_output."""
    prompt = spec.prompt_model
    longest = max(len(prompts.answer_ids(tokenizer, prompt, spec.answer(ex))) for ex in examples)
    return max(2 * longest, longest + spec.max_input_tokens) + 8


def _check_dev(path: Path, dev: list[Example], spec: TaskSpec) -> None:
    """Dev labels must be learnable from train; dev fields outside the schema are counted, not fatal."""
    for ex in dev:
        if spec.task == "classify" and ex.intent not in spec.labels:
            raise DataError(path, ex.line, f"intent {ex.intent!r} does not occur in the training data")
    if spec.fields_schema:
        outside = sum(1 for ex in dev if json_schema.errors(ex.fields or {}, spec.fields_schema))
        if outside:
            print(f"warning: {path.name}: {outside} examples have fields outside the training schema", file=sys.stderr)


def _text_tokens(row: dict[str, Any]) -> int:
    """An encoded row's length against the limit: the request text alone, not the prompt around it."""
    return int(row["text_tokens"])

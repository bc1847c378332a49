"""Causal LM bases made from a config, for tests and benchmarks where no pretrained model is reachable.

A SentencePiece tokenizer (byte fallback, so any text encodes) is trained on the given texts, the
model (Llama or Qwen2) initialised at random. The Qwen2 flavour gets a ChatML chat template with
<|im_start|>/<|im_end|> as control tokens, the Llama one none: both prompt paths get exercised.
Both are real HF folders that llama.cpp's converter accepts.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainer import records
from trainer.causal.prompts import INSTRUCTIONS, PLAIN, CausalTask

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONTROLS = ["<|im_start|>", "<|im_end|>"]


def train_sentencepiece(texts: Iterable[str], vocab_size: int, controls: list[str]) -> bytes:
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        control_symbols=controls,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        split_digits=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def _tokenizer_config(chat: bool) -> dict[str, object]:
    config: dict[str, object] = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
    }
    if chat:
        config["chat_template"] = CHATML
        flags = {"special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
        config["added_tokens_decoder"] = {str(3 + i): {"content": c, **flags} for i, c in enumerate(CONTROLS)}
    return config


def make_base(
    folder: Path,
    texts: Iterable[str],
    arch: str = "llama",
    hidden: int = 64,
    layers: int = 2,
    vocab_size: int = 400,
    seed: int = 0,
) -> Path:
    """A random `arch` (llama | qwen2) causal LM with its own SentencePiece tokenizer, saved into `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    chat = arch == "qwen2"
    corpus = [*texts, *INSTRUCTIONS.values(), PLAIN]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(train_sentencepiece(corpus, vocab_size, CONTROLS if chat else []))
    (folder / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(chat), indent=2) + "\n")
    from transformers import LlamaTokenizer

    n_vocab = len(LlamaTokenizer.from_pretrained(folder))
    sizes: dict[str, Any] = {
        "vocab_size": n_vocab,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 16),
        "num_key_value_heads": max(1, hidden // 32),
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }
    torch.manual_seed(seed)
    model: Any = Qwen2ForCausalLM(Qwen2Config(**sizes)) if chat else LlamaForCausalLM(LlamaConfig(**sizes))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def corpus(path: Path) -> list[str]:
    """What the tiny tokenizer is trained on: the texts, the labels and the answers' JSON."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    answers = [json.dumps({"intent": r["intent"], **{e["type"]: e["value"] for e in r["entities"]}}) for r in rows]
    return [r["text"] for r in rows] + [r["intent"] for r in rows] + answers


def build_tiny_artifact(
    out: Path, arch: str = "llama", task: CausalTask = "classify", steps: int = 150, qlora: str = "off"
) -> Path:
    """A tiny but complete GGUF artifact through `build-causal`'s own code path (about a minute on 2 cores)."""
    import tempfile

    from trainer.causal import build
    from trainer.causal.recipe import CausalRecipe

    recipe = CausalRecipe(
        lr=1e-2,
        batch_size=8,
        max_steps=steps,
        train_embeddings=True,
        lora_dropout=0.0,
        warmup=0.05,
        threads=1,
        qlora=qlora,
    )
    with tempfile.TemporaryDirectory(prefix=f"tiny-{arch}-{task}-") as tmp:
        work = Path(tmp)
        data = records.write_builtin(work / "train.jsonl")
        base = make_base(work / "base", corpus(data), arch)
        options = build.CausalBuild(
            name=f"tiny-{arch}-{task}",
            out=out,
            base=base,
            task=task,
            dtype="float32",
            work=work / "stages",
            max_tokens=32,
        )
        return build.build(data, data, options, recipe)

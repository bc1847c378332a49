"""Stage `causal-export`: merged HF folder -> GGUF with llama.cpp's converter (f16, or f32 for an f32
merge) -> Q8_0 and Q4_K_M with llama.cpp's quantizer -> each file checked against the HF tokenizer.

The check loads every GGUF through the agent's own runtime and compares: BOS and EOS ids, the chat
template, and the token ids of prompts and answers (training's ids against serving's). A mismatch
stops the export: a model that is served with other ids than it was trained with is broken silently.

Output folder: model.{f16|f32|q8_0|q4_k_m}.gguf, task.json, stage.json (sizes, tensor types, checks).
`build_manifest` describes such a file as the agent's GGUF runtime reads it (for the checks here,
then evaluate and publish).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import llama_cpp

from edge_agent.contract import manifest as mf
from edge_agent.runtimes.gguf import GgufRuntime, log_softmax
from trainer import artifact, stage
from trainer.causal import converter, data, prompts
from trainer.errors import TrainerError, UsageError

OUTTYPES = {"float16": "f16", "float32": "f32", "bfloat16": "bf16"}
QUANTS = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
SAMPLES = 32  # dev prompts and answers compared token for token
PARITY_PROMPTS = 8  # prompts whose next-token distribution is compared, HF model vs converted GGUF
PARITY_NATS = 0.25  # worst allowed log-prob difference on HF's top-5 tokens (a conversion bug costs nats)
TRICKY = ["Ünïcode, emoji 🚀 and   spaces", "a line\nbreak {text} </s> <|im_end|> <s>"]


def run(merged: Path, out: Path, quants: list[str] | None = None, threads: int = 2, cache: Path | None = None) -> Path:
    quants = ["q8_0", "q4_k_m"] if quants is None else quants
    unknown = [q for q in quants if q not in QUANTS]
    if unknown:
        raise UsageError(f"--quant {','.join(unknown)}: choose from {', '.join(QUANTS)}")
    meta = stage.read(merged, "causal-merge")
    reference = OUTTYPES[meta["params"]["dtype"]]
    out.mkdir(parents=True, exist_ok=True)
    files = {reference: f"model.{reference}.gguf"}
    converter.convert(merged, out / files[reference], reference, cache)
    for quant in quants:
        files[quant] = f"model.{quant}.gguf"
        quantize(out / files[reference], out / files[quant], quant, threads)
    shutil.copy(merged / data.TASK_FILE, out / data.TASK_FILE)
    spec = data.TaskSpec.load(out)
    tokenizer = data.load_tokenizer(merged)
    samples = _samples(spec)
    results: dict[str, Any] = {"files": files, "reference": reference}
    results["sizes"] = {name: (out / rel).stat().st_size for name, rel in files.items()}
    results["tensor_types"] = {name: converter.tensor_types(out / rel, cache) for name, rel in files.items()}
    results["checks"] = {name: verify(out, rel, spec, tokenizer, samples) for name, rel in files.items()}
    results["parity"] = parity(merged, out, files[reference], spec, samples[0], tokenizer)
    params = {
        "quants": quants,
        "converter": f"llama-cpp-python {converter.VERSION} sdist",
        "sha256": converter.SDIST_SHA256,
    }
    stage.write(out, "causal-export", params, {"merged": merged}, results)
    return out


def build_manifest(
    folder: Path,
    files: list[tuple[str, str]],
    spec: data.TaskSpec,
    name: str = "candidate",
    version: str = "0",
    evaluation: dict[str, Any] | None = None,
) -> mf.Manifest:
    """The manifest for files already in `folder`; `evaluation` is the evaluate stage's results."""
    return artifact.manifest(
        folder,
        files,
        evaluation or {},
        name=name,
        version=version,
        task=spec.task,
        runtime="gguf",
        labels=spec.labels,
        max_input_tokens=spec.max_input_tokens,
        tokenizer=spec.tokenizer,
        prompt=spec.prompt_model,
        fields_schema=spec.fields_schema,
        max_answer_tokens=spec.max_answer_tokens,
        label_scoring="tree",  # what evaluate calibrates: the label set's own distribution (bench/gguf.py)
        base_model=spec.base_source["file"] if spec.base_source else Path(spec.base).name,
        base=_base(spec.base_source),
        data=spec.data,
    )


def _base(source: dict[str, Any] | None) -> mf.Base | None:
    if source is None:
        return None
    return mf.Base(
        file=source["file"], sha256=source["sha256"], quantization=source["quantization"], name=source["name"]
    )


def quantize(source: Path, target: Path, quant: str, threads: int) -> Path:
    """llama.cpp's quantizer; where a width does not fit the block size it picks another type itself."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTS[quant]
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0 or not target.is_file():
        raise TrainerError(f"llama_model_quantize {quant} failed on {source} ({status})")
    return target


def _samples(spec: data.TaskSpec) -> tuple[list[str], list[str]]:
    """Texts and answers to compare: dev's first examples, every label, and a few awkward strings."""
    texts, answers = list(TRICKY), list(spec.labels)
    dev = spec.data.get("dev", {}).get("path")
    if dev and Path(dev).is_file():
        rows = data.read(Path(dev), spec.task, spec.fields_schema)[:SAMPLES]
        texts += [r.text for r in rows]
        answers += [spec.answer(r) for r in rows]
    return texts, answers


def verify(
    folder: Path, relpath: str, spec: data.TaskSpec, tokenizer: Any, samples: tuple[list[str], list[str]]
) -> dict[str, Any]:
    """Serving's view of the GGUF against training's; TrainerError on the first difference."""
    manifest = build_manifest(folder, [(relpath, "model")], spec)
    runtime = GgufRuntime(folder, manifest, threads=1)
    try:
        problems = _differences(runtime, spec, tokenizer, samples)
    finally:
        runtime.close()
    if problems:
        raise TrainerError(f"{folder / relpath}: GGUF disagrees with the HF tokenizer: {problems[0]}")
    texts, answers = samples
    return {
        "prompts": len(texts),
        "answers": len(answers),
        "bos_eos": "match",
        "chat_template": _has_template(tokenizer),
    }


def parity(
    merged: Path, folder: Path, relpath: str, spec: data.TaskSpec, texts: list[str], tokenizer: Any = None
) -> dict[str, Any]:
    """The converted model computes what the merged HF model computes: next-token log-probs after the
    first dev prompts, torch (fp32) against llama.cpp on the unquantized GGUF. Catches what a token
    check cannot (wrong RoPE or norm settings, a tensor mapped wrong). TrainerError beyond PARITY_NATS."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer if tokenizer is not None else data.load_tokenizer(merged)
    chosen = [t for t in texts if len(prompts.plain(tokenizer, t)) <= spec.max_input_tokens][-PARITY_PROMPTS:]
    if not chosen:
        raise TrainerError(f"no sample prompt fits {spec.max_input_tokens} tokens: parity cannot be checked")
    model: Any = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    runtime = GgufRuntime(folder, build_manifest(folder, [(relpath, "model")], spec), threads=1)
    worst, agree, prompt = 0.0, 0, spec.prompt_model
    try:
        for text in chosen:
            ids = prompts.prompt_ids(tokenizer, prompt, text)
            with torch.no_grad():
                logits = model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
                theirs = torch.log_softmax(logits.double(), -1).numpy()
            ours = log_softmax(runtime.llm.prefill(ids).astype("float64"))
            if ours.shape != theirs.shape:
                raise TrainerError(f"{folder / relpath}: vocabulary of {ours.size} tokens, HF model has {theirs.size}")
            top = theirs.argsort()[-5:]
            worst = max(worst, float(abs(ours[top] - theirs[top]).max()))
            agree += int(ours.argmax() == theirs.argmax())
    finally:
        runtime.close()
    if worst > PARITY_NATS:
        raise TrainerError(
            f"{folder / relpath}: the GGUF's next-token log-probs differ from the merged model's by {worst:.2f} "
            f"nats (limit {PARITY_NATS}): the conversion is wrong for this architecture"
        )
    return {"prompts": len(chosen), "max_logprob_diff": round(worst, 5), "top1_agree": agree}


def _has_template(tokenizer: Any) -> str:
    return "match" if getattr(tokenizer, "chat_template", None) else "none"


def _differences(
    runtime: GgufRuntime, spec: data.TaskSpec, tokenizer: Any, samples: tuple[list[str], list[str]]
) -> list[str]:
    prompt, llm = spec.prompt_model, runtime.llm
    found = []
    for name, ours_id, hf_id in (("BOS", llm.bos, tokenizer.bos_token_id), ("EOS", llm.eos, tokenizer.eos_token_id)):
        if hf_id is not None and ours_id != hf_id:
            found.append(f"{name} is {ours_id} in the GGUF, {hf_id} in HF")
    template = getattr(tokenizer, "chat_template", None)
    if template and llm.meta("tokenizer.chat_template") != template:
        found.append("the GGUF's chat template is not the HF tokenizer's")
    texts, answers = samples
    for text in texts:
        if len(prompts.plain(tokenizer, text)) <= spec.max_input_tokens:
            ours, theirs = runtime.prompt_ids(text), prompts.prompt_ids(tokenizer, prompt, text)
            if ours != theirs:
                found.append(f"prompt for {text!r}: GGUF {ours} vs HF {theirs}")
    for answer in answers:
        ours, theirs = runtime.answer_ids(answer), prompts.answer_ids(tokenizer, prompt, answer)
        if ours != theirs:
            found.append(f"answer {answer!r}: GGUF {ours} vs HF {theirs}")
    return found

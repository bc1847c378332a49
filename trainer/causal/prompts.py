"""The prompt every causal artifact is trained and served with, and the token ids training sees.

The template comes from the base's chat template when it has one (rendered once, with the request
text and the answer as sentinels), else a plain one. It goes into the manifest; the agent rebuilds
the same ids from it (see `edge_agent.contract.manifest.Prompt`), and export checks that both sides agree.
"""

from __future__ import annotations

from typing import Any, Literal

from edge_agent.contract.manifest import Prompt
from trainer.errors import UsageError

CausalTask = Literal["classify", "extract"]
INSTRUCTIONS: dict[str, str] = {
    "classify": "Classify the request. Answer with its label.",
    "extract": "Extract the fields of the request as JSON.",
}
PLAIN = "{instruction}\n### Request:\n{text}\n### Answer:\n"
_TEXT, _ANSWER = "\x00TEXT\x00", "\x00ANSWER\x00"


def make(tokenizer: Any, task: CausalTask, use_chat_template: bool = True) -> Prompt:
    """The prompt for this tokenizer: its chat template when it has one (and it is wanted), else plain."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        template, stop = _from_chat_template(tokenizer, task)
    else:
        template, stop = PLAIN.replace("{instruction}", INSTRUCTIONS[task]), []
    if not stop and tokenizer.eos_token is None:
        raise UsageError("the base tokenizer has no EOS token: a plain prompt cannot end its answers")
    bos = tokenizer.bos_token
    add_bos = _adds_bos(tokenizer) and not (bos and template.startswith(bos))
    end = stop[0] if stop else tokenizer.eos_token
    specials = sorted(s for s in _special_strings(tokenizer) if s in template or s == end)
    return Prompt(template=template, stop=stop, eos=tokenizer.eos_token, add_bos=add_bos, specials=specials)


def _from_chat_template(tokenizer: Any, task: CausalTask) -> tuple[str, list[str]]:
    """Render the instruction, a user turn and an assistant turn: what precedes the answer is the
    template, the first word after it closes the turn (ChatML's <|im_end|>, Llama 3's <|eot_id|>).

    The instruction is the system turn where the template has one: it replaces the template's
    default system prompt, so every training example is shorter (SmolLM2: 33 tokens instead of 55,
    40 % less compute per step on a CPU); templates without a system role get it in the user turn.
    """
    answer = {"role": "assistant", "content": _ANSWER}
    system = {"role": "system", "content": INSTRUCTIONS[task]}
    full = _render(tokenizer, [system, {"role": "user", "content": _TEXT}, answer])
    if full is None or INSTRUCTIONS[task] not in full:
        full = _render(tokenizer, [{"role": "user", "content": f"{INSTRUCTIONS[task]}\n{_TEXT}"}, answer])
    if full is None or full.count(_TEXT) != 1 or full.count(_ANSWER) != 1:
        raise UsageError("the base's chat template does not render the request and the answer once each")
    head, tail = full.split(_ANSWER)
    stop = [tail.split()[0]] if tail.strip() else []
    return head.replace(_TEXT, "{text}"), stop


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    """The chat template applied, or None where it refuses these roles (Gemma's has no system turn)."""
    from jinja2 import TemplateError  # what a template's raise_exception raises; transformers depends on jinja2

    try:
        text: str = tokenizer.apply_chat_template(messages, tokenize=False)
    except (TemplateError, ValueError):
        return None
    return text


def _special_strings(tokenizer: Any) -> set[str]:
    added = set(getattr(tokenizer, "get_added_vocab", dict)())
    return {s for s in added | set(tokenizer.all_special_tokens) if s}


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of a text by default (Llama yes, Qwen2 no)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def plain(tokenizer: Any, text: str) -> list[int]:
    """Text as text: control-token strings inside it stay characters."""
    if not text:
        return []
    ids: list[int] = tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
    return ids


def piece_ids(tokenizer: Any, prompt: Prompt, piece: str) -> list[int]:
    """A template piece: its control tokens by id, the runs between them as plain text."""
    out: list[int] = []
    for run, special in prompt.split(piece):
        out += [int(tokenizer.convert_tokens_to_ids(run))] if special else plain(tokenizer, run)
    return out


def prompt_ids(tokenizer: Any, prompt: Prompt, text: str) -> list[int]:
    before, after = prompt.parts()
    bos = [int(tokenizer.bos_token_id)] if prompt.add_bos else []
    return bos + piece_ids(tokenizer, prompt, before) + plain(tokenizer, text) + piece_ids(tokenizer, prompt, after)


def answer_ids(tokenizer: Any, prompt: Prompt, answer: str) -> list[int]:
    return plain(tokenizer, answer) + piece_ids(tokenizer, prompt, prompt.end)

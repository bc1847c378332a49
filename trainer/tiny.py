"""A real artifact in seconds, for tests: a tiny randomly initialised BERT through the real stages.

Same code path as `edge-trainer build` (data -> finetune -> export -> evaluate -> publish); only the
base (hidden 32, 2 layers, MiniLM tokenizer) and the step count are small.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from trainer import encoder, pipeline
from trainer.recipe import Recipe

_ROOMS = ["kitchen", "bedroom", "living room", "hall"]
_TEMPLATES = {
    "lights_on": ["turn on the lights in the {room}", "switch the {room} lights on", "lights on in the {room}"],
    "lights_off": ["turn off the lights in the {room}", "switch the {room} lights off", "lights off in the {room}"],
    "weather": ["what is the weather like", "will it rain today", "how warm is it outside"],
}


def builtin_records() -> list[dict[str, object]]:
    """24 examples over 3 intents; the light commands carry a `house_place` entity."""
    out: list[dict[str, object]] = []
    for intent, templates in _TEMPLATES.items():
        for i, template in enumerate(templates * 3):
            if len(out) >= 8 * (1 + list(_TEMPLATES).index(intent)):
                break
            room = _ROOMS[i % len(_ROOMS)]
            text = template.format(room=room)
            entities = []
            if "{room}" in template:
                start = text.index(room)
                entities = [{"type": "house_place", "value": room, "start": start, "end": start + len(room)}]
            out.append({"text": text, "intent": intent, "entities": entities})
    return out


def write_builtin(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in builtin_records()))
    return path


def build_tiny_artifact(out: Path, train: Path | None = None, name: str = "tiny", steps: int = 30) -> Path:
    """Build a tiny but complete, verified artifact into `out` and return it (dev = train)."""
    recipe = Recipe(
        epochs=1000,
        batch_size=8,
        lr=3e-3,
        head_lr=3e-3,
        layer_decay=1.0,
        warmup=0.0,
        label_smoothing=0.0,
        dropout=0.0,
        max_steps=steps,
    )
    with tempfile.TemporaryDirectory(prefix=f"tiny-{name}-") as tmp:
        work = Path(tmp)
        data = train or write_builtin(work / "train.jsonl")
        base = encoder.make_tiny(work / "base")
        options = pipeline.BuildOptions(name=name, out=out, base=base, work=work / "stages", max_tokens=32)
        return pipeline.build(data, data, options, recipe)

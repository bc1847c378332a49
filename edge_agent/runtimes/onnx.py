"""Encoder models through onnxruntime and the `tokenizers` library: no torch, no transformers.

One session per model, loaded once. Intent and entity heads come out of the same encoder pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# onnxruntime >= 1.29 on Linux keeps a telemetry store in ~/.cache and uploads it unless told not to: a
# device's inference stays on the device. Set before the import; an operator's explicit value wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from edge_agent.contract.manifest import Manifest
from edge_agent.contract.prediction import Entity, Prediction
from edge_agent.errors import ArtifactError, TooLarge
from edge_agent.runtimes.distance import Distance
from edge_agent.runtimes.spans import decode_bio


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


class OnnxRuntime:
    """Sequence and token classification from one int8 encoder artifact."""

    def __init__(self, folder: Path, manifest: Manifest, threads: int = 2) -> None:
        if manifest.onnx is None:
            raise ArtifactError(f"artifact {manifest.name}: manifest has no onnx section")
        self.manifest = manifest
        self.io = manifest.onnx
        self.tokenizer = self._load_tokenizer(folder / manifest.file("tokenizer").path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # No spinning: onnxruntime's idle threads otherwise spin for the next run, stealing the cores the
        # agent's own threads and the broker need (bench/README.md "Throughput": +12 % answered/s, p99 better).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model_path = str(folder / manifest.file("model").path)
        try:
            self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ArtifactError(f"{model_path}: onnxruntime cannot load it: {exc}") from None
        self.distance = self._load_distance(folder)
        wanted = (self.io.intent_logits, self.io.tag_logits, self.io.embedding if self.distance else None)
        self.outputs = [name for name in wanted if name]

    def _load_distance(self, folder: Path) -> Distance | None:
        """The distance table, when the artifact has one and its graph gives the pooled embedding."""
        ood = self.manifest.ood
        if ood is None:
            return None
        if not self.io.embedding:
            raise ArtifactError(f"artifact {self.manifest.name}: an ood table but no embedding output")
        return Distance(folder / ood.file, len(self.manifest.labels))

    def _load_tokenizer(self, path: Path) -> Tokenizer:
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        expected = self.manifest.tokenizer.get("vocab_size")
        if expected is not None and tokenizer.get_vocab_size() != expected:
            raise ArtifactError(f"{path}: vocabulary has {tokenizer.get_vocab_size()} tokens, manifest says {expected}")
        return tokenizer

    def check_input(self, text: str) -> None:
        limit = self.manifest.max_input_chars
        if len(text) > limit:
            raise TooLarge(f"text has {len(text)} characters; model {self.manifest.name} takes {limit}")

    def _encode(self, texts: list[str]) -> list[Encoding]:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        limit = self.manifest.max_input_tokens
        for enc in encodings:
            if len(enc.ids) > limit:
                raise TooLarge(f"text has {len(enc.ids)} tokens; model {self.manifest.name} takes {limit}")
        return encodings

    def _run(self, encodings: list[Encoding]) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, self._feeds(encodings))
        return dict(zip(self.outputs, values, strict=True))

    def _feeds(self, encodings: list[Encoding]) -> dict[str, np.ndarray]:
        width = max(len(enc.ids) for enc in encodings)
        feeds = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in self.io.inputs}
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            feeds["input_ids"][row, :n] = enc.ids
            if "attention_mask" in feeds:
                feeds["attention_mask"][row, :n] = 1
            if "token_type_ids" in feeds:
                feeds["token_type_ids"][row, :n] = enc.type_ids
        return feeds

    def logits(self, texts: list[str]) -> np.ndarray:
        """Raw intent logits, for calibration and evaluation."""
        if not self.io.intent_logits:
            raise ArtifactError(f"artifact {self.manifest.name} has no intent head")
        return self._run(self._encode(texts))[self.io.intent_logits]

    def embeddings(self, texts: list[str]) -> np.ndarray:
        """Pooled sentence embeddings (what the distance table was fitted on), for the trainer."""
        if not self.io.embedding:
            raise ArtifactError(f"artifact {self.manifest.name} has no embedding output")
        values = self.session.run([self.io.embedding], self._feeds(self._encode(texts)))
        return values[0]  # type: ignore[no-any-return]

    def predict(self, texts: list[str], top_k: int = 3, deadlines: list[float] | None = None) -> list[Prediction]:
        """One pass over the batch (milliseconds: `deadlines` are not needed inside it)."""
        encodings = self._encode(texts)
        out = self._run(encodings)
        far = self.distance.distances(out[self.io.embedding]) if self.distance and self.io.embedding else None
        preds = []
        for row, (text, enc) in enumerate(zip(texts, encodings, strict=True)):
            label, confidence, top = self._intent(out, row, top_k)
            entities = self._entities(out, row, text, enc)
            distance = None if far is None else round(float(far[row]), 4)
            preds.append(Prediction(label, confidence, top, entities, distance=distance))
        return preds

    def _intent(
        self, out: dict[str, np.ndarray], row: int, top_k: int
    ) -> tuple[str | None, float, list[tuple[str, float]]]:
        if not self.io.intent_logits:
            return None, 1.0, []
        probs = softmax(out[self.io.intent_logits][row], self.manifest.temperature)
        order = np.argsort(-probs)[: max(1, top_k)]
        top = [(self.manifest.labels[i], float(probs[i])) for i in order]
        return top[0][0], top[0][1], top

    def _entities(self, out: dict[str, np.ndarray], row: int, text: str, enc: Encoding) -> list[Entity]:
        if not self.io.tag_logits or not self.manifest.tags:
            return []
        n = len(enc.ids)
        probs = softmax(out[self.io.tag_logits][row, :n])
        best = probs.argmax(axis=-1)
        tags = [self.manifest.tags[i] for i in best]
        scores = [float(probs[i, j]) for i, j in enumerate(best)]
        return decode_bio(text, tags, enc.offsets, scores, enc.word_ids)

    def close(self) -> None:
        del self.session

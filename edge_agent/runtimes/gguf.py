"""Causal LMs in GGUF through llama-cpp-python: labels are chosen from their tree, fields generated under a grammar.

classify: one pass over the request's own tokens (the template's fixed prefix stays in the KV cache
across requests), then a best-first search of the labels' token tree (`label_tree`), asking the
model only where the tree branches: the greedy way down in the prompt's own sequence, a few token
decodes, then the rivals still within reach of the best label expanded side by side in batched
branches. Per label a log-probability (manifest `label_scoring`: "tree", the distribution of
generation restricted to the label set, or "full", the model's own probability of every label
token, end of turn included, as before), divided by the manifest's temperature and normalised over
the label set, gives label, confidence and top-k as the ONNX runtime returns them. No label outside
the set can come out.

extract: greedy generation constrained by a grammar built from the manifest's fields schema,
max_tokens derived from that grammar (and capped by `max_answer_tokens`), then validated against
the schema: output that does not validate raises InvalidOutput, never a silent bad reply.
Confidence is the probability the model gives the whole answer.

Prompts are rebuilt from the manifest's `prompt` only (see `edge_agent.contract.manifest.Prompt`), the
contract the trainer used for training; export checks token for token that both sides agree.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.contract import schema
from edge_agent.contract.manifest import Manifest
from edge_agent.contract.prediction import Prediction
from edge_agent.errors import ArtifactError, InvalidOutput, Timeout, TooLarge
from edge_agent.runtimes.grammar import gbnf, max_bytes
from edge_agent.runtimes.label_tree import LabelTree, Prefix, shared
from edge_agent.runtimes.llamacpp import Grammar, Llama, Row

MAX_BRANCHES = 32  # labels scored side by side in one decode
SLACK = 16  # spare cells in the context
PRUNE = 8.0  # full scoring: nats behind the greedy label beyond which a label keeps its prefix bound (x temperature)
# tree scoring: rivals within RIVALS nats of the best label are expanded for CLOSE rounds (those that could beat it,
# always). Measured on HWU64 dev (bench/README.md): 2 nats, 1 round keeps p50 near the floor and the fitted
# confidence within 0.01 of a full search; 8 nats costs 2x the latency for no accuracy.
RIVALS = 2.0
CLOSE = 1


@dataclass(frozen=True)
class Completion:
    """What generation produced: text, token count, log-probability of the whole answer."""

    text: str
    tokens: int
    logprob: float
    finished: bool


def _logsumexp(logits: np.ndarray) -> float:
    top = float(logits.max())
    return top + float(np.log(np.exp(logits - top).sum()))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))  # type: ignore[no-any-return]


class GgufRuntime:
    """One GGUF artifact, task classify or extract."""

    def __init__(self, folder: Path, manifest: Manifest, threads: int = 2) -> None:
        if manifest.prompt is None:
            raise ArtifactError(f"artifact {manifest.name}: manifest has no prompt section")
        if manifest.task == "classify" and len(manifest.labels) < 2:
            raise ArtifactError(f"artifact {manifest.name}: classify needs at least two labels")
        if manifest.task == "extract" and not manifest.fields_schema:
            raise ArtifactError(f"artifact {manifest.name}: extract needs a fields_schema")
        if manifest.task not in ("classify", "extract"):
            raise ArtifactError(f"artifact {manifest.name}: the gguf runtime serves classify or extract")
        self.manifest, self.prompt = manifest, manifest.prompt
        self.llm = Llama(folder / manifest.file("model").path)
        self.grammar: Grammar | None = None
        try:
            self._prepare(threads)
        except BaseException:
            self.close()
            raise

    def _prepare(self, threads: int) -> None:
        before, after = self.prompt.parts()
        self.before, self.after = self.piece_ids(before), self.piece_ids(after)
        self.end = self.piece_ids(self.prompt.end)
        self.label_ids = [self.plain(label) + self.end for label in self.manifest.labels]
        try:
            self.tree = LabelTree(self.label_ids)
        except ValueError as exc:
            raise ArtifactError(f"artifact {self.manifest.name}: {exc} in the GGUF vocabulary") from None
        fixed = 1 + len(self.before) + len(self.after) + self.manifest.max_input_tokens
        if self.manifest.task == "classify":
            n_seq = min(len(self.label_ids), MAX_BRANCHES) + 1
            answer = sum(sorted(map(len, self.label_ids))[-(n_seq - 1) :])
            self.max_new = max(map(len, self.label_ids))
        else:
            n_seq, fields = 1, self.manifest.fields_schema or {}
            self.max_new = answer = min(
                max_bytes(fields) + 1 + len(self.end), self.manifest.max_answer_tokens or 1 << 30
            )
            self.grammar = Grammar(self.llm, gbnf(fields))
        self.llm.open(-(-(fixed + answer + SLACK) // 64) * 64, n_seq, threads)

    # The prompt contract, as edge_agent.contract.manifest.Prompt states it.
    def plain(self, text: str) -> list[int]:
        return self.llm.tokenize(text, special=False) if text else []

    def piece_ids(self, piece: str) -> list[int]:
        out: list[int] = []
        for run, special in self.prompt.split(piece):
            if not special:
                out += self.plain(run)
                continue
            ids = self.llm.tokenize(run, special=True)
            if len(ids) != 1:
                raise ArtifactError(f"artifact {self.manifest.name}: {run!r} is not one token in the GGUF vocabulary")
            out += ids
        return out

    def prompt_ids(self, text: str) -> list[int]:
        ids = self.plain(text)
        if len(ids) > self.manifest.max_input_tokens:
            raise TooLarge(
                f"text has {len(ids)} tokens; model {self.manifest.name} takes {self.manifest.max_input_tokens}"
            )
        bos = [self.llm.bos] if self.prompt.add_bos else []
        return bos + self.before + ids + self.after

    def answer_ids(self, answer: str) -> list[int]:
        return self.plain(answer) + self.end

    def check_input(self, text: str) -> None:
        limit = self.manifest.max_input_chars
        if len(text) > limit:
            raise TooLarge(f"text has {len(text)} characters; model {self.manifest.name} takes {limit}")

    def predict(self, texts: list[str], top_k: int = 3, deadlines: list[float] | None = None) -> list[Prediction]:
        """One text after the other, each stopped with Timeout once its own deadline passes."""
        until: list[float | None] = list(deadlines) if deadlines is not None else [None] * len(texts)
        if self.manifest.task == "extract":
            return [self._extract(text, limit) for text, limit in zip(texts, until, strict=True)]
        return [self._classify(text, top_k, limit) for text, limit in zip(texts, until, strict=True)]

    def _classify(self, text: str, top_k: int, deadline: float | None) -> Prediction:
        self._in_time(deadline)
        z = self.scores(text, deadline) / self.manifest.temperature
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        order = np.argsort(-probs)[: max(1, top_k)]
        top = [(self.manifest.labels[i], float(probs[i])) for i in order]
        return Prediction(top[0][0], top[0][1], top)

    def scores(self, text: str, deadline: float | None = None) -> np.ndarray:
        """Per label, its log-probability as the manifest's `label_scoring` defines it."""
        if self.manifest.label_scoring == "tree":
            return self.tree_scores(text, deadline)
        return self.full_scores(text, deadline)

    def tree_scores(self, text: str, deadline: float | None = None) -> np.ndarray:
        """Best-first search of the label tree; logits only at branching nodes.

        The greedy way down is decoded in sequence 0 after the prompt, the forced tokens before each
        branch in one decode with it. Then every frontier node whose subtree may hold a label better
        than the best one found is expanded (the arg max is exact), and for CLOSE rounds also those
        within RIVALS nats of it, side by side as branches of the prompt: each round one decode. A
        label never reached gets an even share of its subtree's probability (`LabelTree.scores`), so
        the best label's probability is exact before the temperature and the distribution sums to one.
        """
        ids = self.prompt_ids(text)
        logits = self.llm.prefill(ids)
        frontier: dict[Prefix, float] = {}
        node, value, decoded = self.tree.settle(()), 0.0, tuple[int, ...]()
        while node not in self.tree.leaves:
            if node != decoded:
                self._in_time(deadline)
                logits = self.llm.append(list(node[len(decoded) :]))
                decoded = node
            frontier.update(self.tree.branch(node, value, logits))
            node = max(frontier, key=frontier.__getitem__)
            if node in self.tree.leaves or node[: len(decoded)] != decoded:
                break  # a whole label, or the best node lies off the greedy way: the rounds below go on
            value = frontier.pop(node)
        margin = RIVALS * max(1.0, self.manifest.temperature)
        for rounds in range(len(max(self.tree.sequences, key=len)) * len(self.label_ids)):
            best = max((v for p, v in frontier.items() if p in self.tree.leaves), default=-np.inf)
            slack = margin if rounds < CLOSE else 0.0
            open_ = [p for p, v in frontier.items() if p not in self.tree.leaves and v >= best - slack]
            if not open_:
                break
            self._in_time(deadline)
            chosen = sorted(open_, key=frontier.__getitem__, reverse=True)[: self.llm.n_seq - 1]
            for node, found in zip(chosen, self._expand(chosen, len(ids), decoded), strict=True):
                frontier.update(self.tree.branch(node, frontier.pop(node), found))
        return self.tree.scores(frontier)

    def _expand(self, nodes: list[Prefix], at: int, decoded: Prefix) -> list[np.ndarray]:
        """The logits at each of these tree nodes, in one decode: each node a branch of the prompt that
        shares sequence 0's cells as far as its tokens agree with the greedy way decoded there."""
        where: dict[Prefix, int] = {}
        rows: list[Row] = []
        try:
            for k, node in enumerate(nodes, start=1):
                common = shared(node, decoded)
                self.llm.branch(k, at + common)
                for depth in range(common + 1, len(node) + 1):
                    prefix = node[:depth]
                    if prefix not in where:
                        where[prefix] = len(rows)
                        rows.append((prefix[-1], at + depth - 1, [], False))
                    rows[where[prefix]][2].append(k)
            for node in nodes:
                token, pos, seqs, _ = rows[where[node]]
                rows[where[node]] = (token, pos, seqs, True)
            self.llm.decode(rows)
            return [self.llm.logits(where[node]) for node in nodes]
        finally:  # the branches never outlive the request, whatever happened
            for k in range(1, len(nodes) + 1):
                self.llm.drop(k)

    def full_scores(self, text: str, deadline: float | None = None) -> np.ndarray:
        """Per label: the sum of log-probabilities of its tokens and the end of turn after the prompt.

        Branch and bound over the labels' prefix tree: the greedy path through the tree gives one
        label's exact score (as cheap as generating it); a label whose known prefix already trails it
        by more than PRUNE nats keeps that prefix's log-probability, an upper bound (each holds under
        e^-PRUNE of the greedy label's mass; confidence can only err low: by 0.4 points on average,
        1.8 at most, on HWU64). The others are
        scored exactly in one batched decode, each tree node once, in the sequences of every label
        through it; a label's last token needs no pass at all.
        """
        ids = self.prompt_ids(text)
        first = log_softmax(self.llm.prefill(ids))
        known = self._greedy(first, deadline)
        best = max(value for prefix, value in known.items() if prefix in self.tree.leaves)
        margin = PRUNE * max(1.0, self.manifest.temperature)
        out, exact = np.zeros(len(self.label_ids)), []
        for j, toks in enumerate(self.label_ids):
            depth = max(d for d in range(1, len(toks) + 1) if tuple(toks[:d]) in known)
            out[j] = known[tuple(toks[:depth])]
            if depth < len(toks) and out[j] >= best - margin:
                exact.append(j)
        width = self.llm.n_seq - 1
        for start in range(0, len(exact), width):
            chunk = exact[start : start + width]
            for j, value in zip(chunk, self._exact(chunk, first, len(ids)), strict=True):
                out[j] = value
        return out

    def _greedy(self, first: np.ndarray, deadline: float | None) -> dict[tuple[int, ...], float]:
        """Follow the most likely token among the labels' continuations, as generation would (sequence 0
        grows by those tokens). Returns the log-probability of every prefix seen on the way: the path
        and each step's alternatives, whose values bound every label below them."""
        known: dict[tuple[int, ...], float] = {}
        prefix: tuple[int, ...] = ()
        logprobs, total = first, 0.0
        while prefix not in self.tree.leaves:
            for token in self.tree.children[prefix]:
                step = (*prefix, token)  # mypy (3.10 target) misreads it inline as 3.11 syntax
                known[step] = total + float(logprobs[token])
            token = max(self.tree.children[prefix], key=lambda t: logprobs[t])
            prefix = (*prefix, token)
            total = known[prefix]
            if prefix not in self.tree.leaves:
                self._in_time(deadline)
                logprobs = log_softmax(self.llm.append([token]))
        return known

    def _exact(self, chunk: list[int], first: np.ndarray, at: int) -> list[float]:
        """Exact scores of these labels: their prefix tree in one decode, as branches of the prompt."""
        rows, where = self._tree([self.label_ids[j] for j in chunk], at)
        try:
            for k in range(len(chunk)):
                self.llm.branch(k + 1, at)
            self.llm.decode(rows)
            cache: dict[int, np.ndarray] = {}
            out = []
            for j in chunk:
                toks = self.label_ids[j]
                total = float(first[toks[0]])
                for depth in range(1, len(toks)):
                    row = where[tuple(toks[:depth])]
                    if row not in cache:
                        cache[row] = log_softmax(self.llm.logits(row))
                    total += float(cache[row][toks[depth]])
                out.append(total)
            return out
        finally:  # the branches never outlive the request, whatever happened
            for k in range(len(chunk)):
                self.llm.drop(k + 1)

    @staticmethod
    def _tree(labels: list[list[int]], at: int) -> tuple[list[Row], dict[tuple[int, ...], int]]:
        """Batch rows for the labels' prefixes (parents before children) and each prefix's row."""
        where: dict[tuple[int, ...], int] = {}
        seqs: list[list[int]] = []
        rows: list[Row] = []
        for k, toks in enumerate(labels):
            for depth in range(1, len(toks)):
                prefix = tuple(toks[:depth])
                if prefix not in where:
                    where[prefix] = len(rows)
                    seqs.append([])
                    rows.append((toks[depth - 1], at + depth - 1, seqs[-1], True))
                seqs[where[prefix]].append(k + 1)
        return rows, where

    def _in_time(self, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise Timeout(f"model {self.manifest.name} ran past the request's deadline")

    def _extract(self, text: str, deadline: float | None) -> Prediction:
        self._in_time(deadline)
        done = self.complete(text, deadline=deadline)
        try:
            value = json.loads(done.text)
        except json.JSONDecodeError as exc:
            raise InvalidOutput(f"model output is not JSON ({exc.msg}): {done.text[:200]!r}") from None
        problems = schema.errors(value, self.manifest.fields_schema or {})
        if problems:
            raise InvalidOutput(f"model output does not match the fields schema: {problems[0]}")
        label = value.get("intent") if self.manifest.labels else None
        return Prediction(label if isinstance(label, str) else None, float(np.exp(done.logprob)), fields=value)

    def complete(
        self, text: str, constrained: bool = True, max_tokens: int | None = None, deadline: float | None = None
    ) -> Completion:
        """Greedy generation after the prompt; under the grammar it stops when the JSON value closes.
        Past `deadline` it stops with Timeout (checked before every token)."""
        logits = self.llm.prefill(self.prompt_ids(text))
        grammar = self.grammar if constrained else None
        if grammar is not None:
            grammar.reset()
        out, tokens, logprob = bytearray(), list[int](), 0.0
        for _ in range(max_tokens or self.max_new):
            token = grammar.pick(logits) if grammar else int(np.argmax(logits))
            if self.llm.is_eog(token):
                return Completion(out.decode("utf-8", "replace").strip(), len(tokens), logprob, True)
            logprob += float(logits[token] - _logsumexp(logits))
            tokens.append(token)
            if grammar is not None:
                grammar.accept(token)
            out += self.llm.piece(token)
            if (grammar is not None and _closed(out)) or tokens[-len(self.end) :] == self.end:
                return Completion(out.decode("utf-8", "replace").strip(), len(tokens), logprob, True)
            self._in_time(deadline)
            logits = self.llm.append([token])
        return Completion(out.decode("utf-8", "replace").strip(), len(tokens), logprob, False)

    def close(self) -> None:
        if self.grammar is not None:
            self.grammar.close()
        self.llm.close()


def _closed(out: bytearray) -> bool:
    """Whether the generated bytes already hold one complete JSON object."""
    if not out.rstrip().endswith(b"}"):
        return False
    try:
        json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True

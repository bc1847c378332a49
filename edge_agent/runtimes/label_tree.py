"""The label set as a prefix tree of token ids: where the model must be asked, and where it need not.

A label is its tokens plus the end of turn. Where the tree does not branch (the `_lightoff` after
`iot_hue`, the end of turn after a whole label) the next token is forced, so classifying by the tree
needs the model's logits only at branching nodes: a label's probability is the product, over the
branches on its way, of the softmax over that node's children (the distribution generation under a
label grammar samples from). Pure logic, no model: `gguf.py` does the decoding.
"""

from __future__ import annotations

import numpy as np

Prefix = tuple[int, ...]


class LabelTree:
    """Children per prefix, the label each whole sequence names, and the chains nothing can branch from."""

    def __init__(self, sequences: list[list[int]]) -> None:
        kids: dict[Prefix, dict[int, None]] = {}
        self.leaves: dict[Prefix, int] = {}
        self.below: dict[Prefix, int] = {}  # labels under each prefix
        for j, toks in enumerate(sequences):
            whole = tuple(toks)
            if whole in self.leaves:
                raise ValueError(f"labels {self.leaves[whole]} and {j} are the same tokens")
            self.leaves[whole] = j
            for depth in range(len(whole)):
                kids.setdefault(whole[:depth], {})[whole[depth]] = None
                self.below[whole[:depth]] = self.below.get(whole[:depth], 0) + 1
        self.children = {prefix: tuple(found) for prefix, found in kids.items()}
        self.sequences = [tuple(toks) for toks in sequences]

    def settle(self, prefix: Prefix) -> Prefix:
        """Follow forced tokens from `prefix` to the next node that branches, or to a whole label."""
        while prefix not in self.leaves and len(self.children[prefix]) == 1:
            prefix = (*prefix, self.children[prefix][0])
        return prefix

    def branch(self, node: Prefix, value: float, logits: np.ndarray) -> dict[Prefix, float]:
        """The settled children of a branching node, each with its log-probability under the tree."""
        tokens = self.children[node]
        chosen = logits[list(tokens)].astype(np.float64)
        top = chosen.max()
        logprobs = chosen - top - np.log(np.exp(chosen - top).sum())
        return {self.settle((*node, t)): value + float(lp) for t, lp in zip(tokens, logprobs, strict=True)}

    def scores(self, frontier: dict[Prefix, float]) -> np.ndarray:
        """Per label: its exact log-probability where the search reached it, else an even share of the
        probability of the frontier node above it. The shares sum to the subtree's probability, so the
        distribution still sums to one and the best label's probability is exact however little of
        the tree was searched."""
        out = np.empty(len(self.sequences))
        for j, toks in enumerate(self.sequences):
            depth = len(toks)
            while toks[:depth] not in frontier:
                depth -= 1
            node = toks[:depth]
            out[j] = frontier[node] - (0.0 if node in self.leaves else float(np.log(self.below[node])))
        return out


def shared(a: Prefix, b: Prefix) -> int:
    """Length of the common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n

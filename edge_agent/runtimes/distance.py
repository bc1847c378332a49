"""The distance score: how far a text's pooled embedding lies from the intents the model was trained on.

Mahalanobis distance to the nearest class mean under one covariance shared by all classes (the
within-class scatter of the training embeddings). Stored whitened, so a device computes it with two
small matrix products: z = x W, then the squared distance to each whitened mean. For MiniLM (d = 384,
64 intents) that is ~170k multiply-adds per text, a few microseconds beside the encoder's pass.

The file format is defined here once, for the trainer that writes it and the runtime that reads it:
one float32 `.npy` of shape (labels + d, d), the whitened means first, then W; read without pickle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.errors import ArtifactError

SHRINK = 0.01  # share of the covariance replaced by its mean variance: invertible on small data too


class Distance:
    """The score for one artifact: `distances(pooled)` is one number per row, larger = less familiar."""

    def __init__(self, path: Path, labels: int) -> None:
        try:
            table = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: not a distance table: {exc}") from None
        if table.ndim != 2 or table.shape[0] != labels + table.shape[1] or table.dtype != np.float32:
            raise ArtifactError(f"{path}: distance table of shape {table.shape} does not fit {labels} labels")
        self.centers = table[:labels]
        self.whiten = table[labels:]
        self.center_sq = (self.centers.astype(np.float64) ** 2).sum(axis=1)

    def distances(self, pooled: np.ndarray) -> np.ndarray:
        z = pooled.astype(np.float64) @ self.whiten
        sq = (z * z).sum(axis=1, keepdims=True) - 2.0 * z @ self.centers.T + self.center_sq
        return np.sqrt(np.maximum(sq.min(axis=1), 0.0))  # type: ignore[no-any-return]


def fit(embeddings: np.ndarray, labels: np.ndarray, n_labels: int, shrink: float = SHRINK) -> np.ndarray:
    """The table for training embeddings (rows) and their label indices. A label without examples gets
    the overall mean (it cannot be near anything it never saw; the softmax still knows it)."""
    x = embeddings.astype(np.float64)
    overall = x.mean(axis=0)
    means = np.stack([x[labels == k].mean(axis=0) if (labels == k).any() else overall for k in range(n_labels)])
    centered = x - means[labels]
    cov = centered.T @ centered / max(1, len(x) - 1)
    cov = (1 - shrink) * cov + shrink * (np.trace(cov) / len(cov) + 1e-6) * np.eye(len(cov))
    values, vectors = np.linalg.eigh(cov)
    whiten = vectors @ np.diag(1.0 / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T
    return np.concatenate([means @ whiten, whiten]).astype(np.float32)


def save(table: np.ndarray, path: Path) -> None:
    np.save(path, table, allow_pickle=False)

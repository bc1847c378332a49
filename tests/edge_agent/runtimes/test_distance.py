"""The distance score: the stored table gives the Mahalanobis distance to the nearest class mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import ArtifactError
from edge_agent.runtimes.distance import Distance, fit, save


def clusters(rng: np.random.Generator, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    means = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
    labels = rng.integers(0, 3, n)
    scale = np.array([1.0, 0.5, 0.2])  # anisotropic: Mahalanobis differs from Euclidean
    return means[labels] + rng.normal(size=(n, 3)) * scale, labels


def test_distance_is_mahalanobis_to_the_nearest_class_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = clusters(rng)
    save(fit(x, y, 3, shrink=0.0), tmp_path / "ood.npy")
    scorer = Distance(tmp_path / "ood.npy", 3)
    probe = np.array([[0.1, 0.2, 0.05], [3.0, 3.0, 3.0]])
    means = np.stack([x[y == k].mean(axis=0) for k in range(3)])
    centered = x - means[y]
    inv = np.linalg.inv(centered.T @ centered / (len(x) - 1))
    expected = [min(np.sqrt((p - m) @ inv @ (p - m)) for m in means) for p in probe]
    assert scorer.distances(probe) == pytest.approx(expected, rel=1e-4)
    assert scorer.distances(probe)[1] > 10 * scorer.distances(probe)[0]  # off every cluster: far


def test_a_label_without_examples_does_not_attract_texts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x, y = clusters(rng)
    table = fit(x, y, 4)  # label 3 never seen: its mean is the overall mean
    assert table.shape == (4 + 3, 3) and table.dtype == np.float32


@pytest.mark.parametrize(
    "content",
    [np.zeros((5, 3), dtype=np.float32), np.zeros((6, 3), dtype=np.float64), np.array(["x"])],
    ids=["wrong shape", "wrong dtype", "not numbers"],
)
def test_a_table_that_does_not_fit_the_labels_is_refused(tmp_path: Path, content: np.ndarray) -> None:
    np.save(tmp_path / "ood.npy", content)
    with pytest.raises(ArtifactError, match=r"ood\.npy"):
        Distance(tmp_path / "ood.npy", 3)


def test_a_pickled_table_is_never_loaded(tmp_path: Path) -> None:
    np.save(tmp_path / "ood.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ArtifactError, match="not a distance table"):
        Distance(tmp_path / "ood.npy", 3)

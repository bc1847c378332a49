"""The supervised contrastive term: lower when each intent's embeddings sit together."""

from __future__ import annotations

import torch

from trainer.encoder.finetune import supervised_contrastive


def test_grouped_embeddings_cost_less_than_mixed_ones() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    centres = torch.eye(3, 8) * 5
    grouped = centres[labels] + 0.1 * torch.randn(8, 8)
    mixed = torch.randn(8, 8)
    assert supervised_contrastive(grouped, labels, 0.1) < supervised_contrastive(mixed, labels, 0.1)


def test_a_batch_without_pairs_adds_nothing_and_keeps_the_graph() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive(x, torch.tensor([0, 1, 2]), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and x.grad is not None

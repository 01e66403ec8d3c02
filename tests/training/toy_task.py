"""A tiny regression task for trainer tests (importable by spawned processes)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from chatrex.data.seeded_index import split_index


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 8, generator=g)
        self.w = torch.randn(8, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item):
        i, seed = split_index(item)
        noise = torch.randn(1, generator=torch.Generator().manual_seed(seed)) * 0.01 if seed is not None else 0.0
        return self.x[i], (self.x[i] @ self.w) + noise


class ToyTask:
    name = "toy"

    def __init__(self, frozen_first: bool = False) -> None:
        self.frozen_first = frozen_first

    def build_model(self) -> nn.Module:
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
        if self.frozen_first:
            model[0].requires_grad_(False)
        return model

    def build_dataset(self):
        return ToyDataset()

    def collate(self, samples):
        xs, ys = zip(*samples)
        return torch.stack(xs), torch.stack(ys)

    def compute_loss(self, model, batch, device):
        x, y = (t.to(device) for t in batch)
        pred = model(x)
        loss = nn.functional.mse_loss(pred, y)
        return loss, {"loss_mse": float(loss.detach())}

    def export(self, model: nn.Module, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out_dir / "model.pt")


class DyingToyTask(ToyTask):
    """ToyTask whose process ends abruptly (``os._exit``, no cleanup, as a killed rank) on its
    ``die_at``-th loss computation."""

    def __init__(self, die_at: int) -> None:
        super().__init__()
        self.die_at = die_at
        self.calls = 0

    def compute_loss(self, model, batch, device):
        import os

        self.calls += 1
        if self.calls == self.die_at:
            os._exit(17)
        return super().compute_loss(model, batch, device)

"""The served model: a linear regression from 2 features to 1 output."""

from __future__ import annotations

import torch

N_FEATURES = 2


class LinearRegressor(torch.nn.Module):
    """``y = x @ W.T + b`` for a batch ``x`` of shape ``(n, 2)``; returns shape ``(n, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(N_FEATURES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict one value per row of ``x``."""
        return self.linear(x)

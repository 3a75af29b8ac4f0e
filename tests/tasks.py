"""Small synthetic tasks shared by tests in several packages."""
import torch
from torch import nn


def teacher_regression(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A regression task made by a random teacher MLP (16 → 32 → 1, tanh): ``(x_train (768, 16), y_train (768, 1)),
    (x_test (256, 16), y_test (256, 1))``."""
    torch.manual_seed(seed)
    x = torch.randn(1024, 16)
    teacher = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    with torch.no_grad():
        y = teacher(x)
    return (x[:768], y[:768]), (x[768:], y[768:])

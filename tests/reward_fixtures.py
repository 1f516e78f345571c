"""User reward callables for the reward fine-tuning tests (imported by `python:` path)."""

from __future__ import annotations

import torch


def brightness(images: torch.Tensor, labels) -> torch.Tensor:
    """Mean pixel value: the optimum is an all-white image."""
    return images.flatten(1).mean(1)


def near_target(images: torch.Tensor, labels) -> torch.Tensor:
    """−mean (x − 0.3)²: the optimum is every pixel at 0.3 (reward 0)."""
    return -((images - 0.3) ** 2).flatten(1).mean(1)


def one_number(images: torch.Tensor, labels) -> torch.Tensor:
    """Wrong: one score for the whole batch."""
    return images.mean()


def detached(images: torch.Tensor, labels) -> torch.Tensor:
    """A score without gradient (fine for DDPO, refused by DRaFT)."""
    return images.detach().flatten(1).mean(1)

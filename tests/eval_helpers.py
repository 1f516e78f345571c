"""Helpers shared by the evaluation tests."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch


@contextmanager
def one_thread():
    """Tiny convolutions run faster on one thread: a second one only adds synchronisation."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def single_thread():
    """Autouse in the eval test modules (imported there): one thread per test."""
    with one_thread():
        yield

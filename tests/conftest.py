"""Shared fixtures for the test suite."""
import pytest
import torch

@pytest.fixture
def one_thread():
    "Tiny tensors: one torch thread is much faster than two fighting other processes for 2 shared cores."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

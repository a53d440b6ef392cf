"""Test configuration: Triton runs in its CPU interpreter when no CUDA device is present.

TRITON_INTERPRET must be set before triton is imported, hence here, at collection time.
GPU-only tests use the ``gpu`` marker and skip with the reason "no CUDA device".
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_cuda)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one thread: for tiny tensors and networks, thread start-up
    dominates and the CI machine's two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Fixtures of the per-op tests (helpers in cases.py): ``backend`` runs a test once per backend,
``checked`` once per compiled backend whose argument checks run without its device."""
import pytest

import cases


@pytest.fixture(params=cases.BACKENDS)
def backend(request) -> cases.Backend:
    return cases.backend(request.param)


@pytest.fixture(params=cases.CHECKED)
def checked(request):
    """The module of a compiled backend (triton or cuda), usable or not: its checks come first."""
    return cases.module(request.param)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every module on one torch thread (tests/conftest.py): the tensors are small, and on the
    shared two-core CI machine intra-op threads cost more than they save."""
    yield

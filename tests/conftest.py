"""Fixtures shared by the test modules."""

import pytest

import fastnet


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Runs the test with fastnet set to 1 and to 2 threads (the value is the count), restoring the
    previous count afterwards."""
    previous = fastnet.get_num_threads()
    fastnet.set_num_threads(request.param)
    assert fastnet.get_num_threads() == request.param
    yield request.param
    fastnet.set_num_threads(previous)


@pytest.fixture(autouse=True)
def restore_threads():
    """Puts back the thread count a test found, for tests that set their own (those that draw it
    with hypothesis among them)."""
    previous = fastnet.get_num_threads()
    yield
    fastnet.set_num_threads(previous)

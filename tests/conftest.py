"""Fixtures shared by the test modules."""

import pytest
from hypothesis import HealthCheck, settings

import fastnet

# Every test that hypothesis drives draws the same examples at every run (derandomize), takes as
# long as it needs (kernels at large sizes), and may be slow to generate or filter its inputs; a
# test gives its own number of examples.
settings.register_profile("fastnet", deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.filter_too_much])
settings.load_profile("fastnet")


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Runs the test with fastnet set to 1 and to 2 threads (the value is the count); restore_threads
    puts the previous count back afterwards."""
    fastnet.set_num_threads(request.param)
    assert fastnet.get_num_threads() == request.param
    return request.param


@pytest.fixture(autouse=True)
def restore_threads():
    """Puts back the thread count a test found, for tests that set their own (those that draw it
    with hypothesis among them)."""
    previous = fastnet.get_num_threads()
    yield
    fastnet.set_num_threads(previous)

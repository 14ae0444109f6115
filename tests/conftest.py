"""Suite order: the learning tests (minutes each) start first and the Atari ones (the longest) first of all, so the
two xdist workers of CI end together instead of one idling while the other finishes a long test at the end.
Where envpool has no wheel (see requirements-mlx.txt), the tests of ppo_atari_envpool are skipped, not failed. The
learning runs marked `full_learning` (which, and why: tests/test_learning.py) run only with --full-learning."""

import importlib.util

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--full-learning", action="store_true", help="also run the learning tests CI leaves out (tests/test_learning.py)"
    )


def pytest_collection_modifyitems(config, items):
    def rank(item):
        if item.path.name != "test_learning.py":
            return 2
        return 0 if "atari" in item.name else 1

    items.sort(key=rank)  # stable: every other test keeps its order
    if importlib.util.find_spec("envpool") is None:
        skip = pytest.mark.skip(reason="envpool is not installed (no wheel for this platform or Python)")
        for item in items:
            if "envpool" in item.nodeid:
                item.add_marker(skip)
    if not config.getoption("--full-learning"):
        skip = pytest.mark.skip(reason="a learning run CI leaves out: pass --full-learning")
        for item in items:
            if item.get_closest_marker("full_learning"):
                item.add_marker(skip)

"""Suite order: the learning tests (minutes each) start first and the Atari ones (the longest) first of all, so the
two xdist workers of CI end together instead of one idling while the other finishes a long test at the end."""


def pytest_collection_modifyitems(items):
    def rank(item):
        if item.path.name != "test_learning.py":
            return 2
        return 0 if "atari" in item.name else 1

    items.sort(key=rank)  # stable: every other test keeps its order

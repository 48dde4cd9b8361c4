"""Shared fixtures: seeded data and the real tutorial volumes in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT.parent / "shared" / "data" / "tutorial"


@pytest.fixture(scope="session")
def tutorial_dir() -> Path:
    """The tutorial N5 containers; skip only when ../shared is absent (never otherwise)."""
    if not (ROOT.parent / "shared").exists():
        pytest.skip("../shared is absent beside the project root")
    assert TUTORIAL.exists(), f"../shared exists but {TUTORIAL} does not"
    return TUTORIAL


@pytest.fixture(scope="session")
def local_cluster():
    """One LocalCluster for the session (2 worker processes, 1 thread each).

    Tests connect their own client, so that nothing else runs on it::

        with distributed.Client(local_cluster) as client: ...
    """
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _fresh_result_cache():
    """Every test starts with no registration result cached in this process."""
    from lazyreg.result_cache import clear_cache

    clear_cache(client=False)
    yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the long cases first: the notebook (about 3 minutes), then the others marked slow.

    pytest-xdist hands tests out in this order; a long test collected near the end would start
    when the other worker has nothing left to do and keep the suite waiting for it alone.
    """
    def rank(item: pytest.Item) -> int:
        if item.nodeid.startswith("tests/test_notebook.py"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)  # stable: the order within each group is kept

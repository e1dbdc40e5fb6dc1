"""Shared pytest options (at the repository root, so pytest puts the root, not tests/, on sys.path: the test
folders tests/bilevel and tests/autolora must not shadow the packages of the same names). Slow tests run only
with --runslow."""
import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)

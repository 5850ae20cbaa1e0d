"""Shared pytest configuration: ``--bench FILE`` enables hardware-marked tests."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench",
        action="store",
        default=None,
        metavar="FILE",
        help="bench file of real instruments: runs the tests marked 'hardware'",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--bench"):
        return
    skip = pytest.mark.skip(reason="needs real instruments: pass --bench FILE")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def bench_file(request: pytest.FixtureRequest) -> str:
    path = request.config.getoption("--bench")
    if not path:
        pytest.skip("needs --bench FILE")
    return path

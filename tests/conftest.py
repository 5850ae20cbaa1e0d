"""Shared pytest configuration: ``--bench FILE`` enables hardware-marked tests; built LDPC
codes go to a directory of the session, never to the user's cache."""

from __future__ import annotations

import os

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


@pytest.fixture(autouse=True, scope="session")
def _session_code_store(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``hil.code_store`` writes to a temporary directory (inherited by worker processes)."""
    old = os.environ.get("CVQKD_CODE_CACHE")
    os.environ["CVQKD_CODE_CACHE"] = str(tmp_path_factory.mktemp("codes"))
    yield
    if old is None:
        del os.environ["CVQKD_CODE_CACHE"]
    else:
        os.environ["CVQKD_CODE_CACHE"] = old

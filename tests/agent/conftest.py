from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.harness import Agent, new_agent
from tests.integration.conftest import Net, make_net


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = new_agent(tmp_path)
    a.start()
    yield a
    a.stop()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    with make_net(tmp_path) as network:
        yield network

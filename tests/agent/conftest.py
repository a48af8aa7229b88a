from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.harness import Agent, free_port
from tests.integration.conftest import Net, make_net


def new_agent(tmp_path: Path, name: str = "agent") -> Agent:
    return Agent(
        str(tmp_path / name / "agent.sock"),
        tmp_path / name / "state",
        tmp_path / f"{name}.log",
        free_port(),
        log_dir=tmp_path / name / "log",
    )


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

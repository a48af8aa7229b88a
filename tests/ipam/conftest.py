"""Fixtures of the IPAM tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.ipam.helpers import HOST_LOCAL


@pytest.fixture
def reference_host_local() -> Path:
    """The reference host-local binary (Debian's, installed by `make test`): required."""
    assert os.access(HOST_LOCAL, os.X_OK), f"{HOST_LOCAL} missing: run `make deps`"
    return HOST_LOCAL

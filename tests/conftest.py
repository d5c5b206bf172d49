"""Test setup: 8 fake CPU devices (meshes, sharding tests) before JAX is imported anywhere."""

import json
import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def phi3_factors() -> dict:
    """Real Phi-3-mini-128k-instruct and Phi-3.5-mini-instruct longrope factor lists (public config data)."""
    return json.loads((FIXTURES / "phi3_longrope_factors.json").read_text())

"""localhub tests use the shared Hub fixtures."""

from tests.hubtools import hf_endpoint, hf_env, hub, hub_factory, receiver  # noqa: F401

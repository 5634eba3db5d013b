"""Shared fixtures. Backend-specific fixtures live in tests/fixtures_*.py plugins."""

from __future__ import annotations

pytest_plugins = ["tests.fixtures_servers", "tests.fixtures_system", "tests.fixtures_postgres"]

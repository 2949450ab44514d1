"""Fixtures of the integration tests; the helpers live in integration_cases.py."""

from __future__ import annotations

import pytest
from integration_cases import tiny

import compress
from compress.data import load_dataset


@pytest.fixture
def recipe() -> compress.Recipe:
    return tiny()


@pytest.fixture
def data(recipe):
    return load_dataset(recipe.data, recipe.seed, "cpu")

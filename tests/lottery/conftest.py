from __future__ import annotations

import pytest
from tiny import tiny_recipe

from compress.recipe import recipe_from_dict


@pytest.fixture
def make_recipe():
    return lambda **sections: recipe_from_dict(tiny_recipe(**sections))

"""The only conftest: it registers the fixture plugins and nothing else.

Fixtures live in ``tests/support/`` modules; test files import plain helpers
from ``tests.support.*``, never from a conftest.
"""

import pytest

# The helpers assert too; rewrite them so a failure shows the values.
pytest.register_assert_rewrite("tests.support")

pytest_plugins = [
    "tests.support.db",
    "tests.support.servers",
    "tests.support.tiers",
]

"""The example routes under routes/examples: they lint clean and every test case beside them passes
(one pytest item per route test case, so CI shows which one broke)."""

from __future__ import annotations

import pytest

from esbhub.routes import registry
from esbhub.routes.loader import load_paths
from esbhub.routes.testing import run_case

from .conftest import EXAMPLES

LOADED = load_paths([EXAMPLES])
CASES = [(lr, case) for lr in LOADED.routes for case in lr.route.tests]


def test_examples_lint_clean_and_have_tests():
    assert LOADED.ok, [str(e) for e in LOADED.errors]
    assert len(LOADED.routes) >= 4 and all(lr.route.tests for lr in LOADED.routes)


@pytest.mark.parametrize("lr,case", CASES, ids=[f"{lr.route.name}::{c.name}" for lr, c in CASES])
def test_example_route_case(lr, case):
    registry.lookups()  # built-ins (the MDM lookup is mocked by the cases that use it)
    res = run_case(lr, case, {x.route.name: x.route for x in LOADED.routes})
    assert res.passed, "\n".join(res.failures)

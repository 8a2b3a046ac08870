"""The nginx location block the README documents is the tested one: deploy/ holds it, and
tests/test_proxies.py runs nginx with exactly that text (events pass through live)."""

from __future__ import annotations

import pytest

from tests.proxies import BINARIES, README, RECIPES, Kind, recipe

pytestmark = pytest.mark.skipif(
    BINARIES[Kind.NGINX] is None, reason="nginx is not installed (make test does)"
)


def test_readme_documents_the_same_location_block() -> None:
    assert recipe(RECIPES[Kind.NGINX][0]).strip() in README.read_text()

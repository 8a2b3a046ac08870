"""The vendored highlighter is the npm package's text: service/web/static/vendor/ holds
what `make vendor` (tests/vendor.py) writes from the prismjs that tests/node's lockfile
pins, byte for byte."""

from __future__ import annotations

import pytest

from tests import vendor

pytestmark = pytest.mark.skipif(
    not (vendor.PACKAGE / "package.json").is_file(),
    reason="tests/node/node_modules has no prismjs: `make node-deps` installs it",
)


def test_the_vendored_prism_is_the_pinned_npm_package() -> None:
    assert (vendor.VENDOR / "prism.js").read_bytes() == vendor.bundle()
    assert (vendor.VENDOR / "prism.LICENSE").read_bytes() == vendor.license_text()


def test_the_pinned_version_is_the_lockfile_one() -> None:
    lock = (vendor.ROOT / "tests" / "node" / "package-lock.json").read_text()
    head = (vendor.VENDOR / "prism.js").read_text().splitlines()[0]
    version = head.split()[2]
    assert f'"node_modules/prismjs": {{\n      "version": "{version}"' in lock

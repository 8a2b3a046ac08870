"""The page's vendored highlighter: Prism from the npm registry, served by genstream.

`service/web/static/vendor/prism.js` is these files of the npm `prismjs` package (the
version pinned in tests/node/package-lock.json), concatenated in this order (each
language after the ones it extends), under a line naming them; `prism.LICENSE` is its
license. `make vendor` writes both from tests/node/node_modules (after `make node-deps`);
tests/test_web_viewer.py holds the committed copies equal to what it would write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGE: Final = ROOT / "tests" / "node" / "node_modules" / "prismjs"
VENDOR: Final = ROOT / "service" / "web" / "static" / "vendor"
# The core, then each language after what it extends: markup (markdown), clike (javascript,
# go, rust's neighbours), javascript (typescript, jsx).
COMPONENTS: Final = (
    "core",
    "markup",
    "css",
    "clike",
    "javascript",
    "typescript",
    "jsx",
    "python",
    "json",
    "toml",
    "yaml",
    "markdown",
    "bash",
    "sql",
    "go",
    "rust",
)


def bundle() -> bytes:
    """prism.js as `make vendor` writes it from the installed package."""
    version = json.loads((PACKAGE / "package.json").read_text())["version"]
    names = ", ".join(COMPONENTS)
    head = f"/* prismjs {version} from the npm registry (MIT, prism.LICENSE): {names} */\n"
    parts = [(PACKAGE / "components" / f"prism-{name}.js").read_bytes() for name in COMPONENTS]
    return head.encode() + b"\n".join(parts)


def license_text() -> bytes:
    return (PACKAGE / "LICENSE").read_bytes()


if __name__ == "__main__":
    VENDOR.mkdir(parents=True, exist_ok=True)
    (VENDOR / "prism.js").write_bytes(bundle())
    (VENDOR / "prism.LICENSE").write_bytes(license_text())
    sys.stdout.write(f"wrote {VENDOR}/prism.js and prism.LICENSE\n")

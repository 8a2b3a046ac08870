# Everything a fresh machine needs is installed from here: a venv, then the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench bench-smoke clean demo-openai browser nginx nchan caddy haproxy openssl node-deps postgres vendor

# The example pipeline package (README "Pipelines") is installed beside genstream: its
# entry point is read from its installed metadata, so a change to its pyproject.toml
# installs it again; its code is editable.
EXAMPLE := examples/genstream-quiz
$(STAMP): pyproject.toml $(EXAMPLE)/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]' -e $(EXAMPLE)
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/genstream serve

# genstream on a local OpenAI-compatible server (README "Real models"). Ollama by default:
#   ollama pull qwen2.5-coder:7b && make demo-openai
#   make demo-openai DEMO_BASE_URL=http://127.0.0.1:8081/v1 DEMO_MODEL=local  # llama.cpp
DEMO_BASE_URL ?= http://127.0.0.1:11434/v1
DEMO_MODEL ?= qwen2.5-coder:7b
demo-openai: $(STAMP)
	@$(BIN)/python -c "import socket, sys, urllib.parse; u = urllib.parse.urlsplit(sys.argv[1]); socket.create_connection((u.hostname, u.port or 80), timeout=3).close()" '$(DEMO_BASE_URL)' 2>/dev/null \
		|| { echo "no OpenAI-compatible server answers at $(DEMO_BASE_URL): start one (ollama serve, or llama-server -m MODEL.gguf --port 8081) or set DEMO_BASE_URL"; exit 1; }
	GENSTREAM_GENERATION_PROVIDER=openai GENSTREAM_OPENAI_BASE_URL='$(DEMO_BASE_URL)' \
		GENSTREAM_OPENAI_MODEL='$(DEMO_MODEL)' OPENAI_API_KEY="$${OPENAI_API_KEY:-local}" \
		$(BIN)/genstream serve

# The web page's tests drive Debian's chromium through Playwright (executable_path): a
# system package, installed only when missing. Playwright never downloads a browser here.
CHROMIUM := /usr/bin/chromium
browser:
	@$(call system_package,$(CHROMIUM),chromium,the web page's browser tests)

# The reverse-proxy test runs Debian's nginx on a loopback port: installed when missing.
NGINX := /usr/sbin/nginx
nginx:
	@$(call system_package,$(NGINX),nginx,the reverse-proxy test)

# The benchmark's C reference: nginx with Debian's nchan module (bench/nchan.py), both
# installed when the module is missing; without it `make bench` says so and skips nchan.
NCHAN := /usr/lib/nginx/modules/ngx_nchan_module.so
nchan:  # a module, not executable: system_package's `test -x` would never find it
	@test -e $(NCHAN) || $(call system_package,$(NCHAN),nginx libnginx-mod-nchan,the benchmark's nchan reference)

# The same tests for Debian's Caddy and HAProxy (tests/test_proxies.py), and openssl for
# the self-signed certificate of their HTTPS (HTTP/2) recipes: installed when missing.
CADDY := /usr/bin/caddy
HAPROXY := /usr/sbin/haproxy
OPENSSL := /usr/bin/openssl
caddy:
	@$(call system_package,$(CADDY),caddy,the Caddy tests)
haproxy:
	@$(call system_package,$(HAPROXY),haproxy,the HAProxy tests)
openssl:
	@$(call system_package,$(OPENSSL),openssl,the HTTP/2 proxy tests)

# The postgres backend's tests run Debian's postgresql in a throwaway cluster of their own
# (tests/postgres.py: initdb into a temporary folder, a loopback port; no system service).
# Its binaries live in a versioned folder (/usr/lib/postgresql/15/bin): any version will do.
POSTGRES_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb) /usr/lib/postgresql/missing/bin/initdb)
postgres:
	@$(call system_package,$(POSTGRES_INITDB),postgresql,the PostgreSQL backend's tests)

# What the tests take from the npm registry, in tests/node, pinned by its lockfile: the
# `eventsource` package the Node client tests run on, and React for the useGeneration
# hook's Chromium test (an import map, no bundler). Debian's nodejs and npm when no npm is
# on the PATH, then `npm ci` whenever node_modules is missing or older than the lockfile.
NODE_DIR := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@command -v npm >/dev/null || $(call system_package,/usr/bin/npm,nodejs npm,the npm EventSource client test)
	if command -v npm >/dev/null; then \
		cd $(NODE_DIR) && npm ci --no-audit --no-fund && touch node_modules/.installed; fi

node-deps: $(NODE_STAMP)

# The page's syntax highlighter is vendored, so that `make run` needs no npm: Prism from
# tests/node (pinned by its lockfile) copied into service/web/static/vendor/ by
# tests/vendor.py. Run after changing its version; tests/test_vendor.py holds the copy to it.
vendor: $(STAMP) node-deps
	$(BIN)/python -m tests.vendor

# $(call system_package,BINARY,PACKAGE,WHAT): install a Debian package when its binary is
# missing. As root (CI) a failed install fails the build; without root it is said, and the
# tests that need it are skipped with that reason.
system_package = if test -x $(1); then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(2); \
	else echo "make: $(1) is missing and installing $(2) needs root: $(3) will be skipped"; fi

test: $(STAMP) browser nginx nchan caddy haproxy openssl postgres node-deps
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check service tests bench examples
	$(BIN)/ruff format --check service tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports  # the borders between the parts (pyproject.toml [tool.importlinter])

# genstream, aiohttp-sse, a raw aiohttp server and nginx with nchan side by side (README
# "Performance"); about ten minutes on two cores. bench-smoke is the same at tiny sizes
# (part of `test`).
bench: $(STAMP) nchan
	$(BIN)/python -m bench.run

bench-smoke: $(STAMP) nchan
	$(BIN)/pytest -q tests/test_bench_smoke.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache *.egg-info $(EXAMPLE)/*.egg-info

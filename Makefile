# One obvious way to do each thing. See README.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements/dev.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install tools test lint fmt lock clean run bench chaos rotate-bundle-key

# The development lock (every package pinned and hashed: pip refuses anything else), then the
# checkout itself for the `dark` entry point, as a separate command: an editable install has no hash.
$(STAMP): requirements/dev.txt pyproject.toml
	@echo "installing the Python packages into $(VENV) (the first time takes a few minutes)..."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The system tools the tests run (Chromium, redis-server, Postgres, Docker Compose v2): installed
# when missing (Debian packages need root), silent when present. See devtools/ensure-tools.sh.
tools: install
	@PYTHON=$(PY) bash devtools/ensure-tools.sh

test: install tools
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Re-resolve the two locks with hashes: requirements/runtime.txt from pyproject.toml's dependencies
# (what the image installs), requirements/dev.txt from those plus requirements/dev.in. Pins already
# in a lock are kept when they still fit; UPGRADE=1 moves every package to its newest release.
LOCK := $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock: install
	$(LOCK) pyproject.toml -o requirements/runtime.txt
	$(LOCK) pyproject.toml requirements/dev.in -o requirements/dev.txt

clean:
	rm -rf $(VENV) .run


# The whole local stack on its simulators, in the foreground (Ctrl-C stops it). See README.md.
run: install
	$(PY) -m devtools.run

# Benchmarks print ratios measured side by side in one run; results go in bench/RESULTS.md.
bench: install
	$(PY) -m bench.provision --n 50
	$(PY) -m bench.capacity --n 300
	$(PY) -m bench.reconcile --small 10000 --large 100000 --repeat 3
	$(PY) -m bench.gateway --rows 100000 --seconds 5 --rounds 3
	$(PY) -m bench.waits

# The chaos suite (docs/RELIABILITY.md): SEED replays a run, ROUNDS runs more.
chaos: install
	$(PY) -m tests.chaos $(if $(SEED),--seed $(SEED)) --rounds $(or $(ROUNDS),1)

# Rotate the bundle key and re-wrap every bundle (docs/OPERATIONS.md#rotating-the-bundle-key).
# Uses the environment's DATABASE_URL and Vault settings; VAULT_TOKEN must be an operator's token.
rotate-bundle-key: install
	$(PY) -m devtools.rotate_bundle_key

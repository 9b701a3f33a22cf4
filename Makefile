# segweb — the commands a newcomer can guess. `make run` and `make test` do all set-up themselves.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR := $(abspath $(or $(SEGWEB_DATA_DIR),var))
PORT ?= 8000
WORKERS ?= 1
export SEGWEB_DATA_DIR := $(DATA_DIR)

.PHONY: install install-dev run web worker migrate smoke test test-scale test-fast lint format bench weights export browser clean

install: $(VENV)/.installed  ## build .venv with the runtime dependencies

install-dev: $(VENV)/.installed-dev .venv-datumaro/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

# datumaro's pins conflict with the runtime's (pillow, pandas, opencv): the tests run it from
# its own venv (tests/test_dataset_tools.py).
.venv-datumaro/.installed: requirements-datumaro.txt
	$(PYTHON) -m venv .venv-datumaro
	.venv-datumaro/bin/python -m pip install --disable-pip-version-check -q -r requirements-datumaro.txt
	touch $@

$(DATA_DIR)/secret_key:
	mkdir -p $(DATA_DIR)
	umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(50))" > $@

# The local secret key is generated once and kept under the data directory, where the settings
# read it when DJANGO_SECRET_KEY is not set.

migrate: install $(DATA_DIR)/secret_key
	$(BIN)/python manage.py migrate --no-input

run: migrate  ## web + worker on 127.0.0.1:$PORT, SQLite + local files + file queue
	PORT=$(PORT) $(BIN)/python manage.py serve --concurrency $(WORKERS)

web: migrate
	$(BIN)/gunicorn segweb.wsgi --bind 127.0.0.1:$(PORT) --workers 2 --threads 4

worker: migrate
	$(BIN)/celery -A segweb worker --beat --concurrency $(WORKERS) --loglevel INFO \
		--schedule $(DATA_DIR)/celerybeat-schedule --without-mingle --without-gossip

# What a new user does, checked end to end with the runtime alone: `make run` on a fresh data
# directory, a user made the README's way, real photos through the upload form and the API, then
# Ctrl-C and nothing left running. CI runs it first, before the test tools are installed.
smoke: install  ## make run + real photos through the pages and the API, then a clean stop
	$(BIN)/python tests/smoke.py

browser:  ## Debian's Chromium for the browser tests (tests skip, saying so, without it)
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; } \
		|| echo "chromium could not be installed: the browser tests will be skipped"

test: install-dev browser  ## the whole suite, on the embedded defaults
	$(BIN)/python -m pytest -m "not scale"

# CI's second pass: the suite again on PostgreSQL, plus real gunicorn, Celery worker and beat
# processes on PostgreSQL, Redis and S3 (SeaweedFS, from the venv): load and fault tests. The
# engine and embedded-default tests ran in `make test`. Without PostgreSQL or Redis the tests
# that need them are skipped, naming the service.
TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
test-scale: install-dev
	SEGWEB_TEST_POSTGRES_URL=$(TEST_POSTGRES_URL) SEGWEB_TEST_REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/python -m pytest -m "scale or not slow" --ignore=tests/inference

test-fast: install-dev
	$(BIN)/python -m pytest -m "not slow"

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install-dev  ## engine and runtime benchmarks (figures go to docs/benchmarks.md)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/runtime.py

weights: install  ## download torchvision's Mask R-CNN COCO weights (needs internet)
	$(BIN)/python -m segmentation.inference.weights download

export: install  ## convert the models for OpenVINO ahead of time (workers also do it by themselves)
	$(BIN)/python -m segmentation.inference.export

clean:
	rm -rf $(VENV) .venv-datumaro .pytest_cache .ruff_cache

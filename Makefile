# `make test` and `make demo` create (or reuse) .venv and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fewsam-installed

.PHONY: test test-fast demo install clean test-browser screenshots

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# DURATIONS=0 lists every test's seconds (what `python tests/scheduling.py LOG` reads to refresh durations.json)
DURATIONS ?= 15

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -ra --durations=$(DURATIONS)

# The edit loop: everything but the tests marked `slow` (ten seconds or more: full-size models, notebooks, training
# runs, several compilations) and `browser`. `make test` (CI) still runs them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow and not browser" -ra

# The widgets in Voila + headless Chromium alone (also part of `make test`).
test-browser: $(STAMP)
	$(BIN)/python -m pytest tests/browser -m browser -ra

# docs/widget_*.png for the README and docs/screenshots.json, the record of what they were drawn from, which
# tests/browser/test_screenshot_record.py checks (runs the demo's job first; minutes on a CPU).
screenshots: $(STAMP)
	$(BIN)/python tests/browser/screenshots.py

demo: $(STAMP)
	$(BIN)/fewsam demo

clean:
	rm -rf $(VENV) .pytest_cache

# Two set-up commands: `make demo` and `make test`. Everything is installed into .venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean fashion-mnist chromium

install: $(STAMP)

# torch is installed first and on its own, pinned exactly, so pip takes the local CPU
# wheel; installed later (or pulled in by another package) it would fetch a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ssah demo

test: $(STAMP) chromium
	$(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info

# Fashion-MNIST for `ssah bench paper --dataset fashion-mnist` (Debian package, needs root).
fashion-mnist:
	apt-get update && apt-get install -y dataset-fashion-mnist

# Debian's chromium for the browser test (tests/test_browser.py drives it with Playwright's
# Python package; `playwright install` is never needed). Non-fatal: without it the test skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  (apt-get update && apt-get install -y --no-install-recommends chromium) || \
	  echo "chromium could not be installed; the browser test will be skipped"

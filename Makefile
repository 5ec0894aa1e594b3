# Set-up and the two everyday commands, from a fresh clone with Python 3.11+ and pip:
#   make study   creates .venv, installs the kit, runs the demo study (snakemake: Snakefile, config/demo.yaml) into runs/demo
#   make test    creates .venv, installs the kit, runs the tests
#   make help    lists the study's settings: the demo's and the full study's value, what each means, how to change one
# PyTorch's build is chosen for the machine (tools/install_torch.sh: CPU wheel without an NVIDIA
# GPU, the CUDA build from PyPI with one; TORCH_BUILD=cpu|cuda or TORCH_INDEX=<url> to choose).
# Settings: `make study SETTINGS='seeds=[0,1,2]'` runs `snakemake --config seeds=[0,1,2]` (config/demo.yaml lists them).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup study test test-fast clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt tools/install_torch.sh
	@echo "installing into $(VENV), quietly: PyTorch (CPU or CUDA build, said next), the requirements (MONAI, pandas, snakemake, pytest, ...), the kit"
	$(PYTHON) -m venv $(VENV)
	bash tools/install_torch.sh $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet -e .
	touch $@

study: setup
	$(BIN)/snakemake $(if $(SETTINGS),--config $(SETTINGS))

.PHONY: help
help: setup
	@$(BIN)/python -m kit.study

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest -q -n auto

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest -q -n auto -m "not slow"

clean-venv:
	rm -rf $(VENV)

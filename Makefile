# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
TORCH_PIN ?= torch==2.13.0
TRITON_PIN ?= triton==3.6.0

.PHONY: install demo test test-reference test-interpret bench gpu-check

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_PIN)"
	@$(PYTHON) -c "import triton" 2>/dev/null || $(PIP) install -q "$(TRITON_PIN)"
	$(PIP) install -q -e ".[test,demo]"

demo: install
	$(PYTHON) -m seeddrop demo

# The test command (.ci/run calls it): the suite on the PyTorch reference, then
# again with the Triton kernels running in Triton's CPU interpreter.
test: install
	$(MAKE) test-reference test-interpret

test-reference:
	$(PYTHON) -m pytest tests

test-interpret:
	TRITON_INTERPRET=1 $(PYTHON) -m pytest tests

bench: install
	$(PYTHON) -m seeddrop bench

gpu-check:
	bash scripts/gpu_check.sh

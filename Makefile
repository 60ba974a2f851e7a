# Sparrow — see README.md. Every target uses the project venv made by `make install`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PRESETS ?= small default large
JOBS ?= 2
B ?=
N ?= 1000
SEED ?= 1
FUZZ_PRESET ?= small
FPGA_PRESETS ?= small
FPGA_ROUTER ?= router1
FPGA_SPEEDS ?= 6
FPGA_SEEDS ?= 1
FPGA_BLOCKS ?= matmul vector load store
FPGA_BLOCK_PRESETS ?= small
comma := ,
space := $(empty) $(empty)

.PHONY: install test lint sim verilog bench fpga demo formal fuzz coverage clean help

help:
	@echo "make install   venv + every dependency (Python 3.11, Verilator from apt if missing)"
	@echo "make test      the test suite on $(JOBS) cores (fails on failures and on 'no tests')"
	@echo "make lint      ruff"
	@echo "make bench     every benchmark in bench/ (B=NAME for one); results in bench/results/"
	@echo "make verilog   build/sparrow_<preset>.v + .json (parameters, register map), lint-checked"
	@echo "make sim       long regression: system programs on every preset + every cocotb bench (WAVES=1 keeps FSTs)"
	@echo "make demo      digits MLP/CNN: ONNX -> compiler -> simulated RTL, accuracy and cycles (LIMIT=N images)"
	@echo "make fpga      yowasp synth + nextpnr-ecp5 per preset (FPGA_PRESETS=..., FPGA_ROUTER=router2, FPGA_SPEEDS="6 8", FPGA_SEEDS="1 2 3", FPGA_BLOCKS=..., FPGA_BLOCK_PRESETS="small default=load"), LUT/FF/DSP/BRAM/Fmax"
	@echo "make formal    formal properties (BMC / induction / cover, yosys-smtbmc + z3); DEPTH=N overrides depths"
	@echo "make fuzz      N random programs (default 1000, SEED=1) golden model vs Verilator; mismatches -> tests/fuzz_cases/"
	@echo "make coverage  Verilator line/toggle coverage per hdl block + ISA feature coverage -> build/coverage/"

$(VENV)/.installed: pyproject.toml
	@command -v verilator >/dev/null || { echo "installing verilator (apt)"; apt-get update -qq && apt-get install -y -qq verilator g++ make; }
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,tb,fpga]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -n $(JOBS) -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check sw hdl sim tb tests bench

bench: install
	$(PY) -m sparrow.bench $(B)

verilog: install
	$(PY) -m sparrow.hdl.export $(PRESETS)

sim: install
	$(PY) -m sparrow.sim.regress --presets $(subst $(space),$(comma),$(PRESETS)) --jobs $(JOBS) $(if $(WAVES),--waves,)

demo: install
	$(PY) examples/demo.py --backend verilator --preset small $(if $(LIMIT),--limit $(LIMIT),)

fpga: install
	SPARROW_FPGA_PRESETS="$(FPGA_PRESETS)" SPARROW_FPGA_ROUTER="$(FPGA_ROUTER)" SPARROW_FPGA_SPEEDS="$(FPGA_SPEEDS)" SPARROW_FPGA_SEEDS="$(FPGA_SEEDS)" SPARROW_FPGA_BLOCKS="$(FPGA_BLOCKS)" SPARROW_FPGA_BLOCK_PRESETS="$(FPGA_BLOCK_PRESETS)" $(PY) -m sparrow.bench fpga

formal: install
	$(PY) -m sparrow.sim.formal $(if $(DEPTH),--depth $(DEPTH),)

fuzz: install
	$(PY) -m sparrow.fuzz -n $(N) --seed $(SEED) --preset $(FUZZ_PRESET)

coverage: install
	$(PY) -m sparrow.sim.coverage --preset $(FUZZ_PRESET)

clean:
	rm -rf build .pytest_cache

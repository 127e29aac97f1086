# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flairkit-installed
DEMO_DIR ?= build/demo

.PHONY: install demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch/torchvision are pinned to the builds served from local disk; the rest from pyproject.toml,
# with the type checker and its stubs pinned by .ci/constraints.txt.
$(STAMP): pyproject.toml .ci/constraints.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c .ci/constraints.txt -e ".[train,dev]"
	touch $(STAMP)

install: $(STAMP)

# synth -> info -> show -> fit a small aerial + Sentinel-2 crop-type model on CPU -> test -> report
# -> map a synthetic zone with that model (COG, QGIS style, PNG preview).
demo: install
	$(VENV)/bin/flairkit synth $(DEMO_DIR)/data --seed 0 --aerial-px 256 --progress
	$(VENV)/bin/flairkit info $(DEMO_DIR)/data
	$(VENV)/bin/flairkit show $(DEMO_DIR)/data --png $(DEMO_DIR)/patch.png
	$(VENV)/bin/flairkit fit --config configs/demo.yaml --no-resume train.progress_bar=false
	$(VENV)/bin/flairkit test --config configs/demo.yaml train.progress_bar=false
	$(PY) -c "from flairkit.synth_zone import make_synthetic_zone; make_synthetic_zone('build/zone', aerial_px=256, patches=(4, 4))"
	$(VENV)/bin/flairkit map --config configs/zones/example.yaml runtime.progress=false output.on_existing=overwrite
	@echo "demo figure: $(abspath $(DEMO_DIR)/patch.png)"
	@echo "demo report: $(abspath $(DEMO_DIR)/run/report_test)"
	@echo "demo map (COG): $(abspath build/zone/map/cosia.tif)"
	@echo "demo map preview: $(abspath build/zone/map/cosia_preview.png)"

# Type check first (config: [tool.mypy] in pyproject.toml), then the tests.
test: install
	$(PY) -m mypy
	$(PY) -m pytest -q

bench: install
	$(PY) bench/loading.py

clean:
	rm -rf build .pytest_cache .mypy_cache

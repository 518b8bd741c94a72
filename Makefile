# advdpnp: every command a reader needs. Each target creates .venv and installs first when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PAPERMILL := $(BIN)/papermill --log-level WARNING
CIFAR_TAR ?= ../shared/data/cifar10-jpeg.tar.gz
DEMO_RUNS := runs/demo-adv_dpnp runs/demo-ce
CIFAR_RUNS := runs/cifar-cpu-ce runs/cifar-cpu-dpnp runs/cifar-cpu-adv_dpnp

.PHONY: install test test-slow demo outputs docs lab readme cifar-data cifar-cpu study-cpu paper-cpu check-sync clean

# Create the virtual environment and install the package with its pinned dependencies (once per pyproject change).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Regenerate README.md from nbs/index.ipynb.
readme: $(STAMP)
	$(BIN)/jupyter nbconvert --to markdown --log-level WARN --stdout nbs/index.ipynb > README.md

# nbdev-clean, nbdev-export and the README build must leave a committed tree unchanged.
check-sync: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash .ci/check_sync.sh

# The notebooks' tests and every pytest test but the slow scenarios (about 5 min on 2 cores, after the install).
test: $(STAMP) check-sync
	$(BIN)/nbdev-test --n-workers 2
	@set +e; $(BIN)/python -m pytest -m 'not slow' --junitxml=$(VENV)/pytest.xml; status=$$?; \
	  $(BIN)/python .ci/summary.py $(VENV)/pytest.xml; exit $$status

# The slow scenario tests: the paper notebook's micro grid, the demo's claims (about 5 min on 2 cores, after the install).
test-slow: $(STAMP)
	@set +e; $(BIN)/python -m pytest -m slow --junitxml=$(VENV)/pytest-slow.xml; status=$$?; \
	  $(BIN)/python .ci/summary.py $(VENV)/pytest-slow.xml; exit $$status

# Adv-DPNP and a standard model on the bundled digits set (CPU, no network).
demo: $(STAMP)
	mkdir -p runs
	$(PAPERMILL) nbs/train.ipynb runs/demo-adv_dpnp.ipynb -p dataset digits -p preset smoke -p method adv_dpnp -p name demo-adv_dpnp -p overwrite True
	$(PAPERMILL) nbs/train.ipynb runs/demo-ce.ipynb -p dataset digits -p preset smoke -p method ce -p name demo-ce -p overwrite True
	$(BIN)/python -c "from advdpnp.runs import compare_runs; print(compare_runs('$(DEMO_RUNS)'.split()).to_string(index=False))"

data/cifar10-jpeg:
	mkdir -p data
	tar xzf $(CIFAR_TAR) -C data

# Unpack the offline CIFAR-10 JPEG copy into data/cifar10-jpeg (development data, not for reporting CIFAR-10 results).
cifar-data: data/cifar10-jpeg

# ce, dpnp and adv_dpnp with PreAct ResNet-18 (width 16) on a CIFAR-10 subset from the offline JPEG copy (CPU).
cifar-cpu: $(STAMP) data/cifar10-jpeg
	mkdir -p runs
	for method in ce dpnp adv_dpnp; do \
	  $(PAPERMILL) nbs/train.ipynb runs/cifar-cpu-$$method.ipynb -p dataset imagefolder -p data_dir data/cifar10-jpeg \
	    -p preset smoke -p method $$method -p name cifar-cpu-$$method -p overwrite True || exit 1; \
	done
	$(BIN)/python -c "from advdpnp.runs import compare_runs; print(compare_runs('$(CIFAR_RUNS)'.split()).to_string(index=False))"

# The recipe and prototype-head study on a validation split (about 1 h on 2 cores) into paper_figures/study-cpu/; resumes.
study-cpu: $(STAMP) data/cifar10-jpeg
	mkdir -p runs
	$(PAPERMILL) nbs/study.ipynb runs/study-cpu.ipynb -p scale cpu -p workers 2

# Every table and figure at CPU scale (2 h 25 min on 2 cores, two runs at a time, bf16 training) into paper_figures/cpu/; a stopped run resumes.
paper-cpu: $(STAMP) data/cifar10-jpeg
	mkdir -p runs
	$(PAPERMILL) nbs/paper.ipynb runs/paper-cpu.ipynb -p scale cpu -p workers 2

# Re-run the component notebooks in place so that their saved figures and tables match the code (minutes on 2 cores).
outputs: $(STAMP)
	cd nbs && for nb in [0-9][0-9]*_*.ipynb; do \
	  TQDM_DISABLE=1 ../$(BIN)/jupyter nbconvert --to notebook --execute --inplace --log-level ERROR \
	    --ExecutePreprocessor.timeout=1800 $$nb || exit 1; done
	$(BIN)/nbdev-clean

# Every notebook rendered to HTML (nbconvert, not executed) into _docs/, with _docs/index.html.
docs: $(STAMP)
	$(BIN)/python .ci/docs.py

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=. $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

clean:
	rm -rf runs _proc _docs .pytest_cache

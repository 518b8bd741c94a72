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

.PHONY: install test test-slow demo outputs docs lab readme cifar-data cifar-cpu study-cpu paper-cpu check-sync clean gpu-carry gpu-collect frontier-cpu slurm-up slurm-down test-slurm

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

# The notebooks' tests and every pytest test but the slow and SLURM ones (from a fresh clone, install included: 9 min on 2 idle cores of an AVX512-BF16 CPU, 18 min on an AVX2-only one).
test: $(STAMP) check-sync
	$(BIN)/nbdev-test --n-workers 2
	@set +e; $(BIN)/python -m pytest -m 'not slow and not slurm' --junitxml=$(VENV)/pytest.xml; status=$$?; \
	  $(BIN)/python .ci/summary.py $(VENV)/pytest.xml; exit $$status

# The slow scenario tests: the paper notebook's micro grid, the demo's claims (about 6 min on 2 idle cores, after the install).
test-slow: $(STAMP)
	@set +e; $(BIN)/python -m pytest -m slow --junitxml=$(VENV)/pytest-slow.xml; status=$$?; \
	  $(BIN)/python .ci/summary.py $(VENV)/pytest-slow.xml; exit $$status

# A one-node SLURM on this machine (Debian 12, as root; 10 s the first time) for `make test-slurm`; `make slurm-down` stops it.
slurm-up:
	bash .ci/slurm_up.sh

slurm-down:
	bash .ci/slurm_up.sh down

# The grid on a real SLURM (submitit): micro grid against a local run, requeue and resume, failures (about 3 min on 2 idle cores, after slurm-up).
test-slurm: $(STAMP)
	@set +e; $(BIN)/python -m pytest -m slurm tests/test_slurm.py --junitxml=$(VENV)/pytest-slurm.xml; status=$$?; \
	  $(BIN)/python .ci/summary.py $(VENV)/pytest-slurm.xml; exit $$status

# Adv-DPNP and a standard model on the bundled digits set (CPU, no network).
demo: $(STAMP)
	$(BIN)/advdpnp train --dataset digits --preset smoke --method adv_dpnp --name demo-adv_dpnp --overwrite True
	$(BIN)/advdpnp train --dataset digits --preset smoke --method ce --name demo-ce --overwrite True
	@$(BIN)/python -c "from advdpnp.runs import comparison_table; print(comparison_table('$(DEMO_RUNS)'.split()).to_string(index=False))"

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

# Every table and figure at CPU scale (2 h 25 min on 2 cores with bf16 training on an AVX512-BF16 CPU, before the soundness reports were added;
# each CIFAR run's report took 15-26 min on one shared core, roughly 1 h 15 min more for the grid) into paper_figures/cpu/; a stopped run resumes.
paper-cpu: $(STAMP) data/cifar10-jpeg
	mkdir -p runs
	$(PAPERMILL) nbs/paper.ipynb runs/paper-cpu.ipynb -p scale cpu -p workers 2

# Claim 1 against the baselines' trade-off frontier at CPU scale (09a_grid, 09e_frontier): TRADES beta, PGD-AT's
# training eps and Adv-DPNP's beta, three seeds of each main-table point; reuses the CPU table's run folders (resumes).
# Its 11 runs of its own took 546 min of run time (about 4.5 h at two at a time; 3.8 h at the pace of runs with the cores to themselves, 38-45 min each).
frontier-cpu: $(STAMP) data/cifar10-jpeg
	mkdir -p runs
	$(PAPERMILL) nbs/paper.ipynb runs/frontier-cpu.ipynb -p scale cpu -p workers 2 -p parts frontier -p figures_dir paper_figures/frontier-cpu

# The folder a GPU device session carries (at most 64 MiB; listed in .git/info/exclude): pyautoattack without its
# 44 MB example checkpoint, tqdm and fastcore (the GPU machine has torch, torchvision, numpy, pandas, seaborn and
# scikit-learn, and no network), and the CIFAR-10 JPEG tarball. The device command is in README (A session on a GPU).
CARRY := carry
gpu-carry: $(STAMP)
	rm -rf $(CARRY) && mkdir -p $(CARRY)/site
	grep -qxF '$(CARRY)/' .git/info/exclude 2>/dev/null || echo '$(CARRY)/' >> .git/info/exclude
	$(BIN)/python -c "import shutil, pathlib, pyautoattack, tqdm, fastcore; \
	  [shutil.copytree(pathlib.Path(m.__file__).parent, pathlib.Path('$(CARRY)/site', m.__name__), \
	   ignore=shutil.ignore_patterns('model_test.pt', '__pycache__')) for m in (pyautoattack, tqdm, fastcore)]"
	cp $(CIFAR_TAR) $(CARRY)/cifar10-jpeg.tar.gz
	du -shc $(CARRY)/site/* $(CARRY)/cifar10-jpeg.tar.gz
	@size=$$(du -sb $(CARRY) | cut -f1); test $$size -le 67108864 || { echo "$(CARRY)/ is $$size bytes: over the device tool's 64 MiB carry limit"; exit 1; }

# File what a device session returned (FROM: the folder holding session.json) under paper_figures/; REPLACE=1: move a filed run of another configuration to superseded/<the session that filed it>/.
gpu-collect: $(STAMP)
	test -n "$(FROM)" || { echo 'make gpu-collect FROM=<folder with session.json>'; exit 2; }
	$(BIN)/python -m advdpnp.device_session collect $(FROM) $(if $(filter 1,$(REPLACE)),--replace)

# Re-run the component notebooks in place so that their saved figures and tables match the code (minutes on 2 cores).
outputs: $(STAMP)
	for nb in nbs/[0-9][0-9]*_*.ipynb; do $(BIN)/python .ci/execute_notebooks.py $$nb || exit 1; done
	$(BIN)/nbdev-clean

# Every notebook rendered to HTML (nbconvert, not executed) into _docs/, with _docs/index.html.
docs: $(STAMP)
	$(BIN)/python .ci/docs.py

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=. $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

clean:
	rm -rf runs _proc _docs .pytest_cache

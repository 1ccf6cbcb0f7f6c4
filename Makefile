# Every target does its own set-up: a fresh machine needs only Python 3.11.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
OVIS := $(VENV)/bin/ovis
PYTEST_ARGS ?=
# compiled bytecode is cached: tests start many Python processes (papermill kernels, torchrun)
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo test test-slow bench bench-long lab clean

setup: $(VENV)/.synced

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet uv

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --quiet --python $(PYTHON)
	touch $@

demo: setup
	$(OVIS) demo

test: setup
	$(VENV)/bin/ruff check ovis tests benchmarks tools
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-slow: setup
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS)

bench: setup
	for script in benchmarks/*.py; do \
	  case $$script in */cpl_pseudo_chance.py|*/cpl_shape_from_scratch.py|*/cpl_teacher_recall.py|*/cpl_seed_margin.py|*/cpl_grounding_zero_shot.py|*/ggn_seed_margin.py|*/ggn_pseudo_ceiling.py|*/ggn_proposal_recall.py|*/ggn_oln_ranker.py|*/ggn_pseudo_errors.py|*/ggn_unseen_scores.py|*/seed_study.py|*/gt_box_scores.py) continue;; esac; $(VENV)/bin/python $$script || exit 1; done
	# the scripts below read a CPL / GGN run, made with the threads `ovis demo` gives each run (same numbers)
	export OMP_NUM_THREADS=$$($(VENV)/bin/python -c "from ovis.demo import threads_per_run; print(threads_per_run(2))"); \
	$(OVIS) reproduce demo_cpl --stages splits,teacher,pseudo && \
	$(VENV)/bin/python benchmarks/cpl_pseudo_chance.py --run-dir runs/demo_cpl && \
	$(VENV)/bin/python benchmarks/cpl_teacher_recall.py --run-dir runs/demo_cpl && \
	$(VENV)/bin/python benchmarks/cpl_grounding_zero_shot.py --run-dir runs/demo_cpl && \
	$(VENV)/bin/python benchmarks/cpl_shape_from_scratch.py --run-dir runs/demo_cpl && \
	$(VENV)/bin/python benchmarks/cpl_seed_margin.py --run-dir runs/demo_cpl --seeds 0,1,2 && \
	$(OVIS) reproduce demo_ggn --stages splits,teacher,pseudo && \
	$(VENV)/bin/python benchmarks/ggn_pseudo_errors.py --run-dir runs/demo_ggn && \
	$(VENV)/bin/python benchmarks/ggn_seed_margin.py --run-dir runs/demo_ggn --seeds 0,1,2 && \
	$(VENV)/bin/python benchmarks/ggn_pseudo_ceiling.py --run-dir runs/demo_ggn --seeds 0,1,2 && \
	$(OVIS) reproduce demo_ggn --stages student && \
	$(VENV)/bin/python benchmarks/ggn_proposal_recall.py --run-dir runs/demo_ggn && \
	$(VENV)/bin/python benchmarks/ggn_unseen_scores.py --run-dir runs/demo_ggn && \
	$(VENV)/bin/python benchmarks/ggn_oln_ranker.py --run-dir runs/demo_ggn --oln runs/demo_ggn/oln_baseline/model_final.pth --out runs/demo_ggn/oln_ranker/demo && \
	$(VENV)/bin/python benchmarks/ggn_seed_margin.py --run-dir runs/demo_ggn --seeds 0,1,2 --out runs/demo_ggn/oln_480 $(OLN_480) && \
	$(VENV)/bin/python benchmarks/ggn_proposal_recall.py --run-dir runs/demo_ggn/oln_480/seed0 $(OLN_480) && \
	$(VENV)/bin/python benchmarks/ggn_oln_ranker.py --run-dir runs/demo_ggn --oln runs/demo_ggn/oln_480/seed0/oln_baseline/model_final.pth --out runs/demo_ggn/oln_ranker/oln_480 && \
	$(VENV)/bin/python benchmarks/ggn_seed_margin.py --run-dir runs/demo_ggn --seeds 0,1,2 --out runs/demo_ggn/oln_bound_480 $(OLN_480) $(BOUND) && \
	$(VENV)/bin/python benchmarks/ggn_proposal_recall.py --run-dir runs/demo_ggn/oln_bound_480/seed0 $(OLN_480) $(BOUND) && \
	$(VENV)/bin/python benchmarks/ggn_oln_ranker.py --run-dir runs/demo_ggn --out runs/demo_ggn/oln_ranker/bound_480 \
	  $(foreach k,0 1 2,--oln runs/demo_ggn/oln_bound_480/seed$(k)/oln_baseline/model_final.pth) && \
	$(VENV)/bin/python benchmarks/ggn_seed_margin.py --run-dir runs/demo_ggn/oln_ranker/bound_480/0 --seeds 0,1,2

# the OLN study (benchmarks/README.md, ggn_seed_margin with the bound): four times demo_ggn's student
# schedule, with and without OLN's objectness sample bounded at one negative per positive; then each OLN
# on base GT as upstream's ranker of the pseudo masks, and GGN trained on the pseudo masks of the first
# bounded one
OLN_480 = --set student.max_iter=480 --set=student.steps=[384] --set student.checkpoint_period=240
BOUND = --set model.oln_objectness_neg_pos_ub=1

# CPL at the budget where its effect shows (about 45 min on one core: the run, then three students), then
# GGN with its networks at twice the input size (the run, then three seeds of detectors, then of students
# trained twice as long)
bench-long: setup
	export OMP_NUM_THREADS=1; \
	$(OVIS) reproduce demo_cpl_long --stages splits,teacher,pseudo && \
	$(VENV)/bin/python benchmarks/cpl_grounding_zero_shot.py --recipe demo_cpl_long --run-dir runs/demo_cpl_long && \
	$(VENV)/bin/python benchmarks/cpl_grounding_zero_shot.py --recipe demo_cpl_long --run-dir runs/demo_cpl_long --model teacher && \
	$(VENV)/bin/python benchmarks/cpl_seed_margin.py --recipe demo_cpl_long --run-dir runs/demo_cpl_long --seeds 0,1,2 && \
	$(OVIS) reproduce demo_ggn_long --stages splits,teacher,pseudo && \
	$(VENV)/bin/python benchmarks/ggn_pseudo_errors.py --recipe demo_ggn_long --run-dir runs/demo_ggn_long && \
	$(VENV)/bin/python benchmarks/ggn_seed_margin.py --recipe demo_ggn_long --run-dir runs/demo_ggn_long --seeds 0,1,2 && \
	$(VENV)/bin/python benchmarks/ggn_seed_margin.py --recipe demo_ggn_long --run-dir runs/demo_ggn_long --seeds 0,1,2 \
	  --out runs/demo_ggn_long/seed_margin_240 --without-oln --set student.max_iter=240 --set=student.steps=[192] \
	  --set student.checkpoint_period=120 && \
	for k in 0 1 2; do \
	  $(VENV)/bin/python benchmarks/ggn_unseen_scores.py --recipe demo_ggn_long --run-dir runs/demo_ggn_long/seed_margin/seed$$k && \
	  $(VENV)/bin/python benchmarks/ggn_unseen_scores.py --recipe demo_ggn_long --run-dir runs/demo_ggn_long/seed_margin_240/seed$$k \
	    --set student.max_iter=240 --set=student.steps=[192] --set student.checkpoint_period=120 || exit 1; done

lab: setup
	$(OVIS) lab

clean:
	rm -rf runs demo_data .pytest_cache

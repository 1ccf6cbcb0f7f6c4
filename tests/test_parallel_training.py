"""``launch.workers``: when a pipeline stage's training stages train in worker processes (tests/test_ggn.py
trains GGN's four detectors so and compares the checkpoints with a one-process run)."""

from __future__ import annotations

import pytest

from ovis.config import RecipeError
from ovis.methods import load_recipe
from ovis.methods.train import training_workers


def test_launch_workers_must_be_at_least_one():
    with pytest.raises(RecipeError, match=r"demo_ggn\.launch: workers=0 must be ≥ 1"):
        load_recipe("demo_ggn", ["launch.workers=0"])


def test_training_stages_go_to_workers_only_with_the_local_launcher_on_cpu():
    recipe = load_recipe("demo_ggn", ["launch.workers=3", "launch.device=cpu"])
    assert training_workers(recipe, 4, {}) == 3
    assert training_workers(recipe, 2, {}) == 2  # one process per training stage at most
    assert training_workers(recipe, 1, {}) == 1
    assert training_workers(recipe, 4, {"launcher": "torchrun"}) == 1
    assert training_workers(load_recipe("demo_ggn", ["launch.workers=1"]), 4, {}) == 1
    # not resolved for a cluster launcher (no CUDA here: resolving "cuda" would raise)
    assert training_workers(load_recipe("demo_ggn", ["launch.workers=3", "launch.device=cuda"]), 4, {"launcher": "slurm"}) == 1


def test_a_dead_worker_pool_is_explained_with_its_setting():
    from concurrent.futures.process import BrokenProcessPool

    from ovis.engine.workers import explain_broken_pool

    with pytest.raises(RuntimeError, match=r"^student: a training worker process died\. .*__main__.*lower launch\.workers$"):
        with explain_broken_pool("student: a training worker process died", "lower launch.workers"):
            raise BrokenProcessPool("gone")

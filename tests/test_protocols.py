"""The protocol registry (ovis.protocols): one entry per name with its split and evaluation settings, looked up
by get_protocol for splits, evaluation, the recipe checks and the commands."""

from __future__ import annotations

import pytest

from ovis.cli import main as ovis
from ovis.config import RecipeError, load_recipe
from ovis.data.splits import build_splits, load_partition
from ovis.protocols import OPEN_WORLD_BUDGETS, PROTOCOLS, get_protocol, protocol_names

EVAL_ONLY = ("coco", "coco_voc_nonvoc_ldet")


def test_every_protocol_is_evaluated_and_all_but_the_eval_only_ones_build_splits():
    assert protocol_names("eval") == tuple(PROTOCOLS)
    assert set(protocol_names("splits")) == set(PROTOCOLS) - set(EVAL_ONLY)
    assert all(name == p.name for name, p in PROTOCOLS.items())


def test_one_entry_holds_both_uses_settings():
    voc = get_protocol("coco_voc_nonvoc")
    assert (voc.kind, voc.splits.resource, voc.splits.base_key, voc.splits.min_train_side) == (
        "open_world", "coco_voc_nonvoc.json", "voc", 32)
    assert (voc.evaluation.split_resource, voc.evaluation.max_dets) == ("coco_voc_nonvoc.json", OPEN_WORLD_BUDGETS)
    uvo = get_protocol("coco_uvo")
    assert uvo.splits.val_all_unseen and uvo.evaluation.gt_all_unseen and uvo.evaluation.split_resource is None
    assert get_protocol("coco_voc_nonvoc_ldet").evaluation.max_dets == (10, 20, 30, 50, 100)


def test_an_eval_only_protocol_has_no_split_settings_and_builds_no_splits():
    with pytest.raises(KeyError, match=r"protocol 'coco' builds no splits; those that do: coco_ovr_48_17, "):
        get_protocol("coco").splits
    with pytest.raises(KeyError, match="builds no splits"):
        load_partition("coco_voc_nonvoc_ldet")
    with pytest.raises(KeyError, match="builds no splits"):
        build_splits("coco", {}, {})
    with pytest.raises(KeyError, match=r"unknown protocol 'coco_48'; known: coco, coco_ovr_48_17, "):
        get_protocol("coco_48")


def test_the_recipe_accepts_an_eval_only_protocol_for_eval_and_not_for_splits():
    assert load_recipe("demo_ggn", ["eval.protocol=coco_voc_nonvoc_ldet"]).eval.protocol == "coco_voc_nonvoc_ldet"
    with pytest.raises(RecipeError, match=r"demo_ggn\.splits: protocol='coco' must be one of "):
        load_recipe("demo_ggn", ["splits.protocol=coco"])


def test_the_commands_offer_each_use_its_protocols(capsys):
    with pytest.raises(SystemExit):
        ovis(["splits", "--protocol", "coco", "--train-instances", "t.json", "--val-instances", "v.json", "--out", "o"])
    assert "invalid choice: 'coco'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ovis(["eval", "--help"])
    assert "coco_voc_nonvoc_ldet" in capsys.readouterr().out

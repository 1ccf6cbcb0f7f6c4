"""Recipes: packaged recipes resolve, demo recipes differ from paper recipes only where shrunk; each method's
own sections are built from its declaration, and a recipe's stage hashes stay what they were where its
sections did not change."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

import ovis.config
from ovis.config import Recipe, RecipeError, TrainConfig, list_recipes
from ovis.methods import load_recipe, method_sections, recipe_from_dict, training_stage
from ovis.methods.cpl.config import GroundingConfig, StudentConfig
from ovis.methods.ggn.config import PseudoConfig as GroupingConfig
from ovis.runs import stage_hash


def test_every_packaged_recipe_resolves():
    names = list_recipes()
    assert {"cpl_coco", "ggn_coco", "oln_box_coco", "demo_cpl", "demo_ggn"} <= set(names)
    for name in names:
        r = load_recipe(name)
        assert r.name == name and len(r.hash()) == 12


def test_paper_settings_are_pinned():
    cpl = load_recipe("cpl_coco")
    assert (cpl.model.arch, cpl.teacher.lr, cpl.teacher.max_iter, cpl.teacher.steps) == ("c4", 0.0005, 90000, [60000, 80000])
    assert (cpl.model.background_weight, cpl.model.box_positive_fraction) == (0.2, 1.0)
    assert cpl.student.freeze == ["backbone", "rpn"] and cpl.student.uncertainty_train_iter == 10000
    ggn = load_recipe("ggn_coco")
    assert (ggn.model.arch, ggn.model.aspect_ratios, ggn.model.box_detections_per_img) == ("fpn", [1.0], 1500)
    assert (ggn.pseudo.top_k, ggn.pseudo.nms_thresh, ggn.splits.protocol) == (3, 0.2, "coco_voc_nonvoc")
    assert load_recipe("oln_box_coco").model.heads == "oln"


def test_demo_recipe_extends_the_paper_recipe():
    paper, demo = load_recipe("cpl_coco").to_dict(), load_recipe("demo_cpl").to_dict()
    assert demo["model"]["background_weight"] == paper["model"]["background_weight"]
    assert demo["teacher"]["freeze"] == paper["teacher"]["freeze"]  # inherited, not restated
    assert (demo["model"]["backbone"], demo["model"]["backbone_weights"]) == ("efficientnet_lite0", "imagenet")
    assert demo["data"]["demo"] is True
    # AP reads up to 100 detections per image (COCOeval's maxDets): a smaller cap cuts the low-scored novel ones
    assert demo["eval"]["detections_per_img"] == paper["eval"]["detections_per_img"] == 100


def test_long_cpl_demo_changes_only_data_scale_resolution_and_schedules():
    short, long = load_recipe("demo_cpl").to_dict(), load_recipe("demo_cpl_long").to_dict()
    changed = {(section, key) for section, values in long.items() if isinstance(values, dict)
               for key, value in values.items() if short[section][key] != value}
    assert changed == {
        ("data", "root"), ("data", "demo_num_train"),
        ("model", "min_size"), ("model", "max_size"), ("model", "anchor_sizes"),
        ("grounding", "max_iter"), ("grounding", "steps"), ("grounding", "checkpoint_period"),
        ("grounding", "cache_features"), ("teacher", "max_iter"), ("teacher", "steps"),
        ("teacher", "checkpoint_period"), ("student", "max_iter"),
        ("student", "steps"), ("student", "uncertainty_train_iter"), ("student", "checkpoint_period"),
        ("eval", "max_images")}
    assert long["model"]["anchor_sizes"] == [2 * a for a in short["model"]["anchor_sizes"]]  # objects twice as large
    assert long["data"]["root"] != short["data"]["root"]  # its 1200 images do not replace the 240 of make demo


def test_long_ggn_demo_changes_only_the_input_size_of_its_networks():
    short, long = load_recipe("demo_ggn").to_dict(), load_recipe("demo_ggn_long").to_dict()
    changed = {(section, key) for section, values in long.items() if isinstance(values, dict)
               for key, value in values.items() if short[section].get(key) != value}
    assert changed == {("model", "affinity_input_scale"), ("model", "min_size"), ("model", "max_size"),
                       ("model", "anchor_sizes")}
    assert long["model"]["affinity_input_scale"] * short["model"]["min_size"] == long["model"]["min_size"]
    assert long["model"]["anchor_sizes"] == [2 * a for a in short["model"]["anchor_sizes"]]
    assert "affinity_input_scale" not in short["model"]  # null: the images' own size, as upstream


def test_dotted_overrides_are_typed_and_change_the_hash():
    base = load_recipe("demo_ggn")
    r = load_recipe("demo_ggn", ["student.max_iter=7", "student.lr=1", "model.anchor_sizes=[8, 16]"])
    assert (r.student.max_iter, r.student.lr, r.model.anchor_sizes) == (7, 1.0, [8, 16])
    assert isinstance(r.student.lr, float) and r.hash() != base.hash()
    assert load_recipe("demo_ggn", {"student.max_iter": 7}).hash() == load_recipe("demo_ggn", ["student.max_iter=7"]).hash()


@pytest.mark.parametrize(
    "override, message",
    [
        (["teacher.maxiter=3"], r"demo_cpl\.teacher: unknown key\(s\) \['maxiter'\]"),
        (["teacher.max_iter=ten"], r"demo_cpl\.teacher\.max_iter: expected int, got 'ten'"),
        (["teacher.steps=5"], r"expected a list"),
        (["nosuchsection.x=1"], r"unknown key\(s\) \['nosuchsection'\]"),
        (["teacher.max_iter"], r"expected SECTION\.KEY=VALUE"),
        (["teacher.max_iter=-5"], r"demo_cpl\.teacher: max_iter=-5 must be ≥ 1"),
        (["student.lr=.nan"], r"demo_cpl\.student: lr=nan must be a finite number > 0"),
        (["grounding.batch_size=0"], r"demo_cpl\.grounding: batch_size=0 must be ≥ 1"),
        (["teacher.flip_prob=1.5"], r"flip_prob=1\.5 must be in \[0, 1\]"),
        (["student.steps=[-1]"], r"steps=\[-1\] must be iterations ≥ 0"),
        (["teacher.clip_grad_norm=0"], r"clip_grad_norm=0\.0 must be > 0 or null"),
        (["method=sam"], r"demo_cpl: method='sam' must be one of cpl, ggn, oln"),
        (["splits.protocol=coco_48"], r"demo_cpl\.splits: protocol='coco_48' must be one of .*coco_ovr_48_17"),
        (["eval.iou_types=[mask]"], r"demo_cpl\.eval: iou_types=\['mask'\] must be a non-empty list of segm, bbox"),
        (["model.backbone=resnet51"], r"demo_cpl\.model: backbone='resnet51' must be one of resnet18, "),
        (["model.rpn_nms_thresh=1.5"], r"rpn_nms_thresh=1\.5 must be in \[0, 1\]"),
        (["model.affinity_input_scale=0"], r"demo_cpl\.model: affinity_input_scale=0\.0 must be a finite number > 0 or null"),
        (["pseudo.vocabulary=coco"], r"demo_cpl\.pseudo: vocabulary='coco' must be one of lvis, dataset"),
        (["student.lambda_pseudo=-1"], r"demo_cpl\.student: lambda_pseudo=-1\.0 must be a finite number ≥ 0"),
        (["pseudo.workers=2"], r"demo_cpl\.pseudo: unknown key\(s\) \['workers'\]; valid keys: \['max_images', 'shards', "
                               r"'vocabulary'\]"),
        (["pseudo.max_images=0"], r"max_images=0 must be ≥ 1 or null"),
        (["launch.device=tpu"], r"demo_cpl\.launch: device='tpu' must be auto, cpu, cuda or cuda:N"),
        (["teacher.amp=fp8"], r"demo_cpl\.teacher: amp='fp8' must be one of none, bf16, fp16"),
        (["teacher.max_iter=[1,"], r"value is not valid YAML at line 1, column \d+: "),
    ],
)
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("demo_cpl", override)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(RecipeError, match="packaged recipes: .*demo_cpl"):
        load_recipe("nope")


def test_recipe_file_extends_relative_parent_and_saves_round_trip(tmp_path):
    (tmp_path / "parent.yaml").write_text("method: ggn\nteacher: {max_iter: 11, lr: 0.5}\n")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\nteacher: {max_iter: 12}\n")
    r = load_recipe(tmp_path / "child.yaml")
    assert (r.method, r.teacher.max_iter, r.teacher.lr) == ("ggn", 12, 0.5)
    saved = r.save(tmp_path / "run")
    text = saved.read_text()
    assert r.hash() in text.splitlines()[0]
    assert recipe_from_dict(yaml.safe_load(text)).hash() == r.hash()
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "loop.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        (["pseudo.workers=-2"], r"demo_ggn\.pseudo: workers=-2 must be ≥ 0 or null"),
        (["pseudo.edge_thresh=2"], r"demo_ggn\.pseudo: edge_thresh=2\.0 must be in \[-1, 1\]"),
        (["pseudo.top_k=true"], r"demo_ggn\.pseudo\.top_k: expected int, got True"),
        (["pseudo.vocabulary=lvis"], r"demo_ggn\.pseudo: unknown key\(s\) \['vocabulary'\]"),
        (["student.uncertainty=false"], r"demo_ggn\.student: unknown key\(s\) \['uncertainty'\]"),
        (["grounding.max_iter=5"], r"demo_ggn: unknown key\(s\) \['grounding'\]: method 'ggn' owns the sections "
                                   r"teacher, pseudo, student; valid keys: \['data', 'description', 'eval'"),
    ],
)
def test_a_methods_sections_are_its_own(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("demo_ggn", override)


def test_each_method_builds_the_sections_it_declares():
    cpl, ggn = load_recipe("demo_cpl"), load_recipe("demo_ggn")
    assert list(cpl.sections) == ["grounding", "teacher", "pseudo", "student"] == list(method_sections("cpl"))
    assert (type(cpl.grounding), type(cpl.teacher), type(cpl.student)) == (GroundingConfig, TrainConfig, StudentConfig)
    assert cpl.pseudo is cpl.sections["pseudo"] and not hasattr(cpl.pseudo, "top_k")
    assert (type(ggn.pseudo), type(ggn.student)) == (GroupingConfig, TrainConfig) and ggn.pseudo.top_k == 3
    assert "grounding" not in ggn.to_dict() and list(ggn.to_dict())[6:9] == ["teacher", "pseudo", "student"]
    with pytest.raises(AttributeError, match="recipe 'demo_ggn': method 'ggn' has no section 'grounding'; its own "
                                             "sections: teacher, pseudo, student"):
        ggn.grounding
    # built directly, a recipe gets its method's sections that it does not name, and refuses others
    assert Recipe(method="ggn", sections={"student": TrainConfig(max_iter=3)}).student.max_iter == 3
    assert Recipe(method="ggn").pseudo == GroupingConfig()
    with pytest.raises(RecipeError, match=r"recipe r: unknown key\(s\) \['grounding'\]: method 'ggn' owns"):
        Recipe(name="r", method="ggn", sections={"grounding": GroundingConfig()})


def test_the_config_layer_needs_the_methods_lookup(monkeypatch):
    monkeypatch.setattr(ovis.config, "_method_sections", None)
    with pytest.raises(RecipeError, match="the sections of method 'ggn' are unknown here: the methods layer declares them"):
        ovis.config.load_recipe("demo_ggn")


# the stage hashes at 3a34a7d, before the methods' sections moved into their packages: the stages whose sections
# kept every field keep their hash (CPL's splits and teacher, GGN's splits); the later ones re-run once
# (docs/README.md#recipe-migration)
UNCHANGED = {
    "demo_cpl": {"splits": "aa605a192405", "teacher": "9d470137dfdb"},
    "cpl_coco": {"splits": "b9024225d4b5", "teacher": "ff337054066d"},
    "demo_cpl_long": {"splits": "ab61a0e67c30", "teacher": "988ee4b24646"},
    "demo_ggn": {"splits": "b767f99a179f"},
    "ggn_coco": {"splits": "d6a64b3e728e"},
    "oln_box_coco": {"splits": "7c0452d773eb"},
}
GROUNDING = {"demo_cpl": "cd52d5c425b9", "cpl_coco": "ba2757984f86", "demo_cpl_long": "d3e805e8ec56"}
CHANGED = {"demo_cpl": {"pseudo": "e35b09b19eb8", "student": "3f870988f50c"},
           "demo_ggn": {"teacher": "65b3275f29ae", "pseudo": "bfa3b41ef9e9", "student": "62dbf151664e"}}


@pytest.mark.parametrize("name", sorted(UNCHANGED))
def test_stage_hashes_of_unchanged_sections_are_kept(name):
    r = load_recipe(name)
    assert {stage: stage_hash(r, stage) for stage in UNCHANGED[name]} == UNCHANGED[name]
    for stage, old in CHANGED.get(name, {}).items():
        assert stage_hash(r, stage) != old
    if name in GROUNDING:  # the teacher stage's checkpoints, grounding's and the teacher's, keep theirs
        assert training_stage("grounding").recipe_hash(r) == GROUNDING[name]
        assert training_stage("teacher").recipe_hash(r) == UNCHANGED[name]["teacher"]


def test_reading_a_recipe_imports_no_torch():
    # every notebook and command reads its recipe first; the splits and curves notebooks need no torch
    code = ("import sys\nfrom ovis.methods import load_recipe\n"
            "for name in ('demo_cpl', 'demo_ggn', 'oln_box_coco'):\n    load_recipe(name)\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# whole-recipe hashes at 9922b2d, before pseudo.oln_ranker and model.oln_rpn_box_coder existed: a recipe that
# leaves both null keeps its hash (the paper recipes set upstream's TBLR coder); demo_cpl with its eval cap of then
BEFORE_OLN_RANKER = {"demo_ggn": ("70ef328f7e9d", []), "demo_cpl": ("f58d727ac960", ["eval.detections_per_img=20"])}


@pytest.mark.parametrize("name", sorted(BEFORE_OLN_RANKER))
def test_a_recipe_without_the_oln_ranker_keeps_its_hash(name):
    old_hash, then = BEFORE_OLN_RANKER[name]
    assert load_recipe(name, then).hash() == old_hash


def test_paper_recipes_use_upstreams_tblr_coder_and_the_demo_keeps_deltas():
    assert {n: load_recipe(n).model.oln_rpn_box_coder for n in ("ggn_coco", "oln_box_coco", "demo_ggn")} == {
        "ggn_coco": "tblr", "oln_box_coco": "tblr", "demo_ggn": None}
    with pytest.raises(RecipeError, match="oln_rpn_box_coder='delta' must be tblr or null"):
        load_recipe("demo_ggn", {"model.oln_rpn_box_coder": "delta"})


def test_the_oln_ranker_is_a_path_or_null_and_changes_the_pseudo_stage():
    r = load_recipe("demo_ggn", {"pseudo.oln_ranker": "oln/model_final.pth"})
    assert r.pseudo.oln_ranker == "oln/model_final.pth" and load_recipe("demo_ggn").pseudo.oln_ranker is None
    assert stage_hash(r, "pseudo") != stage_hash(load_recipe("demo_ggn"), "pseudo")
    with pytest.raises(RecipeError, match="oln_ranker='' must be a checkpoint path or null"):
        load_recipe("demo_ggn", {"pseudo.oln_ranker": ""})

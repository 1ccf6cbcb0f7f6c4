"""CPL end to end on tiny demo data: splits → grounding + teacher → pseudo → student → eval."""

from __future__ import annotations

import json

import pytest
import tiny
import torch
from pycocotools.coco import COCO

from ovis.config import load_recipe
from ovis.data.splits import run_splits_stage
from ovis.methods import cpl
from ovis.models.grounding import GroundingModel, teacher_init_state

TINY = tiny.CPL
R18 = {"model.backbone": "resnet18", "model.backbone_weights": None}  # the ResNet key layout


def test_grounding_keys_land_in_the_c4_detector(tmp_path):
    recipe = load_recipe("demo_cpl", {"data.root": str(tmp_path / "d"), **R18, "model.norm": "frozen_bn", **TINY})
    run_dir = tmp_path / "run"
    (run_dir / "splits").mkdir(parents=True)
    (run_dir / "splits" / "partition.json").write_text(json.dumps({"base": [{"id": 1, "name": "ball"}], "novel": []}))
    torch.manual_seed(0)
    state = teacher_init_state(GroundingModel("resnet18"))
    detector = cpl.build_teacher(recipe, run_dir)
    mapped = cpl.grounding_to_detector(state, detector)
    assert torch.equal(mapped["roi_heads.res5.0.conv1.weight"], state["backbone.layer4.0.conv1.weight"])
    assert torch.equal(mapped["backbone.body.layer3.1.bn2.running_var"], state["backbone.layer3.1.bn2.running_var"])
    assert torch.equal(mapped["roi_heads.box_predictor.projection.weight"], state["projection.weight"])
    assert not any(k.endswith("num_batches_tracked") for k in mapped)
    detector.load_state_dict(mapped, strict=False)
    del state["backbone.layer2.0.conv1.weight"]
    with pytest.raises(ValueError, match="lacks 1 detector tensors"):
        cpl.grounding_to_detector(state, detector)


def test_group_norm_grounding_lands_in_a_group_norm_teacher_and_not_in_a_frozen_bn_one(tmp_path):
    recipe = load_recipe("demo_cpl", {"data.root": str(tmp_path / "d"), **R18, "model.norm": "gn", **TINY})
    run_dir = tmp_path / "run"
    (run_dir / "splits").mkdir(parents=True)
    (run_dir / "splits" / "partition.json").write_text(json.dumps({"base": [{"id": 1, "name": "ball"}], "novel": []}))
    state = teacher_init_state(GroundingModel("resnet18", norm="gn"))
    assert not any("running_" in k for k in state)
    mapped = cpl.grounding_to_detector(state, cpl.build_teacher(recipe, run_dir))
    assert torch.equal(mapped["backbone.body.layer3.1.bn2.weight"], state["backbone.layer3.1.bn2.weight"])
    frozen = cpl.build_teacher(load_recipe("demo_cpl", {"data.root": str(tmp_path / "d"), **R18, "model.norm": "frozen_bn", **TINY}), run_dir)
    bn_state = teacher_init_state(GroundingModel("resnet18"))
    with pytest.raises(ValueError, match="model.norm the grounding run's"):
        cpl.grounding_to_detector(bn_state, cpl.build_teacher(recipe, run_dir))
    with pytest.raises(ValueError, match="lacks"):  # GN weights lack the frozen BN's statistics
        cpl.grounding_to_detector(state, frozen)


def test_recipes_freeze_prefixes_match_parameters(tmp_path):
    from ovis.engine.train import freeze

    recipe = load_recipe("cpl_coco", {"model.backbone": "resnet18", "model.backbone_weights": None})
    run_dir = tmp_path / "run"
    (run_dir / "splits").mkdir(parents=True)
    (run_dir / "splits" / "partition.json").write_text(json.dumps({"base": [{"id": 1, "name": "ball"}], "novel": []}))
    teacher = cpl.build_teacher(recipe, run_dir)
    assert freeze(teacher, recipe.teacher.freeze)[0] == 2  # projection weight + bias
    student = cpl.build_student(recipe, run_dir)
    frozen = freeze(student, recipe.student.freeze)[0]
    assert frozen == sum(1 for n, _ in student.named_parameters() if n.startswith(("backbone.", "rpn.")))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cpl")
    recipe = load_recipe("demo_cpl", {"data.root": str(tmp / "data"), **TINY})
    run_dir = tmp / "run"
    run_splits_stage(recipe, run_dir)
    quiet = lambda s: None  # noqa: E731
    out = {"teacher": cpl.run_teacher(recipe, run_dir, stream=quiet),
           "pseudo": cpl.run_pseudo(recipe, run_dir, stream=quiet),
           "student": cpl.run_student(recipe, run_dir, stream=quiet),
           "eval": cpl.run_eval(recipe, run_dir, stream=quiet)}
    return recipe, run_dir, out


def test_teacher_stage_files_and_frozen_projection(pipeline):
    recipe, run_dir, out = pipeline
    for f in ("grounding/model_final.pth", "teacher/model_final.pth", "teacher/metrics.jsonl", "teacher/stage.json"):
        assert (run_dir / f).is_file(), f
    assert out["teacher"]["teacher"]["iteration"] == 2
    g = torch.load(run_dir / "grounding/model_final.pth", weights_only=True)["model"]
    t = torch.load(run_dir / "teacher/model_final.pth", weights_only=True)["model"]
    assert torch.equal(t["roi_heads.box_predictor.projection.weight"], g["projection.weight"])  # loaded and frozen
    assert not torch.equal(t["roi_heads.res5.0.conv_pw.weight"], g["backbone.layer4.0.conv_pw.weight"])  # res5 trained
    again = cpl.run_teacher(recipe, run_dir, stream=lambda s: None)  # done: skipped, read from its record
    assert again == {k: {**v, "skipped": True} for k, v in out["teacher"].items()}


def test_pseudo_stage_files(pipeline):
    recipe, run_dir, out = pipeline
    coco = COCO(str(run_dir / "pseudo/train_pseudo.json"))
    pseudo = [a for a in coco.dataset["annotations"] if a.get("pseudo")]
    assert pseudo and len(pseudo) == out["pseudo"]["pseudo_masks"]
    for a in pseudo:
        assert {"score", "uncertainty", "word", "category_name"} <= set(a)
        assert 0 < a["score"] < 1 and 0 <= a["uncertainty"] <= 1
        assert coco.annToMask(a).shape == (64, 64)
    stats = json.loads((run_dir / "pseudo/stats.json").read_text())
    assert stats["images_with_captions"] > 0 and "novel_precision@0.5" in stats


def test_student_and_eval_stage_files(pipeline):
    recipe, run_dir, out = pipeline
    assert (run_dir / "student/model_final.pth").is_file() and (run_dir / "student/metrics.jsonl").is_file()
    rows = [json.loads(line) for line in (run_dir / "student/metrics.jsonl").read_text().splitlines()]
    assert {"loss_classifier_gt", "loss_mask_gt", "loss_classifier_pl", "loss_box_reg_pl", "loss_mask_pl"} <= set(rows[-1])
    assert (run_dir / "student/robust.jsonl").is_file()
    s = torch.load(run_dir / "student/model_final.pth", weights_only=True)["model"]
    t = torch.load(run_dir / "teacher/model_final.pth", weights_only=True)["model"]
    key = "backbone.body.layer3.0.conv_pw.weight"  # trained by the teacher, frozen in the student
    assert torch.equal(s[key], t[key])
    assert "roi_heads.mask_predictor.log_var.weight" in s
    for which in ("teacher", "student"):
        for setting in cpl.EVAL_SETTINGS:
            folder = run_dir / "eval" / which / setting
            dets = json.loads((folder / "detections.json").read_text())
            assert all("segmentation" in d for d in dets)
            for iou in recipe.eval.iou_types:
                m = json.loads((folder / iou / "metrics.json").read_text())
                assert m["protocol"] == "demo_ovr" and "AP50_novel" in m["metrics"]
    assert len(out["eval"]) == 2 * 3 * len(recipe.eval.iou_types)
    for f in ("detections.json", "metrics.json", "metrics.md", "summary.json", "stage.json"):
        assert (run_dir / "eval" / f).is_file(), f
    assert (run_dir / "eval/detections.json").read_bytes() == (run_dir / "eval/student/generalized/detections.json").read_bytes()


def test_eval_metrics_json_holds_teacher_and_student_side_by_side(pipeline):
    from ovis.viz.curves import find_eval_results

    recipe, run_dir, _ = pipeline
    side = json.loads((run_dir / "eval/metrics.json").read_text())
    assert list(side) == ["protocol", "teacher", "student", "constrained"] and side["protocol"] == "demo_ovr"
    assert list(side["constrained"]) == ["novel", "base"]
    ious = list(recipe.eval.iou_types)
    assert ious == ["segm", "bbox"]
    for kind, block in [("generalized", side), *side["constrained"].items()]:
        setting = "generalized" if kind == "generalized" else f"constrained_{kind}"
        for which in ("teacher", "student"):
            assert list(block[which]) == ious
            for iou in ious:
                full = json.loads((run_dir / "eval" / which / setting / iou / "metrics.json").read_text())
                assert block[which][iou] == full["metrics"], (which, setting, iou)
    assert side["constrained"]["novel"]["student"]["segm"]["AP50_base"] is None  # no base GT in val_novel.json
    md = (run_dir / "eval/metrics.md").read_text().splitlines()
    assert md[0] == "# demo_ovr: teacher vs student (AP50, %)"
    assert "| model | segm AP50 base | segm AP50 novel | segm AP50 all | bbox AP50 base | bbox AP50 novel | bbox AP50 all |" in md
    assert [line.split(" | ")[0] for line in md if line.startswith("| teacher") or line.startswith("| student")] == \
        ["| teacher", "| student"] * 3
    assert md.index("## generalized (val.json, base + novel names)") < md.index(
        "## constrained novel-only (val_novel.json, novel names)") < md.index("## constrained base-only (val_base.json, base names)")
    labels = [r["label"] for r in find_eval_results(run_dir)]  # the side-by-side file is skipped, not an error
    assert labels == sorted(f"{w}/{s}/{i}" for w in ("student", "teacher") for s in cpl.EVAL_SETTINGS for i in ious)


def test_figures_and_browser(pipeline):
    from matplotlib.figure import Figure

    recipe, run_dir, _ = pipeline
    teacher = cpl.teacher_figures(recipe, run_dir, n=1)
    student = cpl.student_figures(recipe, run_dir, n=1)
    pseudo = cpl.pseudo_figures(recipe, run_dir, n=1)
    assert all(isinstance(f, Figure) for f in teacher + student + pseudo)
    titles = [ax.get_title() for ax in teacher[0].axes if ax.get_visible()]
    assert any("base names" in t for t in titles) and any("novel names" in t for t in titles)
    assert len(pseudo) == 2 and any("pseudo" in ax.get_title() for ax in pseudo[0].axes)
    browser = cpl.pseudo_browser(recipe, run_dir, max_images=2)
    assert browser.panel_names == ["teacher", "pseudo"]
    assert (run_dir / "pseudo/teacher_detections.json").is_file()

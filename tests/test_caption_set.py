"""CPL on a caption-only image set (issue #17 part 2, docs/cpl.md#27-caption-only-images).

Real COCO val2017 images of coco_mini stand in for a captioned set without boxes: their captions are read, their
instances withheld. The base-class instances come from coco_mini's train2017 images, which have no captions here,
so everything the pseudo-label branch sees comes from the caption-only images. The end-to-end run uses cpl_oi_cc,
the recipe of the paper's Open Images + Conceptual Captions setting, on these files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import tiny
from conftest import COCO_MINI
from PIL import Image
from pycocotools import mask as mask_utils

from ovis.config import RecipeError, load_recipe, recipe_from_dict
from ovis.data.captions import Vocabulary, find_words, read_caption_set
from ovis.data.coco import CocoFormatError
from ovis.data.splits import check_data_files, load_partition, run_splits_stage, write_splits
from ovis.data.splits import main as splits_main
from ovis.io import write_json_atomic
from ovis.methods import cpl
from ovis.runs import stage_hash

ANN = COCO_MINI / "annotations"


def _present(folder: str) -> set[str]:
    return {p.name for p in (COCO_MINI / folder).glob("*.jpg")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """``train``: train2017 instances of the JPEGs the fixture carries; ``split``: the same with every 48/17 class
    marked ``split: seen/unseen`` (the others dropped), as cpl_oi_cc's protocol reads its val file;
    ``coco``/``jsonl``: the captions of the val2017 JPEGs it carries, as a COCO captions file (images under val2017/)
    and as a JSONL (paths under the coco_mini folder; the first image's captions on one line, every other caption on
    a line of its own)."""
    tmp = tmp_path_factory.mktemp("caption_set")
    inst = json.loads((ANN / "instances_train2017.json").read_text())
    images = [im for im in inst["images"] if im["file_name"] in _present("train2017")]
    ids = {im["id"] for im in images}
    train = write_json_atomic({**inst, "images": images, "annotations": [a for a in inst["annotations"]
                                                                        if a["image_id"] in ids]}, tmp / "train.json")
    part = load_partition("coco_ovr_48_17")
    side = {c["id"]: "seen" for c in part["base"]} | {c["id"]: "unseen" for c in part["novel"]}
    split = write_json_atomic({**inst, "images": images, "categories": [{**c, "split": side[c["id"]]}
                                                                       for c in inst["categories"] if c["id"] in side],
                               "annotations": [a for a in inst["annotations"] if a["image_id"] in ids
                                               and a["category_id"] in side]}, tmp / "split.json")
    caps = json.loads((ANN / "captions_val2017.json").read_text())
    images = [im for im in caps["images"] if im["file_name"] in _present("val2017")]
    assert len(images) == 8
    ids = {im["id"] for im in images}
    coco = write_json_atomic({**caps, "images": images, "annotations": [a for a in caps["annotations"]
                                                                       if a["image_id"] in ids]}, tmp / "captions.json")
    lines = []
    for k, im in enumerate(images):
        texts = [a["caption"] for a in caps["annotations"] if a["image_id"] == im["id"]]
        path = f"val2017/{im['file_name']}"
        lines += [{"image": path, "captions": texts}] if k == 0 else [{"image": path, "caption": t} for t in texts]
    jsonl = tmp / "captions.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"train": train, "split": split, "coco": coco, "jsonl": jsonl}


def _originals() -> dict[str, list[str]]:
    """val2017 file name → its captions, straight from the COCO captions file."""
    caps = json.loads((ANN / "captions_val2017.json").read_text())
    names = {im["id"]: im["file_name"] for im in caps["images"]}
    out: dict[str, list[str]] = {}
    for a in caps["annotations"]:
        out.setdefault(names[a["image_id"]], []).append(a["caption"].strip())
    return out


def test_coco_captions_and_jsonl_give_the_same_images_captions_and_sizes(data):
    coco = read_caption_set(data["coco"], COCO_MINI / "val2017")
    jsonl = read_caption_set(data["jsonl"], COCO_MINI)
    assert len(coco) == len(jsonl) == 8
    originals = _originals()
    for a, b in zip(coco, jsonl):
        assert (COCO_MINI / "val2017" / a.file_name).resolve() == (COCO_MINI / b.file_name).resolve()
        assert list(a.captions) == list(b.captions) == originals[a.file_name]
        with Image.open(COCO_MINI / b.file_name) as im:  # the JSONL's sizes are read from the JPEG
            assert (a.width, a.height) == (b.width, b.height) == im.size
    assert coco[0].source.startswith("image ") and jsonl[1].source == "line 2"


def test_splits_add_the_caption_only_images_without_annotations(data, tmp_path):
    counts = write_splits("coco_ovr_48_17", data["train"], data["train"], tmp_path, None, data["jsonl"], COCO_MINI)
    base = json.loads((tmp_path / "train_base.json").read_text())
    captions = json.loads((tmp_path / "captions.json").read_text())
    train = json.loads(data["train"].read_text())
    only = [im for im in base["images"] if im.get("caption_only")]
    assert len(only) == 8 and len(base["images"]) == len(train["images"]) + 8  # every train image has a base object
    assert min(im["id"] for im in only) > max(im["id"] for im in train["images"])
    assert not {a["image_id"] for a in base["annotations"]} & {im["id"] for im in only}
    originals = _originals()
    assert sorted(captions) == sorted(str(im["id"]) for im in only)
    for im in only:
        path = Path(im["file_name"])
        assert path.is_absolute() and path.is_file() and captions[str(im["id"])] == originals[path.name]
        assert im["caption_source"].startswith("line ")
    assert counts["captions.json"] == {"images": 8, "captions": 40}


BAD_JSONL = [  # (file content, what the one-line error says besides the file name)
    ('{"image": "val2017/000000000802.jpg", "caption": "a kitchen"}\n{"image": \n', "line 2: not a JSON object"),
    ('["val2017/000000000802.jpg", "a kitchen"]\n', "line 1: a list"),
    ('\n{"caption": "a kitchen"}\n', "line 2: 'image' is None"),
    ('{"image": "val2017/000000000802.jpg", "caption": "a", "captions": ["b"]}\n', "line 1: give 'captions'"),
    ('{"image": "val2017/000000000802.jpg", "captions": []}\n', "line 1: captions [] are not"),
    ('{"image": "val2017/000000000802.jpg", "captions": ["ok", 3]}\n', "line 1: captions"),
    ('{"image": "val2017/000000000802.jpg", "caption": "ok"}\n{"image": "val2017/nope.jpg", "caption": "ok"}\n',
     "line 2: image file"),
    ('{"image": "annotations/captions_val2017.json", "caption": "ok"}\n', "line 1: cannot read image"),
    ("\n\n", "no captioned image"),
]


@pytest.mark.parametrize("content,message", BAD_JSONL)
def test_a_bad_jsonl_line_is_one_line_naming_file_and_line_and_nothing_is_written(data, tmp_path, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    out = tmp_path / "splits"
    with pytest.raises(CocoFormatError) as err:
        write_splits("coco_ovr_48_17", data["train"], data["train"], out, None, bad, COCO_MINI)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{bad}: ") and message in text
    assert not out.exists()


def test_a_bad_coco_caption_set_names_file_and_image(data, tmp_path):
    caps = json.loads(data["coco"].read_text())
    first = caps["images"][0]
    cases = [
        ({**caps, "images": [{k: v for k, v in first.items() if k != "file_name"}] + caps["images"][1:]},
         f"image {first['id']}: 'file_name' is None"),
        ({**caps, "images": [{**first, "width": "640"}] + caps["images"][1:]}, f"image {first['id']}: width '640'"),
        ({**caps, "images": [{**first, "file_name": "gone.jpg"}] + caps["images"][1:]},
         f"image {first['id']}: image file"),
        ({k: v for k, v in caps.items() if k != "images"}, "no 'images' list"),
    ]
    for k, (content, message) in enumerate(cases):
        bad = write_json_atomic(content, tmp_path / f"bad{k}.json")
        with pytest.raises(CocoFormatError) as err:
            write_splits("coco_ovr_48_17", data["train"], data["train"], tmp_path / "splits", None, bad,
                         COCO_MINI / "val2017")
        assert str(err.value).startswith(f"{bad}: ") and message in str(err.value), str(err.value)
    assert not (tmp_path / "splits").exists()


def test_ovis_splits_takes_a_caption_set_and_refuses_half_of_one(data, tmp_path, capsys):
    args = ["--protocol", "coco_ovr_48_17", "--train-instances", str(data["train"]), "--val-instances",
            str(data["train"]), "--caption-set", str(data["coco"])]
    assert splits_main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "image folder" in err and not (tmp_path / "a").exists()
    assert splits_main([*args, "--caption-set-images", str(COCO_MINI / "val2017"), "--out", str(tmp_path / "b")]) == 0
    assert len(json.loads((tmp_path / "b" / "captions.json").read_text())) == 8


def test_the_caption_set_keys_leave_other_recipes_hashes_alone(data):
    r = load_recipe("cpl_coco")
    assert "caption_set" not in r.to_dict()["data"] and "caption_set_images" not in r.to_dict()["data"]
    with_set = load_recipe("cpl_coco", {"data.caption_set": "cc.jsonl", "data.caption_set_images": "cc"})
    assert with_set.to_dict()["data"]["caption_set"] == "cc.jsonl"
    assert stage_hash(with_set, "splits") != stage_hash(r, "splits")
    assert recipe_from_dict(with_set.to_dict()).hash() == with_set.hash()
    with pytest.raises(RecipeError, match="caption_set and caption_set_images go together"):
        load_recipe("cpl_coco", {"data.caption_set": "cc.jsonl"})


def _recipe(data: dict[str, Path], root: Path, **extra):
    """cpl_oi_cc on the fixture's files, at tiny budgets."""
    return load_recipe("cpl_oi_cc", {
        **{k: v for k, v in tiny.CPL.items() if not k.startswith("data.")},
        "model.backbone": "resnet18", "model.backbone_weights": None,
        "data.root": str(root), "data.train_instances": str(data["train"]), "data.val_instances": str(data["split"]),
        "data.train_images": str(COCO_MINI / "train2017"), "data.val_images": str(COCO_MINI / "train2017"),
        "data.caption_set": str(data["jsonl"]), "data.caption_set_images": str(COCO_MINI),
        "teacher.num_workers": 0, "student.num_workers": 0, "student.max_iter": 3,
        "launch.launcher": "local", "launch.nproc": 1, "launch.device": "cpu", **extra})


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """cpl_oi_cc's splits -> grounding and teacher -> pseudo masks -> student, tiny budgets, on the real images."""
    tmp = tmp_path_factory.mktemp("cpl_caption_only")
    recipe, run_dir = _recipe(data, tmp), tmp / "run"
    quiet = lambda s: None  # noqa: E731
    run_splits_stage(recipe, run_dir)
    cpl.run_teacher(recipe, run_dir, stream=quiet)
    stats = cpl.run_pseudo(recipe, run_dir, stream=quiet)
    cpl.run_student(recipe, run_dir, stream=quiet)
    only = {im["id"]: im for im in json.loads((run_dir / "splits/train_base.json").read_text())["images"]
            if im.get("caption_only")}
    return recipe, run_dir, stats, only


def test_grounding_trains_on_the_caption_only_images(run):
    recipe, run_dir, _, only = run
    task = cpl.grounding_task(recipe, run_dir)
    assert sorted(task.dataset.ids) == sorted(only)  # the base images have no captions here
    assert (run_dir / "grounding/model_final.pth").is_file()


def test_pseudo_masks_of_caption_only_images_follow_their_caption_words(run):
    _, run_dir, stats, only = run
    pseudo_file = json.loads((run_dir / "pseudo/train_pseudo.json").read_text())
    pseudo = [a for a in pseudo_file["annotations"] if a.get("pseudo")]
    assert pseudo and {a["image_id"] for a in pseudo} <= set(only)
    captions = json.loads((run_dir / "splits/captions.json").read_text())
    vocab = Vocabulary.from_lvis()
    for image_id, im in only.items():
        words = [m.word for m in find_words(captions[str(image_id)], vocab)]
        assert [a["word"] for a in pseudo if a["image_id"] == image_id] == words  # one mask per caption word
        for a in pseudo:
            if a["image_id"] == image_id:
                assert mask_utils.decode(a["segmentation"]).shape == (im["height"], im["width"])
    assert stats["images_with_captions"] == stats["images_caption_only"] == 8
    assert stats["pseudo_masks_caption_only"] == stats["pseudo_masks"] == len(pseudo)
    assert stats["pseudo_masks_novel"] == 0 and stats["novel_precision@0.5"] is None  # no GT to score against


def test_the_student_trains_its_pseudo_branch_on_the_caption_only_images(run):
    recipe, run_dir, _, only = run
    task = cpl.student_task(recipe, run_dir)
    items = {task.dataset.ids[i]: task.dataset[i][1] for i in range(len(task.dataset))}
    with_masks = [i for i in only if i in items]
    assert with_masks and all(items[i]["pseudo"].all() and len(items[i]["labels"]) for i in with_masks)
    assert all(not items[i]["pseudo"].any() for i in items if i not in only)  # base images: GT only
    rows = [json.loads(line) for line in (run_dir / "student/metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss_mask_pl"]) for r in rows) and any(r["loss_mask_pl"] > 0 for r in rows)


def test_online_pseudo_labelling_keeps_the_caption_only_images(run, data):
    recipe, run_dir, _, only = run
    online = _recipe(data, Path(recipe.data.root), **{"student.online_pseudo": True})
    task = cpl.student_task(online, run_dir)
    assert set(only) <= set(task.dataset.ids)
    k = task.dataset.ids.index(next(iter(only)))
    image, target = task.dataset[k]
    assert len(target["boxes"]) == 0 and len(target["captions"]) == 5


def test_the_pseudo_figures_and_browser_show_caption_only_images(run):
    recipe, run_dir, _, only = run
    figures = cpl.pseudo_figures(recipe, run_dir, n=2)
    assert len(figures) == 2 and any("pseudo" in ax.get_title() for ax in figures[0].axes)
    browser = cpl.pseudo_browser(recipe, run_dir, max_images=2)
    assert set(browser.images) <= set(only) and len(browser.images) == 2
    assert browser.render(next(iter(browser.images))).axes  # draws the caption-only JPEG from its absolute path


def test_the_recipe_check_reads_the_caption_set_and_names_a_missing_folder(data, tmp_path):
    recipe = _recipe(data, tmp_path)
    check_data_files(recipe.data)
    missing = _recipe(data, tmp_path, **{"data.caption_set_images": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="data.caption_set_images: image folder"):
        check_data_files(missing.data)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.jpg"}\n')
    with pytest.raises(CocoFormatError, match="bad.jsonl: line 1: give 'captions'"):
        check_data_files(_recipe(data, tmp_path, **{"data.caption_set": str(bad)}).data)

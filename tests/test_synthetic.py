"""The embedded demo dataset: deterministic, COCO-valid, occluded objects, realistic captions."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from lemminflect import getAllInflections, getLemma
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ovis.data import synthetic
from ovis.data.synthetic import CATEGORIES, generate_demo_dataset, main, partition_text

NUM_TRAIN, NUM_VAL, SIZE = 24, 6, 128


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> synthetic.DemoPaths:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), seed=3, num_train=NUM_TRAIN,
                                 num_val=NUM_VAL, image_size=SIZE)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _caption_categories(caption: str) -> dict[int, list[str]]:
    """Category id -> the caption words that name it, by lemma (every lemma candidate is tried)."""
    vocab = {w: c["id"] for c in CATEGORIES for w in [c["name"], *c["synonyms"]]}
    found: dict[int, list[str]] = {}
    for word in re.findall(r"[a-z]+", caption.lower()):
        for lemma in {word, *getLemma(word, upos="NOUN")}:
            if lemma in vocab:
                found.setdefault(vocab[lemma], []).append(word)
                break
    return found


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    a = generate_demo_dataset(tmp_path / "a", seed=7, num_train=5, num_val=2, image_size=96)
    b = generate_demo_dataset(tmp_path / "b", seed=7, num_train=5, num_val=2, image_size=96)
    c = generate_demo_dataset(tmp_path / "c", seed=8, num_train=5, num_val=2, image_size=96)
    da, db, dc = _digest(a.root), _digest(b.root), _digest(c.root)
    assert len(da) == 5 + 2 + 4 + 1 and da == db
    assert set(dc) == set(da)
    assert all(dc[k] != da[k] for k in da if k != "manifest.json")


def test_up_to_date_dataset_is_kept_and_force_or_new_parameters_regenerate(tmp_path: Path) -> None:
    paths = generate_demo_dataset(tmp_path, seed=1, num_train=2, num_val=1, image_size=96)
    image = paths.train_images / "000001.png"
    stamp = (image.stat().st_mtime_ns, image.stat().st_ino, paths.manifest.stat().st_mtime_ns)
    generate_demo_dataset(tmp_path, seed=1, num_train=2, num_val=1, image_size=96)
    assert (image.stat().st_mtime_ns, image.stat().st_ino, paths.manifest.stat().st_mtime_ns) == stamp
    generate_demo_dataset(tmp_path, seed=1, num_train=2, num_val=1, image_size=96, force=True)
    assert image.stat().st_ino != stamp[1]
    generate_demo_dataset(tmp_path, seed=1, num_train=3, num_val=1, image_size=96)
    assert len(list(paths.train_images.iterdir())) == 3
    assert _load(paths.manifest)["parameters"]["num_train"] == 3
    assert not list(tmp_path.glob(".staging-*")) and not list(tmp_path.rglob("*.tmp"))


def test_categories_are_at_least_twelve_real_nouns_whose_words_are_unambiguous() -> None:
    names = [c["name"] for c in CATEGORIES]
    assert len(names) >= 12 and [c["id"] for c in CATEGORIES] == list(range(1, len(names) + 1))
    words = [w for c in CATEGORIES for w in [c["name"], *c["synonyms"]]]
    assert len(words) == len(set(words)), "a caption word must name one category only"
    for word in words:
        assert getAllInflections(word, upos="NOUN"), f"{word!r} is not an English noun"
        plural = synthetic.PLURALS[word]
        assert word in getLemma(plural, upos="NOUN"), f"a lemmatiser does not map {plural!r} to {word!r}"


def test_instances_load_with_pycocotools_and_masks_areas_boxes_agree(demo: synthetic.DemoPaths) -> None:
    splits = (("train", NUM_TRAIN, demo.train_instances), ("val", NUM_VAL, demo.val_instances))
    for split, n_images, path in splits:
        coco = COCO(str(path))
        assert len(coco.getImgIds()) == n_images
        assert coco.loadCats(coco.getCatIds()) == synthetic.categories()
        for image_id in coco.getImgIds():
            image = coco.imgs[image_id]
            with Image.open(getattr(demo, f"{split}_images") / image["file_name"]) as im:
                assert im.mode == "RGB" and im.size == (SIZE, SIZE)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert 2 <= sum(not a["iscrowd"] for a in anns) <= 6, image_id
            union = np.zeros((SIZE, SIZE), np.int64)
            for ann in anns:
                assert isinstance(ann["segmentation"]["counts"], str)
                mask = coco.annToMask(ann)
                union += mask
                ys, xs = np.nonzero(mask)
                assert ann["area"] == mask.sum() == mask_utils.area(ann["segmentation"]) >= synthetic.MIN_AREA
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert union.max() <= 1, f"visible masks overlap in image {image_id}"


def test_objects_really_occlude_each_other_and_a_crowd_region_exists(demo: synthetic.DemoPaths) -> None:
    data = _load(demo.train_instances)
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["image_id"] == synthetic.CROWD_OFFSET + 1
    overlapping = 0
    for image in data["images"]:
        boxes = np.array([a["bbox"] for a in data["annotations"] if a["image_id"] == image["id"]])
        x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
        w = np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0)
        h = np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0)
        overlapping += int(np.triu((w > 0) & (h > 0), 1).sum())
    assert overlapping >= 5
    # sizes vary from a few pixels to about half the image
    sides = np.array([max(a["bbox"][2:]) for a in data["annotations"] if not a["iscrowd"]])
    assert sides.min() < 0.12 * SIZE and sides.max() > 0.45 * SIZE


def test_captions_name_present_objects_with_synonyms_plurals_and_omissions(demo: synthetic.DemoPaths) -> None:
    instances, captions = _load(demo.train_instances), _load(demo.train_captions)
    assert captions["images"] == instances["images"]
    present: dict[int, set[int]] = {}
    for ann in instances["annotations"]:
        present.setdefault(ann["image_id"], set()).add(ann["category_id"])
    by_image: dict[int, list[str]] = {}
    for cap in captions["annotations"]:
        by_image.setdefault(cap["image_id"], []).append(cap["caption"])
    assert sorted(by_image) == sorted(present) and all(len(c) == 5 for c in by_image.values())
    assert len({c["id"] for c in captions["annotations"]}) == 5 * NUM_TRAIN
    synonym_words = {w for c in CATEGORIES for w in c["synonyms"]}
    synonym_words |= {synthetic.PLURALS[w] for w in synonym_words}
    plural_words = {p for w, p in synthetic.PLURALS.items() if p != w}
    synonyms_used, plurals_used, omissions = set(), set(), 0
    for image_id, caps in by_image.items():
        for caption in caps:
            found = _caption_categories(caption)
            assert found, f"caption names no object: {caption!r}"
            assert set(found) <= present[image_id], f"image {image_id}: {caption!r} names an absent object"
            words = [w for ws in found.values() for w in ws]
            synonyms_used |= set(words) & synonym_words
            plurals_used |= set(words) & plural_words
            omissions += len(present[image_id] - set(found)) > 0
    assert len(synonyms_used) >= 5 and {"leaves", "boxes"} & plurals_used and len(plurals_used) >= 5
    assert 0.2 * 5 * NUM_TRAIN < omissions < 0.9 * 5 * NUM_TRAIN


def test_partition_files_match_the_constants_and_cover_every_category() -> None:
    all_ids = {c["id"] for c in CATEGORIES}
    for name, (file_name, partition) in synthetic.PARTITION_FILES.items():
        text = (synthetic.RESOURCES / file_name).read_text(encoding="utf-8")
        assert text == partition_text(name), f"run synthetic.write_partition_files() to refresh {file_name}"
        parts = {key: {c["id"] for c in rows} for key, rows in json.loads(text).items()}
        assert sum(map(len, parts.values())) == len(all_ids) and set().union(*parts.values()) == all_ids
    ovr = json.loads((synthetic.RESOURCES / "demo_ovr.json").read_text())
    assert list(ovr) == ["base", "novel", "excluded"] and len(ovr["novel"]) >= 4
    ow = json.loads((synthetic.RESOURCES / "demo_open_world.json").read_text())
    assert list(ow) == ["seen", "unseen"] and {c["id"] for c in ow["seen"]} != {c["id"] for c in ovr["base"]}


def test_cli_prints_counts_and_rejects_bad_sizes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--root", str(tmp_path), "--num-train", "2", "--num-val", "1", "--image-size", "80"]) == 0
    out = capsys.readouterr().out
    assert "train: 2 images" in out and "val: 1 images" in out and "10 captions" in out
    assert main(["--root", str(tmp_path / "x"), "--image-size", "20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ovis demo-data: error: image_size must be >= 64") and "Traceback" not in err

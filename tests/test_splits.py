"""Splits follow docs/protocols.md#12-split-construction (OVR 48/17) and docs/protocols.md#13-voc-split (VOC → non-VOC) on real COCO files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from ovis.cli import main as ovis
from ovis.data.splits import load_partition, write_splits
from ovis.protocols import protocol_names

ANN = Path(__file__).parent / "data" / "real" / "coco_mini" / "annotations"
TRAIN, VAL, CAPS = ANN / "instances_train2017.json", ANN / "instances_val2017.json", ANN / "captions_train2017.json"


def expected(path: Path, cats: list[int], *, all_images: bool = False, min_side: int = 0):
    """Images / annotations the rules imply, computed independently through the pycocotools index."""
    coco = COCO(str(path))
    anns = coco.getAnnIds(catIds=cats, iscrowd=None)
    imgs = set(coco.getImgIds()) if all_images else {i for c in cats for i in coco.getImgIds(catIds=[c])}
    imgs = {i for i in imgs if min(coco.imgs[i]["width"], coco.imgs[i]["height"]) >= min_side}
    anns = [a for a in anns if coco.anns[a]["image_id"] in imgs]
    return imgs, set(anns)


def ids(path: Path):
    d = json.loads(path.read_text())
    return {im["id"] for im in d["images"]}, {a["id"] for a in d["annotations"]}, d


def test_partitions_are_the_published_lists():
    ovr = load_partition("coco_ovr_48_17")
    assert (len(ovr["base"]), len(ovr["novel"]), len(ovr["excluded"])) == (48, 17, 15)
    assert [c["id"] for c in ovr["novel"]] == [5, 6, 17, 18, 21, 22, 28, 32, 36, 41, 47, 49, 61, 63, 76, 81, 87]
    voc = load_partition("coco_voc_nonvoc")
    assert (len(voc["base"]), len(voc["novel"])) == (20, 60)
    assert [c["id"] for c in voc["base"]] == [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]
    for p in protocol_names("splits"):
        part = load_partition(p)
        groups = [{c["id"] for c in part[k]} for k in ("base", "novel", "excluded")]
        assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])


def test_ovr_48_17_counts_match_the_rules(tmp_path):
    table = write_splits("coco_ovr_48_17", TRAIN, VAL, tmp_path, CAPS)
    part = load_partition("coco_ovr_48_17")
    base, novel = [c["id"] for c in part["base"]], [c["id"] for c in part["novel"]]
    for name, path, cats in [
        ("train_base.json", TRAIN, base),
        ("val.json", VAL, base + novel),
        ("val_novel.json", VAL, novel),
        ("val_base.json", VAL, base),
    ]:
        imgs, anns, d = ids(tmp_path / name)
        assert (imgs, anns) == expected(path, cats), name
        assert {c["id"] for c in d["categories"]} == set(cats)
        assert table[name]["images"] == len(imgs) and table[name]["annotations"] == len(anns)
        COCO(str(tmp_path / name))  # loads with pycocotools
    # pinned on the real coco_mini files
    assert (table["train_base.json"]["images"], table["train_base.json"]["annotations"]) == (76, 535)
    assert (table["val.json"]["images"], table["val_novel.json"]["images"], table["val_base.json"]["images"]) == (77, 34, 74)
    # novel objects in base images are background in the teacher's training set
    _, _, train = ids(tmp_path / "train_base.json")
    assert not {a["category_id"] for a in train["annotations"]} & set(novel)
    caps = json.loads((tmp_path / "captions.json").read_text())
    assert set(caps) == {str(i) for i in ids(tmp_path / "train_base.json")[0]}
    assert all(len(v) == 5 for v in caps.values())
    partition = json.loads((tmp_path / "partition.json").read_text())
    assert partition["protocol"] == "coco_ovr_48_17" and len(partition["novel"]) == 17


def test_voc_nonvoc_counts_match_the_rules(tmp_path):
    write_splits("coco_voc_nonvoc", TRAIN, VAL, tmp_path)
    part = load_partition("coco_voc_nonvoc")
    seen, unseen = [c["id"] for c in part["base"]], [c["id"] for c in part["novel"]]
    imgs, anns, _ = ids(tmp_path / "train_base.json")
    assert (imgs, anns) == expected(TRAIN, seen, min_side=32)
    imgs, anns, val = ids(tmp_path / "val.json")
    assert (imgs, anns) == expected(VAL, seen + unseen, all_images=True)
    assert len(imgs) == 79  # every val image, even without unseen objects
    flagged = {a["id"] for a in val["annotations"] if a.get("ignored_split") == 1}
    assert flagged == {a["id"] for a in val["annotations"] if a["category_id"] in set(seen)}
    assert not (tmp_path / "val_novel.json").exists()


def test_min_side_filter_drops_small_training_images(tmp_path):
    d = json.loads(TRAIN.read_text())
    small = d["images"][0]
    small["width"] = 31
    for a in d["annotations"]:  # keep the annotations inside the shrunken image
        if a["image_id"] == small["id"]:
            a["bbox"] = [0, 0, 10, 10]
            a["segmentation"] = [[0, 0, 10, 0, 10, 10, 0, 10]]
            a["iscrowd"] = 0
    (tmp_path / "t.json").write_text(json.dumps(d))
    write_splits("coco_voc_nonvoc", tmp_path / "t.json", VAL, tmp_path / "out")
    kept = {im["id"] for im in json.loads((tmp_path / "out" / "train_base.json").read_text())["images"]}
    assert small["id"] not in kept


def test_cli_prints_counts_and_rejects_bad_input_without_partial_output(tmp_path, capsys):
    assert ovis(["splits", "--protocol", "coco_ovr_48_17", "--train-instances", str(TRAIN),
                 "--val-instances", str(VAL), "--out", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "train_base.json" in out and "535" in out
    bad = tmp_path / "bad.json"
    d = json.loads(VAL.read_text())
    d["annotations"][3]["image_id"] = 999999999
    bad.write_text(json.dumps(d))
    code = ovis(["splits", "--protocol", "coco_ovr_48_17", "--train-instances", str(TRAIN),
                 "--val-instances", str(bad), "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "bad.json" in err and str(d["annotations"][3]["id"]) in err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_named_and_an_earlier_output_stays_as_it_was(tmp_path, capsys, literal):
    out = tmp_path / "out"
    args = ["splits", "--protocol", "coco_ovr_48_17", "--train-instances", str(TRAIN), "--out", str(out)]
    assert ovis(args + ["--val-instances", str(VAL)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    d = json.loads(VAL.read_text())
    ann = d["annotations"][5]
    ann["bbox"][2] = 123456.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d).replace("123456.5", literal))
    capsys.readouterr()
    assert ovis(args + ["--val-instances", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json" in err and f"annotation {ann['id']}: field 'bbox'" in err
    assert literal in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_wrong_dataset_for_protocol_is_named(tmp_path):
    d = json.loads(VAL.read_text())
    d["categories"] = [c for c in d["categories"] if c["id"] != 5]
    d["annotations"] = [a for a in d["annotations"] if a["category_id"] != 5]
    (tmp_path / "v.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"v\.json: category 5 \(airplane\)"):
        write_splits("coco_ovr_48_17", TRAIN, tmp_path / "v.json", tmp_path / "out")


@pytest.mark.parametrize("out", ["a_file", "a_file/sub"])
def test_an_output_path_through_a_file_is_one_line(tmp_path, capsys, out):
    (tmp_path / "a_file").write_text("keep me")
    code = ovis(["splits", "--protocol", "coco_ovr_48_17", "--train-instances", str(TRAIN),
                 "--val-instances", str(VAL), "--out", str(tmp_path / out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("ovis splits: error:")
    assert str(tmp_path / out) in err and "Traceback" not in err
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_a_second_protocol_into_the_same_folder_leaves_only_its_own_files(tmp_path):
    out = tmp_path / "out"
    write_splits("coco_ovr_48_17", TRAIN, VAL, out, CAPS)
    assert {"val_novel.json", "val_base.json", "captions.json"} <= {p.name for p in out.iterdir()}
    write_splits("coco_voc_nonvoc", TRAIN, VAL, out)
    assert sorted(p.name for p in out.iterdir()) == ["partition.json", "train_base.json", "val.json"]


def test_captions_of_another_split_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"captions_val2017\.json: none of its \d+ captioned images is a base-training"):
        write_splits("coco_ovr_48_17", TRAIN, VAL, tmp_path / "out", ANN / "captions_val2017.json")
    assert not (tmp_path / "out").exists()

"""Named category splits (docs/protocols.md#1-data-splits): which classes a model may see in training, and the eval sets.

Two kinds of protocol, each named once (``ovis.protocols``) and used by name everywhere:

- ``ovr`` (open vocabulary, CPL/XPM): base / novel / excluded classes. Train on base annotations;
  evaluate generalized (base + novel) and constrained (novel only, base only). Excluded classes'
  annotations are dropped everywhere (docs/protocols.md#12-split-construction). ``ovr_category_split`` takes
  base / novel from the val file's category ``split`` fields (docs/cpl.md#28-open-images-and-conceptual-captions).
- ``open_world`` (OLN/GGN): seen / unseen classes. Train on seen annotations of images with min side
  ≥ 32; evaluate on all val images with seen-class GT flagged ``ignored_split`` (docs/protocols.md#13-voc-split).
  The cross-dataset ones (``coco_lvis_noncoco``, ``lvis_noncoco_coco``, docs/protocols.md#15-coco-and-lvis)
  divide the LVIS categories by synset into those with a COCO counterpart and the rest
  (the LVIS API's ``coco_to_synset.json``); the train file and the val file then have different
  vocabularies, and ``partition.json`` carries ``eval_seen``/``eval_unseen`` (val-file ids) beside
  ``base``/``novel`` (train-file ids). ``coco_uvo`` (docs/protocols.md#17-coco-and-uvo) trains on COCO's 80 and
  recalls every instance of a UVO file, whose categories are all unseen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovis.data.captions import CaptionedImage, parse_caption_file, read_caption_set
from ovis.data.coco import EVAL_ANNOTATION_KEYS, CocoFormatError, is_coco_id, read_json, validate_coco
from ovis.data.uvo import frames_as_coco, is_video_file
from ovis.io import write_json_atomic
from ovis.locks import FolderInUse, folder_lock
from ovis.protocols import Protocol, get_protocol, protocol_names
from ovis.runs import RunLayout
from ovis.stages import execute

if TYPE_CHECKING:
    from ovis.config import DataConfig, Recipe


def _resource(name: str) -> Any:
    return json.loads((resources.files("ovis.data") / "resources" / name).read_text(encoding="utf-8"))


def coco_synsets() -> dict[str, dict[str, Any]]:
    """{WordNet synset: {"id", "name"}} of COCO's 80 classes, from the LVIS API's ``coco_to_synset.json``
    (package data, docs/data.md#coco-to-lvis-synsets)."""
    raw = _resource("coco_to_synset.json")
    return {v["synset"]: {"id": v["coco_cat_id"], "name": name} for name, v in raw.items()}


def coco_categories() -> list[dict[str, Any]]:
    """COCO's 80 categories as ``{"id", "name"}``, sorted by id (from ``coco_to_synset.json``)."""
    return sorted(coco_synsets().values(), key=lambda c: c["id"])


def is_lvis(data: Any) -> bool:
    """Whether a parsed instances file has LVIS categories: a non-empty list, each with a ``synset``."""
    cats = data.get("categories") if isinstance(data, dict) else None
    return isinstance(cats, list) and bool(cats) and all(isinstance(c, dict) and "synset" in c for c in cats)


def split_lvis_categories(categories: list[dict], path: str | Path = "LVIS categories",
                          protocol: str = "") -> tuple[list[dict], list[dict]]:
    """(LVIS categories with a COCO counterpart, those without), each ``{"id", "name", "synset"}`` sorted by
    id: a category has a COCO counterpart when its ``synset`` is one of ``coco_synsets()``. A category
    without a string ``synset`` is a CocoFormatError naming ``path``."""
    coco = coco_synsets()
    with_coco: list[dict[str, Any]] = []
    without: list[dict[str, Any]] = []
    for c in categories:
        if not isinstance(c.get("synset"), str):
            raise CocoFormatError(
                f"{path}: category {c.get('id')} ({c.get('name')}) has no 'synset'; protocol {protocol} needs an "
                "LVIS instances file (v0.5 or v1, whose categories carry WordNet synsets) here")
        entry = {"id": c["id"], "name": c["name"], "synset": c["synset"]}
        (with_coco if c["synset"] in coco else without).append(entry)
    return sorted(with_coco, key=lambda c: c["id"]), sorted(without, key=lambda c: c["id"])


def load_partition(protocol: str, lvis_categories: list[dict] | None = None,
                   val_categories: list[dict] | None = None) -> dict[str, Any]:
    """The protocol's category partition: ``{"protocol", "kind", "base", "novel", "excluded"}``.

    ``base``/``novel`` are lists of ``{"id", "name"}`` (for open-world protocols: seen/unseen) of the
    training file's categories. A cross-dataset protocol (``lvis_side`` or ``val_all_unseen`` set) adds
    ``eval_seen`` and ``eval_unseen``, the val file's categories whose GT is ignored and recalled; its LVIS
    categories are ``lvis_categories`` (the LVIS file's own) or, without them, the packaged LVIS v1 vocabulary;
    with ``val_all_unseen`` the val file's categories (``val_categories``, none without them) are all unseen; with
    ``category_split`` each of them is base or novel as its ``split`` field says.
    """
    p = get_protocol(protocol)
    s = p.splits
    if s.category_split:  # each val category's own split field
        return category_split_partition(p.name, val_categories or [])
    if s.val_all_unseen:  # train on COCO's 80, recall every instance of the val file
        unseen = sorted(({"id": c["id"], "name": c["name"]} for c in val_categories or []), key=lambda c: c["id"])
        return {"protocol": p.name, "kind": p.kind, "base": coco_categories(), "novel": [], "excluded": [],
                "eval_seen": [], "eval_unseen": unseen}
    if s.lvis_side is None:
        raw = _resource(s.resource)
        return {
            "protocol": p.name,
            "kind": p.kind,
            "base": raw[s.base_key],
            "novel": raw[s.novel_key],
            "excluded": raw.get("excluded", []),
        }
    if lvis_categories is None:
        lvis_categories = _resource("lvis_v1_categories.json")
    with_coco, without = split_lvis_categories(lvis_categories, "lvis_v1_categories.json", p.name)
    groups = {"coco": with_coco, "noncoco": without}
    coco = coco_categories()
    if s.lvis_side == "val":  # train on COCO's 80, recall the LVIS categories without a COCO counterpart
        base, novel, seen, unseen = coco, [], groups[s.base_key], groups[s.novel_key]
    else:  # train on the LVIS categories without a COCO counterpart, recall all of COCO
        base, novel, seen, unseen = groups[s.base_key], groups[s.novel_key], [], coco
    return {"protocol": p.name, "kind": p.kind, "base": base, "novel": novel, "excluded": [],
            "eval_seen": seen, "eval_unseen": unseen}


# a category's "split" field → the partition group it falls in (the CPL authors' Open Images files say seen/unseen)
CATEGORY_SPLITS = {"seen": "base", "base": "base", "unseen": "novel", "novel": "novel"}


def category_split_partition(protocol: str, categories: list[dict], path: str | Path = "val categories") -> dict[str, Any]:
    """The partition of a ``category_split`` protocol: every category goes to base or novel by its ``split`` field
    (:data:`CATEGORY_SPLITS`); a category without one is a CocoFormatError naming ``path`` and the category."""
    groups: dict[str, list[dict[str, Any]]] = {"base": [], "novel": []}
    for c in categories:
        side = c.get("split")
        group = CATEGORY_SPLITS.get(side) if isinstance(side, str) else None
        if group is None:
            raise CocoFormatError(f"{path}: category {c['id']} ({c['name']}): 'split' is {c.get('split')!r:.30}; protocol "
                                  f"{protocol} takes each class's side from it: one of {', '.join(CATEGORY_SPLITS)}")
        groups[group].append({"id": c["id"], "name": c["name"]})
    return {"protocol": protocol, "kind": "ovr", **groups, "excluded": []}


def _check_categories(coco: dict, partition: dict, path: Path) -> None:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for group in ("base", "novel"):
        for cat in partition[group]:
            if cat["id"] not in names:
                raise CocoFormatError(
                    f"{path}: category {cat['id']} ({cat['name']}) of protocol {partition['protocol']} "
                    f"is not in this file's categories; is this the dataset the protocol is for?"
                )
            if names[cat["id"]] != cat["name"]:
                raise CocoFormatError(
                    f"{path}: category {cat['id']} is named {names[cat['id']]!r} here but "
                    f"{cat['name']!r} in protocol {partition['protocol']}"
                )


def subset(
    coco: dict,
    category_ids: set[int],
    *,
    keep_all_images: bool = False,
    min_side: int = 0,
    ignored_ids: AbstractSet[int] = frozenset(),
    split_names: dict[int, str] | None = None,
) -> dict:
    """COCO dict restricted to ``category_ids`` (crowd annotations kept, as upstream).

    Images are those with ≥1 kept annotation (or all images with ``keep_all_images``) and
    shorter side ≥ ``min_side``. Annotations of ``ignored_ids`` get ``"ignored_split": 1``.
    """
    anns = []
    for a in coco["annotations"]:
        if a["category_id"] in category_ids:
            a = dict(a)
            if a["category_id"] in ignored_ids:
                a["ignored_split"] = 1
            anns.append(a)
    with_ann = {a["image_id"] for a in anns}
    images = [
        im
        for im in coco["images"]
        if (keep_all_images or im["id"] in with_ann) and min(im["width"], im["height"]) >= min_side
    ]
    kept_images = {im["id"] for im in images}
    anns = [a for a in anns if a["image_id"] in kept_images]
    cats = []
    for c in coco["categories"]:
        if c["id"] in category_ids:
            c = dict(c)
            if split_names:
                c["split"] = split_names[c["id"]]
            cats.append(c)
    out = {k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")}
    out.update(images=images, annotations=anns, categories=cats)
    return out

# every file build_splits can write, whatever the protocol
SPLIT_FILES = ("train_base.json", "val.json", "val_novel.json", "val_base.json", "partition.json", "captions.json")


def build_splits(
    protocol: str,
    train: dict,
    val: dict,
    captions: dict[int, list[str]] | None = None,
    *,
    train_path: Path = Path("train"),
    val_path: Path = Path("val"),
    captions_path: Path = Path("captions"),
    caption_set: Sequence[CaptionedImage] = (),
    caption_set_images: Path = Path("."),
) -> dict[str, Any]:
    """All split files of a protocol, as ``{file name: JSON object}`` (nothing written). ``caption_set``: caption-only
    images (with their sizes) under ``caption_set_images``, added by :func:`add_caption_only_images`."""
    p = get_protocol(protocol)
    if p.splits.lvis_side is not None or p.splits.val_all_unseen:
        if caption_set:
            raise CocoFormatError(f"protocol {p.name} trains a class-agnostic detector and takes no caption-only images")
        return _build_cross_dataset(p, train, val, captions, train_path, val_path)
    if p.splits.category_split:
        partition = category_split_partition(p.name, val["categories"], val_path)
        for group in ("base", "novel"):
            if not partition[group]:
                raise CocoFormatError(f"{val_path}: no {group} category; protocol {p.name} needs both base and novel "
                                      "classes")
        _check_categories(train, {**partition, "novel": []}, train_path)  # a base-only training file will do
    else:
        partition = load_partition(protocol)
        _check_categories(train, partition, train_path)
    _check_categories(val, partition, val_path)
    base = {c["id"] for c in partition["base"]}
    novel = {c["id"] for c in partition["novel"]}
    names = {**{i: "base" for i in base}, **{i: "novel" for i in novel}}
    files: dict[str, Any] = {
        "train_base.json": subset(train, base, min_side=p.splits.min_train_side, split_names=names),
    }
    if p.kind == "ovr":
        files["val.json"] = subset(val, base | novel, split_names=names)
        files["val_novel.json"] = subset(val, novel, split_names=names)
        files["val_base.json"] = subset(val, base, split_names=names)
    else:
        files["val.json"] = subset(val, base | novel, keep_all_images=True, ignored_ids=base, split_names=names)
    files["partition.json"] = partition
    if captions is not None:
        train_ids = [im["id"] for im in files["train_base.json"]["images"]]
        files["captions.json"] = {str(i): captions[i] for i in train_ids if captions.get(i)}
        if captions and not files["captions.json"]:
            raise CocoFormatError(f"{captions_path}: none of its {len(captions)} captioned images is a base-training "
                                  f"image of {train_path}; is it the captions file of the same split?")
    if caption_set:
        add_caption_only_images(files, train, caption_set, caption_set_images)
    return files


def add_caption_only_images(files: dict[str, Any], train: dict, images: Sequence[CaptionedImage], folder: Path) -> None:
    """Caption-only images (docs/cpl.md#27-caption-only-images) join ``train_base.json`` without annotations, as
    ``{"id", "file_name", "width", "height", "caption_only": true, "caption_source"}`` with ids after the largest of
    the training file and absolute file names (so the training image folder finds them), and their captions join
    ``captions.json``."""
    next_id = max((im["id"] for im in train["images"]), default=0) + 1
    captions = files.setdefault("captions.json", {})
    entries = []
    for image_id, im in enumerate(images, next_id):
        if im.width is None or im.height is None:
            raise ValueError(f"caption-only image {im.source} has no size; read the set with its image folder")
        entries.append({"id": image_id, "file_name": os.path.abspath(folder / im.file_name), "width": im.width,
                        "height": im.height, "caption_only": True, "caption_source": im.source})
        captions[str(image_id)] = list(im.captions)
    base = files["train_base.json"]
    base["images"] = base["images"] + entries


def _build_cross_dataset(p: Protocol, train: dict, val: dict, captions: dict[int, list[str]] | None,
                         train_path: Path, val_path: Path) -> dict[str, Any]:
    """Split files of a cross-dataset protocol: train on one file's categories, recall on the other's. COCO <->
    LVIS (docs/protocols.md#15-coco-and-lvis): the LVIS side divided by synset; COCO -> UVO
    (docs/protocols.md#17-coco-and-uvo): every val category unseen."""
    if captions is not None:
        raise CocoFormatError(f"protocol {p.name} trains a class-agnostic detector and takes no captions file")
    if p.splits.val_all_unseen:
        partition = load_partition(p.name, val_categories=val["categories"])
        coco_file, coco_path = train, train_path
    else:
        lvis, lvis_path, coco_file, coco_path = (val, val_path, train, train_path) if p.splits.lvis_side == "val" else (
            train, train_path, val, val_path)
        split_lvis_categories(lvis["categories"], lvis_path, p.name)  # every category has a synset
        partition = load_partition(p.name, lvis_categories=lvis["categories"])
    _check_categories(coco_file, {"protocol": p.name, "base": coco_categories(), "novel": []}, coco_path)
    if not any(a["category_id"] in {c["id"] for c in partition["base"]} for a in train["annotations"]):
        raise CocoFormatError(f"{train_path}: no annotation of the {len(partition['base'])} categories protocol "
                              f"{p.name} trains on; is this the training file of the protocol?")
    base = {c["id"] for c in partition["base"]}
    seen, unseen = {c["id"] for c in partition["eval_seen"]}, {c["id"] for c in partition["eval_unseen"]}
    train_names = {**{i: "base" for i in base}, **{c["id"]: "novel" for c in partition["novel"]}}
    val_names = {**{i: "base" for i in seen}, **{i: "novel" for i in unseen}}
    files: dict[str, Any] = {
        "train_base.json": subset(train, base, min_side=p.splits.min_train_side, split_names=train_names),
        "val.json": subset(val, seen | unseen, keep_all_images=True, ignored_ids=seen, split_names=val_names),
        "partition.json": partition,
    }
    return files


def counts(files: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Image / annotation counts per written COCO file (and caption images)."""
    out = {}
    for name, obj in files.items():
        if name == "partition.json":
            continue
        if name == "captions.json":
            out[name] = {"images": len(obj), "captions": sum(len(v) for v in obj.values())}
        else:
            out[name] = {
                "images": len(obj["images"]),
                "annotations": len(obj["annotations"]),
                "categories": len(obj["categories"]),
            }
    return out


def write_splits(
    protocol: str,
    train_instances: str | Path,
    val_instances: str | Path,
    out_dir: str | Path,
    train_captions: str | Path | None = None,
    caption_set: str | Path | None = None,
    caption_set_images: str | Path | None = None,
) -> dict[str, dict[str, int]]:
    """Read, validate, split and write every file of ``protocol`` into ``out_dir``; return counts.
    ``caption_set`` (with its image folder ``caption_set_images``): caption-only images for CPL's pseudo-label
    branch (:func:`ovis.data.captions.read_caption_set`).

    Everything is read and checked before the first file is written, and each file is written
    atomically, so a bad input leaves no partial output behind.
    """
    train_path, val_path = Path(train_instances), Path(val_instances)
    if (caption_set is None) != (caption_set_images is None):
        raise CocoFormatError("a caption-only set needs both its captions file and its image folder")
    # the split files are trained on and evaluated: every annotation needs what COCOeval reads
    train = read_instances(train_path)
    val = train if val_path == train_path else read_instances(val_path)
    captions = parse_caption_file(train_captions) if train_captions else None
    folder = Path(caption_set_images or ".")
    caption_only = read_caption_set(caption_set, folder) if caption_set is not None else []
    files = build_splits(protocol, train, val, captions, train_path=train_path, val_path=val_path,
                         captions_path=Path(train_captions or "captions"), caption_set=caption_only,
                         caption_set_images=folder)
    out = Path(out_dir)
    for name, obj in files.items():
        write_json_atomic(obj, out / name)
    for name in sorted(set(SPLIT_FILES) - set(files)):  # left by a run of another protocol or without captions
        (out / name).unlink(missing_ok=True)
    return counts(files)


def read_instances(path: str | Path) -> dict:
    """A COCO, LVIS or video-format (UVO) instances file, read and checked as the split files need it (file names;
    ``area`` and ``iscrowd`` on every annotation); CocoFormatError naming the file and the entry otherwise.

    A video-format file (UVO's VideoDenseSet / VideoSparseSet) becomes COCO instances with an image per frame
    (`ovis.data.uvo.frames_as_coco`).

    An LVIS file (categories with ``synset``) is brought to COCO's form first: every annotation gets
    ``iscrowd: 0`` where it has none (LVIS has no crowd regions), and every image with a ``coco_url`` gets
    ``file_name`` = the URL's last two parts (``val2017/000000397133.jpg``), so its image folder is the COCO
    root that holds train2017/ and val2017/ (LVIS v1 has no ``file_name``; v0.5's are COCO 2014 names).
    """
    name = str(path)
    data = read_json(path)
    if is_video_file(data):
        data = frames_as_coco(data, name)
    lvis = is_lvis(data)
    if lvis:
        _lvis_as_coco(data, name)
    validate_coco(data, name, True, EVAL_ANNOTATION_KEYS)
    if lvis:
        check_federated_lists(data, name)
    return data


# what an LVIS image says about the categories it has no annotation of (the LVIS API reads both of every image)
FEDERATED_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")


def check_federated_lists(data: dict, name: str) -> None:
    """Every image of a validated LVIS dict has ``neg_category_ids`` (categories verified absent) and
    ``not_exhaustive_category_ids`` (categories with unannotated instances), each a list of the file's category
    ids, as the LVIS API reads them (docs/protocols.md#16-lvis-federated-labels); CocoFormatError naming the file,
    the image and the key otherwise."""
    cat_ids = {c["id"] for c in data["categories"]}
    for im in data["images"]:
        for key in FEDERATED_KEYS:
            value = im.get(key)
            if type(value) is not list:
                raise CocoFormatError(f"{name}: image {im['id']}: {key!r} is {value!r:.60}, expected a list of "
                                      "category ids (an LVIS image lists the categories verified absent in "
                                      "'neg_category_ids' and those not exhaustively annotated in "
                                      "'not_exhaustive_category_ids')")
            bad = next((c for c in value if not is_coco_id(c) or c not in cat_ids), None)
            if bad is not None:
                raise CocoFormatError(f"{name}: image {im['id']}: {key!r} holds {bad!r:.40}, which is not a "
                                      "category id of this file")


def _lvis_as_coco(data: dict, name: str) -> None:
    for key in ("images", "annotations"):
        if not isinstance(data.get(key, []), list):
            return  # validate_coco names the problem
    for im in data["images"]:
        if isinstance(im, dict) and "coco_url" in im:
            url = im["coco_url"]
            parts = url.rstrip("/").split("/") if isinstance(url, str) else []
            if len(parts) < 2 or not all(parts[-2:]):
                raise CocoFormatError(f"{name}: image {im.get('id')}: coco_url {url!r:.80} has no <folder>/<file> "
                                      "ending to take the file name from")
            im["file_name"] = "/".join(parts[-2:])
    for a in data.get("annotations", []):
        if isinstance(a, dict):
            a.setdefault("iscrowd", 0)


def check_data_files(data: DataConfig) -> None:
    """Read and check every file and folder a recipe's ``data`` section names, as the splits stage will:
    a missing or corrupt one is a CocoFormatError (or FileNotFoundError for an image folder) before any
    stage starts. A demo recipe's files are generated by the splits stage, so nothing is checked."""
    if data.demo:
        return
    for key in ("train_instances", "val_instances"):
        read_instances(data.path(getattr(data, key)))
    if data.train_captions is not None:
        parse_caption_file(data.path(data.train_captions))
    if data.caption_set is not None:
        read_caption_set(data.path(data.caption_set))
    for key in ("train_images", "val_images", "caption_set_images"):
        if getattr(data, key) is None:
            continue
        folder = data.path(getattr(data, key))
        if not folder.is_dir():
            raise FileNotFoundError(f"data.{key}: image folder {folder} not found; check data.root and data.{key}")


def run_splits_stage(recipe: Recipe, run_dir: str | Path, force: bool = False) -> dict[str, dict[str, int]]:
    """Stage 00: generate the demo data if the recipe asks for it, then write ``<run_dir>/splits/``; return
    ``{file: counts}``. A stage of :func:`ovis.stages.execute` whose inputs are the source annotation and
    caption files: skipped (the counts read back) when it finished for this recipe and none of them changed
    since, unless ``force``."""
    data = recipe.data
    train, val, captions = data.path(data.train_instances), data.path(data.val_instances), data.path(data.train_captions)
    caption_set = data.path(data.caption_set)
    out = RunLayout(run_dir).stage("splits")

    def split(afresh: bool) -> dict[str, dict[str, int]]:  # every run writes the splits afresh
        if data.demo:
            from ovis.data.synthetic import generate_for

            generate_for(data)
        table = write_splits(recipe.splits.protocol, train, val, out, captions, caption_set,
                             data.path(data.caption_set_images))
        recipe.save(out)
        return table

    return execute(recipe, "splits", run_dir, split, force=force,
                   outputs=lambda table: sorted(table) + ["partition.json"],
                   inputs=[p.resolve() for p in (train, val, captions, caption_set) if p is not None],
                   read=lambda record: record["counts"], record=lambda table: {"counts": table})


def format_counts(table: dict[str, dict[str, int]]) -> str:
    lines = [f"{'file':<18} {'images':>8} {'annotations':>12}"]
    for name, c in table.items():
        lines.append(f"{name:<18} {c['images']:>8} {c.get('annotations', c.get('captions', 0)):>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ovis splits", description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", required=True, choices=sorted(protocol_names("splits")))
    ap.add_argument("--train-instances", required=True, type=Path, help="COCO instances JSON (train)")
    ap.add_argument("--val-instances", required=True, type=Path,
                    help="COCO instances JSON (val); LVIS and UVO files (FrameSet or video format) as the protocol needs")
    ap.add_argument("--train-captions", type=Path, help="COCO captions JSON (train), optional")
    ap.add_argument("--caption-set", type=Path,
                    help="caption-only images for CPL (COCO captions JSON, or JSONL of image + captions), optional")
    ap.add_argument("--caption-set-images", type=Path, help="the folder of --caption-set's images")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    args = ap.parse_args(argv)
    try:
        with folder_lock(args.out):  # a second concurrent run into the folder fails at once
            table = write_splits(args.protocol, args.train_instances, args.val_instances, args.out,
                                 args.train_captions, args.caption_set, args.caption_set_images)
    except (CocoFormatError, FolderInUse) as e:
        print(f"ovis splits: error: {e}", file=sys.stderr)
        return 2
    print(f"protocol {args.protocol} -> {args.out}")
    print(format_counts(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())

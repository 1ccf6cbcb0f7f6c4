"""Named category splits (docs/protocols.md#1-data-splits): which classes a model may see in training, and the eval sets.

Two kinds of protocol, each named once (``ovis.protocols``) and used by name everywhere:

- ``ovr`` (open vocabulary, CPL/XPM): base / novel / excluded classes. Train on base annotations;
  evaluate generalized (base + novel) and constrained (novel only, base only). Excluded classes'
  annotations are dropped everywhere (docs/protocols.md#12-split-construction).
- ``open_world`` (OLN/GGN): seen / unseen classes. Train on seen annotations of images with min side
  ≥ 32; evaluate on all val images with seen-class GT flagged ``ignored_split`` (docs/protocols.md#13-voc-split).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Set as AbstractSet
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovis.data.captions import parse_caption_file
from ovis.data.coco import EVAL_ANNOTATION_KEYS, CocoFormatError, load_coco
from ovis.io import write_json_atomic
from ovis.locks import FolderInUse, folder_lock
from ovis.protocols import SPLIT_PROTOCOLS as PROTOCOLS
from ovis.protocols import SplitProtocol as Protocol

if TYPE_CHECKING:
    from ovis.config import DataConfig, Recipe


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def load_partition(protocol: str) -> dict[str, Any]:
    """The protocol's category partition: ``{"protocol", "kind", "base", "novel", "excluded"}``.

    ``base``/``novel`` are lists of ``{"id", "name"}`` (for open-world protocols: seen/unseen).
    """
    p = get_protocol(protocol)
    raw = json.loads((resources.files("ovis.data") / "resources" / p.resource).read_text())
    return {
        "protocol": p.name,
        "kind": p.kind,
        "base": raw[p.base_key],
        "novel": raw[p.novel_key],
        "excluded": raw.get("excluded", []),
    }


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
) -> dict[str, Any]:
    """All split files of a protocol, as ``{file name: JSON object}`` (nothing written)."""
    partition = load_partition(protocol)
    p = get_protocol(protocol)
    _check_categories(train, partition, train_path)
    _check_categories(val, partition, val_path)
    base = {c["id"] for c in partition["base"]}
    novel = {c["id"] for c in partition["novel"]}
    names = {**{i: "base" for i in base}, **{i: "novel" for i in novel}}
    files: dict[str, Any] = {
        "train_base.json": subset(train, base, min_side=p.min_train_side, split_names=names),
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
) -> dict[str, dict[str, int]]:
    """Read, validate, split and write every file of ``protocol`` into ``out_dir``; return counts.

    Everything is read and checked before the first file is written, and each file is written
    atomically, so a bad input leaves no partial output behind.
    """
    train_path, val_path = Path(train_instances), Path(val_instances)
    # the split files are trained on and evaluated: every annotation needs what COCOeval reads
    train = load_coco(train_path, need_file_names=True, annotation_keys=EVAL_ANNOTATION_KEYS)
    val = train if val_path == train_path else load_coco(val_path, need_file_names=True,
                                                         annotation_keys=EVAL_ANNOTATION_KEYS)
    captions = parse_caption_file(train_captions) if train_captions else None
    files = build_splits(protocol, train, val, captions, train_path=train_path, val_path=val_path,
                         captions_path=Path(train_captions or "captions"))
    out = Path(out_dir)
    for name, obj in files.items():
        write_json_atomic(obj, out / name)
    for name in sorted(set(SPLIT_FILES) - set(files)):  # left by a run of another protocol or without captions
        (out / name).unlink(missing_ok=True)
    return counts(files)


def check_data_files(data: DataConfig) -> None:
    """Read and check every file and folder a recipe's ``data`` section names, as the splits stage will:
    a missing or corrupt one is a CocoFormatError (or FileNotFoundError for an image folder) before any
    stage starts. A demo recipe's files are generated by the splits stage, so nothing is checked."""
    if data.demo:
        return
    for key in ("train_instances", "val_instances"):
        load_coco(data.path(getattr(data, key)), need_file_names=True, annotation_keys=EVAL_ANNOTATION_KEYS)
    if data.train_captions is not None:
        parse_caption_file(data.path(data.train_captions))
    for key in ("train_images", "val_images"):
        folder = data.path(getattr(data, key))
        if not folder.is_dir():
            raise FileNotFoundError(f"data.{key}: image folder {folder} not found; check data.root and data.{key}")


def run_splits_stage(recipe: Recipe, run_dir: str | Path, force: bool = False) -> dict[str, dict[str, int]]:
    """Stage 00: generate the demo data if the recipe asks for it, then write ``<run_dir>/splits/``.

    Skips the work when the stage already finished for this recipe hash (unless ``force``).
    """
    from ovis.runs import mark_stage_done, stage_dir, stage_done

    out = stage_dir(run_dir, "splits")
    if not force and stage_done(run_dir, "splits", recipe):
        return json.loads((out / "stage.json").read_text())["counts"]
    data = recipe.data
    if data.demo:
        from ovis.data.synthetic import generate_demo_dataset

        generate_demo_dataset(data.root, seed=data.demo_seed, num_train=data.demo_num_train,
                              num_val=data.demo_num_val, image_size=data.demo_image_size)
    train, val, captions = data.path(data.train_instances), data.path(data.val_instances), data.path(data.train_captions)
    table = write_splits(recipe.splits.protocol, train, val, out, captions)
    recipe.save(out)
    # the source files are inputs: the stage re-runs when one of them changes
    inputs = [p.resolve() for p in (train, val, captions) if p is not None]
    mark_stage_done(run_dir, "splits", recipe, sorted(table) + ["partition.json"], inputs, counts=table)
    return table


def format_counts(table: dict[str, dict[str, int]]) -> str:
    lines = [f"{'file':<18} {'images':>8} {'annotations':>12}"]
    for name, c in table.items():
        lines.append(f"{name:<18} {c['images']:>8} {c.get('annotations', c.get('captions', 0)):>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ovis splits", description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS))
    ap.add_argument("--train-instances", required=True, type=Path, help="COCO instances JSON (train)")
    ap.add_argument("--val-instances", required=True, type=Path, help="COCO instances JSON (val)")
    ap.add_argument("--train-captions", type=Path, help="COCO captions JSON (train), optional")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    args = ap.parse_args(argv)
    try:
        with folder_lock(args.out):  # a second concurrent run into the folder fails at once
            table = write_splits(args.protocol, args.train_instances, args.val_instances, args.out,
                                 args.train_captions)
    except (CocoFormatError, FolderInUse) as e:
        print(f"ovis splits: error: {e}", file=sys.stderr)
        return 2
    print(f"protocol {args.protocol} -> {args.out}")
    print(format_counts(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())

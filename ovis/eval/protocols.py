"""The named evaluation protocols: how each is evaluated (their settings live in ``ovis.protocols``).

Kinds:
- ``coco``: COCOeval's 12 standard stats (computed by `ovis.eval.ap`, equal to COCOeval).
- ``ovr`` (CPL/XPM, docs/protocols.md#41-open-vocabulary-ap): the 12 stats plus AP50 averaged over the base, novel and
  base+novel categories of the split.
- ``open_world`` (OLN/GGN, docs/protocols.md#42-open-world-ar): class-agnostic AR@k with seen-class GT ignored and
  seen-class hits removed from the budget, AR_s/m/l@100 and OLN's AUC. The COCO <-> LVIS protocols
  (docs/protocols.md#15-coco-and-lvis) take their seen classes from the GT's own categories when no partition is
  given: on LVIS GT those whose synset is a COCO class's, on COCO GT none; ``coco_uvo``
  (docs/protocols.md#17-coco-and-uvo) sees none of a UVO file's, which may be a video-format file read per frame.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ovis.data.coco import EVAL_ANNOTATION_KEYS, CocoFormatError, is_coco_id, read_json, validate_coco
from ovis.data.uvo import frames_as_coco, is_video_file
from ovis.eval.ap import STAT_NAMES, ap50_of, ap50_per_class, coco_eval
from ovis.eval.io import EvalInputError, check_detections, load_detections, load_gt
from ovis.eval.recall import AUC_BUDGETS, compute_recall, recall_metrics
from ovis.protocols import Protocol, get_protocol

# eval_seen/eval_unseen first: a cross-dataset partition.json holds the val file's classes there and the
# training file's in base/novel
_PARTITION_KEYS = (("eval_seen", "eval_unseen"), ("base", "novel"), ("voc", "nonvoc"), ("person", "nonperson"),
                   ("seen", "unseen"))


def partition_ids(data: Any, name: str = "partition") -> tuple[list[int], list[int]]:
    """(base/seen ids, novel/unseen ids) of a partition: keys eval_seen/eval_unseen, base/novel, voc/nonvoc,
    person/nonperson or seen/unseen (the first pair present), each a list of category ids or {"id", "name"} objects;
    EvalInputError naming `name` otherwise."""
    if not isinstance(data, dict):
        raise EvalInputError(f"{name}: a partition is a JSON object with base/novel category lists, "
                             f"got a {type(data).__name__}; use the splits stage's partition.json")
    keys = next((pair for pair in _PARTITION_KEYS if all(k in data for k in pair)), None)
    if keys is None:
        raise EvalInputError(f"{name}: a partition needs keys base/novel (or voc/nonvoc, seen/unseen); "
                             f"got {sorted(map(str, data))}")
    ids: list[list[Any]] = []  # category ids once each list is checked
    for key in keys:
        entries = data[key]
        if not isinstance(entries, list):
            raise EvalInputError(f"{name}: partition {key!r} is {entries!r:.60}, expected a list of categories")
        ids.append([e.get("id") if isinstance(e, dict) else e for e in entries])
        bad = next((i for i, c in enumerate(ids[-1]) if not is_coco_id(c)), None)
        if bad is not None:
            raise EvalInputError(f"{name}: partition {key!r}[{bad}] is {entries[bad]!r:.60}, "
                                 "expected a category id or an object with an integer 'id'")
    return ids[0], ids[1]


def split_category_ids(protocol: Protocol, partition: dict | None, gt: dict | None = None,
                       gt_name: str = "the GT") -> tuple[list[int], list[int]] | None:
    """(base/seen ids, novel/unseen ids) from `partition` or the protocol's resource file (for a COCO <-> LVIS
    protocol: from the categories of `gt`, see `synset_split`; for COCO -> UVO: none seen, every category of `gt`
    unseen); None when neither exists (see `partition_ids`)."""
    if partition is not None:
        return partition_ids(partition)
    settings = protocol.evaluation
    if settings.gt_all_unseen and gt is not None:
        return [], [c["id"] for c in gt["categories"]]
    if settings.synset_gt is not None and gt is not None:
        return synset_split(protocol, gt, gt_name)
    if settings.split_resource:
        res = resources.files("ovis.data").joinpath("resources", settings.split_resource)
        if res.is_file():
            return partition_ids(json.loads(res.read_text(encoding="utf-8")), str(res))
    return None


def _no_split_source(protocol: Protocol) -> str:
    """Why ``protocol`` has no class split without a partition, and how to give one (the end of an error line)."""
    resource = protocol.evaluation.split_resource
    why = (f"its split file ovis/data/resources/{resource} is missing from the installed package"
           if resource else "it has no built-in split, it reads one from a partition file")
    return (f"{why}; pass the partition.json that `ovis splits --protocol {protocol.name} --out DIR` writes "
            "(runs/<recipe>/splits/partition.json in a run): `ovis eval --partition PATH`, or partition= in Python")


def synset_split(protocol: Protocol, gt: dict, gt_name: str = "the GT") -> tuple[list[int], list[int]]:
    """(seen ids, unseen ids) of a COCO <-> LVIS protocol's GT: on LVIS GT (``synset_gt="lvis"``) the
    categories whose synset is a COCO class's are seen, the rest unseen; on COCO GT (``"coco"``) nothing
    is seen and COCO's 80 classes are unseen (checked by id and name). EvalInputError naming `gt_name`."""
    from ovis.data.splits import coco_categories, split_lvis_categories

    try:
        if protocol.evaluation.synset_gt == "lvis":
            with_coco, without = split_lvis_categories(gt["categories"], gt_name, protocol.name)
            return [c["id"] for c in with_coco], [c["id"] for c in without]
    except CocoFormatError as e:
        raise EvalInputError(str(e)) from None
    names = {c["id"]: c["name"] for c in gt["categories"]}
    coco = coco_categories()
    bad = next((c for c in coco if names.get(c["id"]) != c["name"]), None)
    if bad is not None:
        here = f"is named {names[bad['id']]!r} there" if bad["id"] in names else "is missing there"
        raise EvalInputError(f"{gt_name}: COCO category {bad['id']} ({bad['name']}) {here}; protocol {protocol.name} "
                             "evaluates on COCO instances (e.g. instances_val2017.json or the splits' val.json)")
    return [], [c["id"] for c in coco]


def _read_gt(gt: str | Path | dict) -> tuple[Any, str]:
    """(parsed GT, its name for messages) of a GT path or dict."""
    if isinstance(gt, dict):
        return gt, "<gt dict>"
    path = Path(gt)
    if not path.is_file():
        raise EvalInputError(f"ground-truth file {path} does not exist")
    try:
        return read_json(path), str(path)
    except CocoFormatError as e:
        raise EvalInputError(str(e)) from None


def load_lvis_gt(gt: str | Path | dict) -> dict:
    """An LVIS (or COCO) GT file or dict as `load_gt` returns it, with ``iscrowd: 0`` on every annotation
    that has none (LVIS has no crowd regions) and the federated lists of every LVIS image checked
    (`check_federated_lists`); the caller's dict is not changed."""
    from ovis.data.splits import check_federated_lists, is_lvis

    data, name = _read_gt(gt)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = {**data, "annotations": [{"iscrowd": 0, **a} if isinstance(a, dict) else a
                                        for a in data["annotations"]]}
    try:
        validate_coco(data, name, annotation_keys=EVAL_ANNOTATION_KEYS)
        if is_lvis(data):
            check_federated_lists(data, name)
    except CocoFormatError as e:
        raise EvalInputError(str(e)) from None
    return data


def load_frames_gt(gt: str | Path | dict) -> dict:
    """A GT file or dict as `load_gt` returns it; a video-format file (UVO's VideoDenseSet / VideoSparseSet) is
    read as COCO instances with an image per frame (`ovis.data.uvo.frames_as_coco`)."""
    data, name = _read_gt(gt)
    try:
        if is_video_file(data):
            data = frames_as_coco(data, name)
        validate_coco(data, name, annotation_keys=EVAL_ANNOTATION_KEYS)
    except CocoFormatError as e:
        raise EvalInputError(str(e)) from None
    return data


def read_partition(path: str | Path) -> dict:
    """A partition file (the splits stage's partition.json), read and checked; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"partition file {path} does not exist")
    try:
        data = read_json(path)
    except CocoFormatError as e:
        raise EvalInputError(str(e)) from None
    partition_ids(data, str(path))
    return data


def _load_partition(partition: dict | str | Path | None) -> dict | None:
    if partition is None:
        return None
    if isinstance(partition, dict):
        partition_ids(partition)
        return partition
    return read_partition(partition)


def _evaluate_ovr(
    protocol: Protocol, gt: dict, dets: list[dict], iou_type: str, partition: dict | None, backend: str
) -> tuple[dict, dict]:
    split = split_category_ids(protocol, partition)
    if split is None:
        raise EvalInputError(f"{protocol.name}: no base/novel split known: {_no_split_source(protocol)}")
    base, novel = split
    ev = coco_eval(gt, dets, iou_type, backend)
    out = {
        "AP50_base": ap50_of(ev, base),
        "AP50_novel": ap50_of(ev, novel),
        "AP50_all": ap50_of(ev, base + novel),
        "stats": ev.stats,
    }
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_class = ap50_per_class(ev, names)
    extra = {
        "per_class_AP50": per_class,
        "base_names": [names[c] for c in base if c in names],
        "novel_names": [names[c] for c in novel if c in names],
    }
    return out, extra


def flag_seen(gt: dict, seen_ids: set[int]) -> dict:
    """Copy of `gt` whose annotations all carry `ignored_split` (1 if flagged already or of a seen category)."""
    out = dict(gt)
    out["annotations"] = [
        {**a, "ignored_split": int(bool(a.get("ignored_split", 0)) or a["category_id"] in seen_ids)}
        for a in gt["annotations"]
    ]
    return out


def _evaluate_open_world(
    protocol: Protocol, gt: dict, dets: list[dict], iou_type: str, partition: dict | None, backend: str,
    gt_name: str = "the GT",
) -> tuple[dict, dict]:
    split = split_category_ids(protocol, partition, gt, gt_name)
    flagged = any(a.get("ignored_split", 0) for a in gt["annotations"])
    if split is None and not flagged:
        raise EvalInputError(
            f"{protocol.name}: no seen classes known: the GT has no `ignored_split` flags and {_no_split_source(protocol)}"
        )
    seen = set(split[0]) if split else set()
    gt = flag_seen(gt, seen)
    max_dets = protocol.evaluation.max_dets
    recall = compute_recall(gt, dets, iou_type, max_dets, backend)
    with_auc = set(AUC_BUDGETS[1:]) <= set(max_dets)
    metrics = recall_metrics(recall, max_dets, with_auc)
    n_seen = sum(a["ignored_split"] for a in gt["annotations"])
    extra = {
        "recall": recall,
        "max_dets": list(max_dets),
        "seen_category_ids": sorted(seen),
        "num_seen_gt": int(n_seen),
        "num_unseen_gt": int(len(gt["annotations"]) - n_seen),
    }
    return metrics, extra


def evaluate(
    protocol: str,
    gt: str | Path | dict,
    detections: str | Path | list,
    iou_type: str = "segm",
    partition: dict | str | Path | None = None,
    backend: str = "fast",
    segm_area: str = "mask",
) -> dict:
    """Evaluate detections under a named protocol.

    gt: COCO instances json (path or dict); detections: result list, json file, or rank shards
    (folder with detections.rank*.json, or a missing X.json with X.rank*.json beside it).
    partition: dict/path with base/novel category lists (overrides the protocol's resource file).
    backend: "fast" (vectorised, default) or "pycocotools" (COCOeval, the reference); same numbers.
    segm_area: what sizes a segm detection for APs/APm/APl: "mask" (its mask area, as detectron2) or
    "box" (its bbox, as pycocotools does for results that carry one); AP protocols only.
    Returns {"protocol", "iou_type", "backend", "metrics", "notes", "num_images",
    "num_detections", ...kind-specific extras}. Metric values are fractions (pycocotools style).
    """
    proto = get_protocol(protocol)
    if iou_type not in ("segm", "bbox"):
        raise EvalInputError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    if backend not in ("fast", "pycocotools"):
        raise EvalInputError(f"backend must be 'fast' or 'pycocotools', got {backend!r}")
    if segm_area not in ("mask", "box"):
        raise EvalInputError(f"segm_area must be 'mask' or 'box', got {segm_area!r}")
    if segm_area == "box" and proto.kind == "open_world":
        raise EvalInputError(f"segm_area=box applies to the AP protocols, not {proto.name} (its recall uses mask areas)")
    with _cyclic_gc_paused():
        return _evaluate(proto, gt, detections, iou_type, partition, backend, segm_area)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the duration: an evaluation builds some 10**5-10**6
    containers (the JSON, clean copies, per-image lists) that hold no cycles, and the collector's passes
    over them cost a quarter of an AR@k run with 79,000 detections; it is back on (if it was) after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _evaluate(proto: Protocol, gt: str | Path | dict, detections: str | Path | list, iou_type: str,
              partition: dict | str | Path | None, backend: str, segm_area: str) -> dict:
    if proto.evaluation.synset_gt == "lvis":
        gt_data = load_lvis_gt(gt)
    else:
        gt_data = load_frames_gt(gt) if proto.evaluation.gt_all_unseen else load_gt(gt)
    source = str(detections) if not isinstance(detections, list) else "detections"
    dets = check_detections(load_detections(detections), gt_data, iou_type, source,
                            segm_area if iou_type == "segm" else "mask")
    part = _load_partition(partition)
    notes: list[str] = []
    if not dets:
        notes.append("empty detection list: every metric is 0 (or -1 where the GT has no instances)")
    metrics: dict[str, Any]  # None for undefined metrics below
    extra: dict[str, Any]
    if proto.kind == "coco":
        metrics, extra = {"stats": coco_eval(gt_data, dets, iou_type, backend).stats}, {}
    elif proto.kind == "ovr":
        metrics, extra = _evaluate_ovr(proto, gt_data, dets, iou_type, part, backend)
    else:
        metrics, extra = _evaluate_open_world(proto, gt_data, dets, iou_type, part, backend,
                                              str(gt) if isinstance(gt, (str, Path)) else "the GT")
    # pycocotools' -1 means "no GT to score": null, never a number to average ("stats" keeps its layout)
    undefined = sorted(k for k, v in metrics.items() if isinstance(v, float) and v < 0)
    metrics = {k: None if k in undefined else v for k, v in metrics.items()}
    if undefined:
        where = gt if isinstance(gt, (str, Path)) else "the GT"
        notes.append(f"no ground truth for {', '.join(undefined)} (no such instances in {where}): reported as null")
    return {
        "protocol": proto.name,
        "iou_type": iou_type,
        "backend": backend,
        "metrics": metrics,
        "segm_area": segm_area if iou_type == "segm" else None,
        "notes": notes,
        "num_images": len(gt_data["images"]),
        "num_detections": len(dets),
        **extra,
    }


def metrics_markdown(result: dict) -> str:
    """A markdown table of a result's metrics (fractions and percent)."""
    lines = [
        f"# {result['protocol']} ({result['iou_type']})",
        "",
        f"backend: {result.get('backend', 'pycocotools')}; images: {result.get('num_images', '?')}; "
        f"detections: {result.get('num_detections', '?')}"
        + (f"; segm size ranges from the {result['segm_area']} area" if result.get("segm_area") else ""),
        "",
        "| metric | value | % |",
        "|---|---|---|",
    ]
    for key, value in result["metrics"].items():
        if key == "stats":
            for name, v in zip(STAT_NAMES, value):
                lines.append(f"| {name} | {v:.6f} | {100 * v:.1f} |")
        elif value is None:
            lines.append(f"| {key} | null (no GT) | – |")
        else:
            lines.append(f"| {key} | {value:.6f} | {100 * value:.1f} |")
    for note in result.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def jsonable(result: dict) -> dict:
    """The result without numpy arrays (recall array as nested lists)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}

"""CPL cross-modal pseudo masks (docs/cpl.md#23-pseudo-labels): caption words → top-1 teacher region → teacher mask.

For every word w found in an image's captions (``ovis.data.captions``; vocabulary = LVIS v1
synonyms, or the dataset's own base + novel category names and synonyms):

- proposals: the frozen teacher's RPN in eval mode (≤ ``rpn_post_nms_top_n_test`` boxes);
- region embeddings ``v_p = projection(f_p)`` (not normalised) and each proposal's
  class-agnostically regressed, clipped box;
- word embedding ``t_w``: L2-normalised static token embedding of the synonym string;
- ``s(p, w) = ⟨v_p, t_w⟩``; ``p*(w) = argmax_p s`` (top-1, no threshold, no NMS; several words may
  pick the same proposal);
- pseudo box = regressed box of p*; pseudo mask = teacher mask head on that box, pasted into the
  image and binarised at 0.5 (upstream predicts the mask on a twice-regressed box — a quirk not
  reproduced: here mask and box agree).

Each pseudo annotation keeps ``score = sigmoid(s(p*, w))`` (upstream's stored confidence) and
``uncertainty = 1 − mean |2·p − 1|`` over the teacher's M×M mask probabilities p of the pseudo
box: 0 when every mask pixel is decided (p ∈ {0, 1}), 1 when all are at 0.5. It measures the
teacher's own mask ambiguity — the noise the student's σ-head models — and unlike the word-score
margin it does not depend on how many proposals resemble each other. Nothing is filtered.

Label = the word's category: the dataset category id (dataset vocabulary), or
``10000 + lvis_id`` (LVIS vocabulary, ``LVIS_ID_OFFSET``: never clashes with COCO's 1..90), with
``lvis_id``, ``word`` and ``category_name`` recorded. The offline pseudo stage of CPL
writes ``pseudo/train_pseudo.json`` (train_base GT + pseudo annotations, the pseudo vocabulary
as extra categories and as ``pseudo_vocabulary`` = its category ids in classifier order) and
``pseudo/stats.json``; :class:`PseudoLabeler` is the same computation for online use.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from ovis.data.captions import (
    Vocabulary,
    find_words,
    load_lvis_categories,
    lvis_matches,
)
from ovis.data.coco import CocoFormatError, ann_to_rle, load_coco, masks_to_rles, read_json
from ovis.data.masks import mask_iou
from ovis.io import write_json_atomic
from ovis.models.text import TextEncoder
from ovis.pseudo.detectors import class_embeddings, load_model, text_encoder
from ovis.pseudo.shards import Shard, Sharding
from ovis.runs import RunLayout, stage_hash

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from ovis.config import Recipe
    from ovis.models.heads import EmbeddingRoIHeads
    from ovis.viz.widgets import MaskBrowser

__all__ = [
    "LVIS_ID_OFFSET",
    "PseudoLabeler",
    "PseudoVocabulary",
    "gt_by_image_and_class",
    "hits_gt",
    "mask_uncertainty",
    "merge_pseudo",
    "novel_category_map",
    "pseudo_browser",
    "pseudo_figures",
    "pseudo_image_ids",
    "pseudo_vocabulary",
    "pseudo_sharding",
    "label_shard",
    "select_proposals",
]

LVIS_ID_OFFSET = 10000
MASK_THRESHOLD = 0.5
SAVE_EVERY_S = 60.0  # how often a shard appends its finished images to its progress file


# --------------------------------------------------------------------------------------------
# the computation


def select_proposals(regions: Tensor, words: Tensor) -> tuple[Tensor, Tensor]:
    """Top-1 proposal per word: ``regions [R, d]`` (unnormalised), ``words [W, d]`` →
    ``(index [W], score [W])`` with ``score = ⟨regions[index], word⟩`` (raw dot product)."""
    if regions.ndim != 2 or words.ndim != 2 or regions.shape[1] != words.shape[1]:
        raise ValueError(f"select_proposals: need regions [R, d] and words [W, d], got {list(regions.shape)}, {list(words.shape)}")
    if len(regions) == 0:
        raise ValueError("select_proposals: no proposals to choose from")
    scores, index = (regions @ words.T).max(0)
    return index, scores


def mask_uncertainty(probs: Tensor) -> Tensor:
    """``1 − mean |2p − 1|`` per mask over its pixels: ``probs [N, ..., M, M]`` in 0..1 → ``[N]``."""
    return 1.0 - (2 * probs - 1).abs().flatten(1).mean(1)


class PseudoLabeler:
    """Pseudo masks from a frozen teacher (an ovis embedding detector) for images with captions.

    ``vocab``: caption vocabulary; ``encoder``: the text encoder of the teacher's embedding space.
    :meth:`label` returns per image ``boxes [W, 4]`` (input-image pixels, XYXY), ``masks`` bool
    ``[W, H, W_img]``, ``scores`` (sigmoid), ``logits``, ``uncertainty``, ``proposal_index``
    (into the teacher's proposals), ``words`` and ``category_ids`` (the vocabulary's ids) — one
    entry per word found; an image whose captions match no word gets empty tensors.
    """

    def __init__(self, teacher: MaskRCNN, vocab: Vocabulary, encoder: TextEncoder) -> None:
        self.teacher, self.vocab, self.encoder = teacher, vocab, encoder
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    def to(self, device: torch.device | str) -> PseudoLabeler:
        self.teacher.to(device)
        return self

    def word_embeddings(self, words: Sequence[str]) -> Tensor:
        """L2-normalised static token embeddings ``[W, d]`` of the synonym strings."""
        return self.encoder.encode(list(words), normalize=True)

    @torch.no_grad()
    def label(self, images: Sequence[Tensor], captions: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
        if len(images) != len(captions):
            raise ValueError(f"PseudoLabeler.label: {len(images)} images but {len(captions)} caption lists")
        t = self.teacher
        t.eval()
        device = next(t.parameters()).device
        matches = [find_words(list(c), self.vocab) for c in captions]
        out = [self._empty(im) for im in images]
        todo = [i for i, m in enumerate(matches) if m]
        if not todo:
            return out
        imgs = [images[i].to(device) for i in todo]
        state, regions, boxes = self.proposals(imgs)
        picked, per_image = [], []
        for k, i in enumerate(todo):
            words = [m.word for m in matches[i]]
            index, logit = select_proposals(regions[k], self.word_embeddings(words).to(regions[k]))
            picked.append(boxes[k][index])
            per_image.append((words, [m.category_id for m in matches[i]], index, logit))
        probs, pasted = self.masks(state, picked)
        for k, i in enumerate(todo):
            words, cats, index, logit = per_image[k]
            out[i] = {
                "boxes": pasted[k]["boxes"].cpu(),
                "masks": (pasted[k]["masks"][:, 0] > MASK_THRESHOLD).cpu(),
                "scores": logit.sigmoid().cpu(),
                "logits": logit.cpu(),
                "uncertainty": mask_uncertainty(probs[k]).cpu(),
                "proposal_index": index.cpu(),
                "words": words,
                "category_ids": cats,
            }
        return out

    @torch.no_grad()
    def proposals(self, images: Sequence[Tensor]) -> tuple[tuple, list[Tensor], list[Tensor]]:
        """The teacher's test-time proposals of ``images`` (on its device): ``(state, regions, boxes)``
        with per image ``regions [R, d]`` (unnormalised embeddings) and ``boxes [R, 4]`` (resized-image
        pixels); ``state`` is what :meth:`masks` needs."""
        t = self.teacher
        il, _ = t.transform(list(images))
        feats = t.backbone(il.tensors)
        proposals, _ = t.rpn(il, feats)
        heads = cast("EmbeddingRoIHeads", t.roi_heads)
        regions, boxes = heads.region_embeddings_and_boxes(feats, proposals, il.image_sizes)
        sizes = [tuple(im.shape[-2:]) for im in images]
        return (il, feats, sizes), list(regions.split([len(b) for b in boxes])), boxes

    @torch.no_grad()
    def masks(self, state: tuple, boxes: Sequence[Tensor]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        """Mask-head probabilities ``[N, 1, M, M]`` of ``boxes`` (from :meth:`proposals`) per image, and
        boxes and masks pasted at input-image size (``{"boxes", "masks" [N, 1, H, W]}``)."""
        il, feats, sizes = state
        probs = cast("EmbeddingRoIHeads", self.teacher.roi_heads).predict_masks(feats, list(boxes), il.image_sizes)
        transform = cast("GeneralizedRCNNTransform", self.teacher.transform)
        pasted = transform.postprocess([{"boxes": b, "masks": p} for b, p in zip(boxes, probs)], il.image_sizes, sizes)
        return probs, pasted

    @staticmethod
    def _empty(image: Tensor) -> dict[str, Any]:
        h, w = image.shape[-2:]
        z = torch.zeros(0)
        return {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, h, w, dtype=torch.bool), "scores": z,
                "logits": z, "uncertainty": z, "proposal_index": torch.zeros(0, dtype=torch.int64),
                "words": [], "category_ids": []}


# --------------------------------------------------------------------------------------------
# vocabulary and image list of a run


@dataclass
class PseudoVocabulary:
    """The pseudo-label vocabulary of a recipe: caption matcher, and its categories as written to
    ``train_pseudo.json`` (``id`` = file category id, in classifier order)."""

    kind: str  # "lvis" | "dataset"
    vocab: Vocabulary
    categories: list[dict] = field(default_factory=list)

    def file_id(self, category_id: int) -> int:
        """Vocabulary category id → category id in ``train_pseudo.json``."""
        return category_id + LVIS_ID_OFFSET if self.kind == "lvis" else category_id

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.categories]


def pseudo_vocabulary(recipe: Recipe, run_dir: str | Path) -> PseudoVocabulary:
    """``pseudo.vocabulary``: ``lvis`` (all 1203 LVIS v1 categories and synonyms) or ``dataset``
    (the base + novel categories of ``splits/val.json`` with their names and ``synonyms``)."""
    kind = recipe.pseudo.vocabulary
    if kind == "lvis":
        cats = load_lvis_categories()
        return PseudoVocabulary(kind, Vocabulary.from_lvis(cats), [
            {"id": LVIS_ID_OFFSET + int(c["id"]), "name": c["name"], "lvis_id": int(c["id"]), "pseudo_vocabulary": True}
            for c in cats])
    if kind == "dataset":
        path = RunLayout(run_dir).split("val.json")
        if not path.is_file():
            raise FileNotFoundError(f"pseudo.vocabulary=dataset: {path} not found; run the splits stage first")
        cats = load_coco(path)["categories"]
        keep = ("id", "name", "supercategory", "synonyms", "split")
        return PseudoVocabulary(kind, Vocabulary.from_categories(cats), [
            {**{k: c[k] for k in keep if k in c}, "pseudo_vocabulary": True} for c in cats])
    raise ValueError(f"pseudo.vocabulary={kind!r}: use 'lvis' or 'dataset'")


def pseudo_image_ids(recipe: Recipe, run_dir: str | Path) -> tuple[list[int], dict[int, list[str]]]:
    """train_base image ids (file order) with ≥ 1 caption, capped at ``pseudo.max_images``; and
    their captions."""
    layout = RunLayout(run_dir)
    for f in ("train_base.json", "captions.json"):
        if not layout.split(f).is_file():
            raise FileNotFoundError(f"pseudo: {layout.split(f)} not found; run the splits stage (with data.train_captions)")
    caps = {int(k): v for k, v in _captions_json(layout.split("captions.json")).items() if v}
    images = load_coco(layout.split("train_base.json"))["images"]
    ids = [im["id"] for im in images if im["id"] in caps]
    if recipe.pseudo.max_images is not None:
        ids = ids[: recipe.pseudo.max_images]
    return ids, {i: caps[i] for i in ids}


def _captions_json(path: Path) -> dict[str, list[str]]:
    """``splits/captions.json`` (image id → captions, as the splits stage writes it), checked."""
    data = read_json(path)
    for key, caps in data.items() if isinstance(data, dict) else [("top level", data)]:
        if not key.isdigit() or not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise CocoFormatError(f"{path}: entry {key!r}: expected an image id mapped to a list of caption strings "
                                  "(re-run the splits stage)")
    return data


def pseudo_sharding(recipe: Recipe, run_dir: str | Path, num_shards: int, image_ids: list[int]) -> Sharding:
    """The label shards of ``num_shards`` over ``image_ids`` (``pseudo/shards/labels.<s>-of-<n>.json``), keyed by
    the pseudo stage's recipe hash; a record per image: ``{"image_id", "words", "annotations"}``."""
    return Sharding(RunLayout(run_dir).stage("pseudo") / "shards", "labels", num_shards, stage_hash(recipe, "pseudo"),
                    image_ids)


def _annotations(image_id: int, res: Mapping[str, Any], pv: PseudoVocabulary) -> list[dict]:
    """One image's labeler output → pseudo annotations (no ``id`` yet)."""
    if not res["words"]:
        return []
    boxes = res["boxes"].tolist()
    rles = masks_to_rles(res["masks"].numpy())
    areas = res["masks"].flatten(1).sum(1).tolist()
    anns = []
    for j, (word, cid) in enumerate(zip(res["words"], res["category_ids"])):
        x1, y1, x2, y2 = boxes[j]
        ann = {"image_id": image_id, "category_id": pv.file_id(cid),
               "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
               "area": float(areas[j]), "segmentation": rles[j], "iscrowd": 0, "pseudo": True,
               "score": round(float(res["scores"][j]), 6), "uncertainty": round(float(res["uncertainty"][j]), 6),
               "word": word, "category_name": pv.vocab.category_names[cid]}
        if pv.kind == "lvis":
            ann["lvis_id"] = cid
        anns.append(ann)
    return anns


def build_labeler(recipe: Recipe, run_dir: str | Path, device: str | torch.device = "cpu") -> PseudoLabeler:
    """The frozen teacher of ``<run_dir>/teacher/model_final.pth`` as a :class:`PseudoLabeler`."""
    teacher = cast("MaskRCNN", load_model(recipe, run_dir, "teacher").to(device))
    return PseudoLabeler(teacher, pseudo_vocabulary(recipe, run_dir).vocab, text_encoder(recipe))


def label_shard(recipe: Recipe, run_dir: Path, part: Shard, captions: Mapping[int, list[str]],
                 stream: Callable[[str], None], device: str | None, labeler: PseudoLabeler | None) -> None:
    """Label the images of ``part`` that its progress file lacks, appending them to it every ``SAVE_EVERY_S``
    seconds, then finish the shard."""
    from ovis.engine.dist import resolve_device
    from ovis.viz.draw import load_image

    done = part.read_progress(stream)
    todo = [i for i in part.image_ids if i not in done]
    stream(f"pseudo: shard {part.index}/{part.sharding.num_shards}: {len(part.image_ids)} images, "
           f"{len(part.image_ids) - len(todo)} already done")
    # before the first write: a teacher that cannot be loaded leaves the shard's files as they were
    lab = (labeler or build_labeler(recipe, run_dir, resolve_device(device or recipe.launch.device))) if todo else None
    part.begin(done)
    if lab is not None:
        pv = pseudo_vocabulary(recipe, run_dir)
        image_root = recipe.data.path(recipe.data.train_images)
        infos = {im["id"]: im for im in json.loads(RunLayout(run_dir).split("train_base.json").read_text())["images"]}
        t_save = time.monotonic()
        buffer: list[dict] = []
        for k, image_id in enumerate(todo):
            image = torch.from_numpy(load_image(image_root, infos[image_id]).transpose(2, 0, 1).copy()).float().div_(255)
            res = lab.label([image], [captions[image_id]])[0]
            done[image_id] = {"image_id": image_id, "words": res["words"], "annotations": _annotations(image_id, res, pv)}
            buffer.append(done[image_id])
            if time.monotonic() - t_save > SAVE_EVERY_S:
                part.append(buffer)
                buffer.clear()
                t_save = time.monotonic()
                stream(f"pseudo: shard {part.index}: {k + 1}/{len(todo)} images")
    part.finish(done)


def merge_pseudo(recipe: Recipe, run_dir: str | Path, num_shards: int) -> dict:
    """Merge the shard files into ``train_pseudo.json`` + ``stats.json``; returns the stats.

    Deterministic: annotations follow train_base's image order and each image's word order, ids
    continue after train_base's largest annotation id, so any sharding gives the same file.
    """
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    out = layout.stage("pseudo")
    ids, _ = pseudo_image_ids(recipe, run_dir)
    sharding = pseudo_sharding(recipe, run_dir, num_shards, ids)
    records = sharding.records()
    if records is None:
        unfinished = sharding.unfinished()
        raise FileNotFoundError(f"pseudo merge: shard(s) {unfinished} of {num_shards} are missing, incomplete or from "
                                f"another recipe ({sharding.shard(unfinished[0]).path}); run them first")
    base = json.loads(layout.split("train_base.json").read_text())
    pv = pseudo_vocabulary(recipe, run_dir)
    next_id = max((a["id"] for a in base["annotations"]), default=0) + 1
    pseudo = []
    for i in ids:
        for ann in records[i]["annotations"]:
            pseudo.append({"id": next_id, **ann})
            next_id += 1
    base_cat_ids = {c["id"] for c in base["categories"]}
    extra_cats = [c for c in pv.categories if c["id"] not in base_cat_ids]
    merged = {**{k: v for k, v in base.items() if k not in ("annotations", "categories")},
              "annotations": base["annotations"] + pseudo,
              "categories": base["categories"] + extra_cats,
              "pseudo_vocabulary": {"kind": pv.kind, "category_ids": [c["id"] for c in pv.categories]}}
    write_json_atomic(merged, layout.pseudo_gt)
    caption_only = {im["id"] for im in base["images"] if im.get("caption_only")}
    stats = pseudo_stats(recipe, run_dir, pseudo, {i: r["words"] for i, r in records.items()}, ids, pv,
                         caption_only)
    stats["num_shards"] = num_shards
    write_json_atomic(stats, layout.pseudo_stats)
    recipe.save(out)
    return stats


def novel_category_map(recipe: Recipe, run_dir: Path, pv: PseudoVocabulary) -> dict[int, int]:
    """File category id of the pseudo vocabulary → the novel dataset category it names."""
    partition = json.loads(RunLayout(run_dir).split("partition.json").read_text())
    novel = partition["novel"]
    if pv.kind == "dataset":
        return {int(c["id"]): int(c["id"]) for c in novel}
    out: dict[int, int] = {}
    for cid, lvis_ids in lvis_matches(novel).items():
        for lid in lvis_ids:
            out[LVIS_ID_OFFSET + lid] = cid
    return out


def gt_by_image_and_class(gt: Mapping, category_ids: set[int], image_ids: set[int] | None = None
                          ) -> dict[tuple[int, int], list[dict]]:
    """Non-crowd annotations of ``gt`` (COCO dict) in ``category_ids`` (and ``image_ids``, if given),
    keyed by ``(image_id, category_id)``."""
    out: dict[tuple[int, int], list[dict]] = {}
    for a in gt["annotations"]:
        if a["category_id"] in category_ids and not a.get("iscrowd", 0) and (image_ids is None or a["image_id"] in image_ids):
            out.setdefault((a["image_id"], a["category_id"]), []).append(a)
    return out


def hits_gt(rles: Sequence[dict], gts: Sequence[dict], h: int, w: int, iou: float = 0.5) -> np.ndarray:
    """For each mask of ``rles`` (an image's RLEs): does it overlap one of the annotations ``gts`` at
    mask IoU ≥ ``iou`` (:func:`~ovis.data.masks.mask_iou`)? Bool ``[len(rles)]``; all False without ``gts``."""
    return np.any(mask_iou(rles, [ann_to_rle(g, h, w) for g in gts]) >= iou, axis=1)


def pseudo_stats(recipe: Recipe, run_dir: str | Path, pseudo: list[dict], words: Mapping[int, list[str]],
                 ids: Sequence[int], pv: PseudoVocabulary, caption_only: AbstractSet[int] = frozenset()) -> dict:
    """Counts, score/uncertainty summaries and the precision of pseudo masks of novel words
    against the held-out novel GT of the original training file (mask IoU ≥ 0.5, same class).
    Images of ``caption_only`` have no GT: their pseudo masks are counted, not scored."""
    run_dir = Path(run_dir)
    novel_of = novel_category_map(recipe, run_dir, pv)
    gt_path = recipe.data.path(recipe.data.train_instances)
    with open(gt_path) as f:
        gt = json.load(f)
    wanted = {a["image_id"] for a in pseudo if a["category_id"] in novel_of} - caption_only
    hw = {im["id"]: (im["height"], im["width"]) for im in gt["images"] if im["id"] in wanted}
    gt_by = gt_by_image_and_class(gt, set(novel_of.values()), wanted)
    n_novel = n_correct = 0
    per_class: dict[str, list[int]] = {}
    for a in pseudo:
        cid = novel_of.get(a["category_id"])
        if cid is None or a["image_id"] in caption_only:
            continue
        n_novel += 1
        h, w = hw[a["image_id"]]
        ok = bool(hits_gt([ann_to_rle(a, h, w)], gt_by.get((a["image_id"], cid), []), h, w)[0])
        n_correct += ok
        per_class.setdefault(a["category_name"], [0, 0])
        per_class[a["category_name"]][0] += 1
        per_class[a["category_name"]][1] += ok
    n_words = [len(words.get(i, [])) for i in ids]
    scores = [a["score"] for a in pseudo]
    uncs = [a["uncertainty"] for a in pseudo]
    return {
        "vocabulary": pv.kind,
        "vocabulary_categories": len(pv.categories),
        "images_with_captions": len(ids),
        "images_with_words": sum(n > 0 for n in n_words),
        "words_found": sum(n_words),
        "words_per_image": sum(n_words) / max(len(ids), 1),
        "pseudo_masks": len(pseudo),
        "images_caption_only": sum(i in caption_only for i in ids),
        "pseudo_masks_caption_only": sum(a["image_id"] in caption_only for a in pseudo),
        "empty_pseudo_masks": sum(a["area"] == 0 for a in pseudo),
        "score_mean": float(np.mean(scores)) if scores else None,
        "uncertainty_mean": float(np.mean(uncs)) if uncs else None,
        "pseudo_masks_novel": n_novel,
        "novel_correct@0.5": n_correct,
        "novel_precision@0.5": n_correct / n_novel if n_novel else None,
        "novel_per_class": {k: {"pseudo_masks": v[0], "correct@0.5": v[1]} for k, v in sorted(per_class.items())},
        "pseudo_masks_per_category": dict(Counter(a["category_name"] for a in pseudo).most_common()),
    }


# --------------------------------------------------------------------------------------------
# figures and browser


def _load_pseudo(run_dir: Path) -> dict:
    path = RunLayout(run_dir).pseudo_gt
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the pseudo stage first (ovis reproduce <recipe> --stages pseudo)")
    return json.loads(path.read_text())


def _gt_for(recipe: Recipe, pseudo_file: dict, image_ids: Sequence[int]) -> dict:
    """The original training GT (all classes, novel included) of ``image_ids``; caption-only images of
    ``pseudo_file`` (``train_pseudo.json``) are there without annotations."""
    with open(recipe.data.path(recipe.data.train_instances)) as f:
        gt = json.load(f)
    keep = set(image_ids)
    cats = {c["id"]: c for c in gt["categories"]}
    for c in pseudo_file["categories"]:
        cats.setdefault(c["id"], c)
    caption_only = [im for im in pseudo_file["images"] if im.get("caption_only") and im["id"] in keep]
    return {"images": [im for im in gt["images"] if im["id"] in keep] + caption_only,
            "annotations": [a for a in gt["annotations"] if a["image_id"] in keep],
            "categories": list(cats.values())}


def pseudo_figures(recipe: Recipe, run_dir: str | Path, n: int = 4) -> list[Figure]:
    """[pseudo masks beside the full GT (novel objects included) for ``n`` images with caption
    words, captions and the words found underneath; histograms of score and uncertainty]."""
    from matplotlib.figure import Figure

    from ovis.viz.draw import image_grid

    run_dir = Path(run_dir)
    data = _load_pseudo(run_dir)
    pseudo = [a for a in data["annotations"] if a.get("pseudo")]
    ids = list(dict.fromkeys(a["image_id"] for a in pseudo))[:n]
    _, captions = pseudo_image_ids(recipe, run_dir)
    words: dict[int, list[str]] = {}
    for a in pseudo:
        if a["image_id"] in ids and a["word"] not in words.setdefault(a["image_id"], []):
            words[a["image_id"]].append(a["word"])
    text = {i: [f"words: {', '.join(words.get(i, []))}"] + list(captions.get(i, [])) for i in ids}
    figs = []
    if ids:
        gt = _gt_for(recipe, data, ids)
        figs.append(image_grid(gt, recipe.data.path(recipe.data.train_images), ids, cols=2, captions=text,
                               extra={"pseudo": [a for a in pseudo if a["image_id"] in ids]}, n_captions=2))
    hist = Figure(figsize=(9, 3), layout="constrained")
    ax1, ax2 = hist.subplots(1, 2)
    ax1.hist([a["score"] for a in pseudo], bins=30, color="tab:blue")
    ax1.set(title=f"pseudo-mask score sigmoid(s) · {len(pseudo)} masks", xlabel="score", ylabel="masks")
    ax2.hist([a["uncertainty"] for a in pseudo], bins=30, color="tab:orange")
    ax2.set(title="mask uncertainty 1 − mean|2p − 1|", xlabel="uncertainty")
    figs.append(hist)
    return figs


def pseudo_browser(recipe: Recipe, run_dir: str | Path, max_images: int = 50, device: str = "cpu") -> MaskBrowser:
    """A :class:`~ovis.viz.widgets.MaskBrowser` over the first ``max_images`` pseudo-labelled
    images: GT (all classes) | teacher (its detections with the pseudo vocabulary's names,
    cached in ``pseudo/teacher_detections.json``) | pseudo; captions and caption words."""
    from ovis.engine.infer import to_results
    from ovis.models.detector import set_class_embeddings
    from ovis.viz.draw import load_image
    from ovis.viz.widgets import MaskBrowser

    run_dir = Path(run_dir)
    data = _load_pseudo(run_dir)
    pseudo = [a for a in data["annotations"] if a.get("pseudo")]
    ids = list(dict.fromkeys(a["image_id"] for a in pseudo))[:max_images]
    gt = _gt_for(recipe, data, ids)
    cache = RunLayout(run_dir).stage("pseudo") / "teacher_detections.json"
    dets = json.loads(cache.read_text()) if cache.is_file() else None
    if dets is None or {d["image_id"] for d in dets} - set(ids):
        pv = pseudo_vocabulary(recipe, run_dir)
        model = load_model(recipe, run_dir, "teacher").to(device).eval()
        set_class_embeddings(model, class_embeddings(recipe, pv.names, normalize=False))
        label_to_cat = {k + 1: c["id"] for k, c in enumerate(pv.categories)}
        infos = {im["id"]: im for im in gt["images"]}
        dets = []
        with torch.no_grad():
            for i in ids:
                image = torch.from_numpy(load_image(recipe.data.path(recipe.data.train_images), infos[i])
                                         .transpose(2, 0, 1).copy()).float().div_(255).to(device)
                dets += to_results(model([image])[0], i, label_to_cat)
        write_json_atomic(dets, cache)
    _, captions = pseudo_image_ids(recipe, run_dir)
    words: dict[int, list[str]] = {}
    for a in pseudo:
        words.setdefault(a["image_id"], []).append(a["word"])
    return MaskBrowser(gt, recipe.data.path(recipe.data.train_images),
                       panels={"teacher": dets, "pseudo": [a for a in pseudo if a["image_id"] in set(ids)]},
                       captions={i: captions.get(i, []) for i in ids}, words=words)

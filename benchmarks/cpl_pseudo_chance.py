"""Are CPL's novel pseudo masks above chance? (CPL acceptance diagnostic, docs/cpl.md#23-pseudo-labels).

For every novel caption word of a finished CPL run's pseudo-labelled images, the teacher's proposals
(RPN, test-time settings) each get a mask from the teacher's mask head. A pick is correct when its
mask hits a held-out GT object of the word's class at mask IoU ≥ 0.5 (as ``pseudo/stats.json``).

- ``matched``: precision of the word-matched proposal (what ``ovis pseudo`` keeps);
- ``chance``: expected precision of a proposal drawn uniformly at random (mean hit share);
- ``ceiling``: share of novel words for which some proposal hits (best possible pick).

    python benchmarks/cpl_pseudo_chance.py --run-dir runs/demo_cpl [--recipe demo_cpl] [--set KEY=VALUE ...]

Last line: ``novel_words=… matched_precision=… chance_precision=… ceiling=…``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ovis.data.captions import find_words
from ovis.data.dataset import load_rgb
from ovis.methods import load_recipe
from ovis.pseudo.cross_modal import (
    MASK_THRESHOLD,
    build_labeler,
    gt_by_image_and_class,
    hits_gt,
    novel_category_map,
    pseudo_image_ids,
    pseudo_vocabulary,
    select_proposals,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cpl_pseudo_chance", description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="a CPL run with teacher and pseudo stages done")
    ap.add_argument("--recipe", default="demo_cpl")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="the overrides the run was made with")
    args = ap.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    labeler = build_labeler(recipe, args.run_dir)
    pv = pseudo_vocabulary(recipe, args.run_dir)
    novel_of = novel_category_map(recipe, args.run_dir, pv)
    ids, captions = pseudo_image_ids(recipe, args.run_dir)
    gt = json.loads(Path(recipe.data.path(recipe.data.train_instances)).read_text())
    infos = {im["id"]: im for im in gt["images"]}
    gt_by = gt_by_image_and_class(gt, set(novel_of.values()))
    image_root = recipe.data.path(recipe.data.train_images)
    chance, matched, ceiling = [], [], []
    for image_id in ids:
        words = [m for m in find_words(list(captions[image_id]), labeler.vocab) if pv.file_id(m.category_id) in novel_of]
        if not words:
            continue
        info = infos[image_id]
        image = load_rgb(image_root / info["file_name"], (info["width"], info["height"]), f"image {image_id}")
        state, regions, boxes = labeler.proposals([image])
        _, pasted = labeler.masks(state, boxes)
        masks = (pasted[0]["masks"][:, 0] > MASK_THRESHOLD).numpy()
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        picks, _ = select_proposals(regions[0], labeler.word_embeddings([m.word for m in words]).to(regions[0]))
        h, w = image.shape[-2:]
        for word, pick in zip(words, picks.tolist()):
            hit = hits_gt(rles, gt_by.get((image_id, novel_of[pv.file_id(word.category_id)]), []), h, w)
            chance.append(hit.mean())
            ceiling.append(hit.any())
            matched.append(hit[pick])
    print(f"novel_words={len(chance)} matched_precision={np.mean(matched):.4f} "
          f"chance_precision={np.mean(chance):.4f} ceiling={np.mean(ceiling):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

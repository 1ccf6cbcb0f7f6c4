"""How many labelled views does the demo's backbone need to tell the base classes apart? (CPL diagnostic.)

The CPL teacher must name base-class objects before it can name novel ones. This trains the
recipe's ResNet (``model.backbone``, ``model.norm``) plus a linear layer as a plain classifier on
ground-truth crops of the base classes (``splits/train_base.json``: box + 10 % context, resized to
``--crop`` px), no detector around it, once from random weights and once from the run's caption
grounding backbone (``grounding/model_final.pth``). Accuracy on the training crops and on the base
objects of ``splits/val_base.json`` is printed every 100 steps: an upper bound on what the teacher's
classifier can learn from the same number of labelled views.

    python benchmarks/cpl_shape_from_scratch.py --run-dir runs/demo_cpl [--steps 1000] [--batch 16]

Last line: ``classes=… train_crops=… val_crops=… steps=… batch=… random_train_acc=… random_val_acc=…
grounding_train_acc=… grounding_val_acc=…`` (after the last step).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ovis.methods import load_recipe
from ovis.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_trunk


def crops(coco_path: Path, image_root: Path, class_ids: list[int], size: int) -> tuple[Tensor, Tensor]:
    """Non-crowd objects of ``class_ids``: normalised crops ``[N, 3, size, size]`` and labels 0..K-1."""
    coco = json.loads(coco_path.read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    images: dict[int, Image.Image] = {}  # each image decoded once, crops in annotation order
    xs, ys = [], []
    for a in coco["annotations"]:
        if a["category_id"] not in class_ids or a.get("iscrowd", 0):
            continue
        if a["image_id"] not in images:
            with Image.open(image_root / files[a["image_id"]]) as im:
                images[a["image_id"]] = im.convert("RGB")
        x, y, w, h = a["bbox"]
        m = 0.1 * max(w, h)
        crop = images[a["image_id"]].crop((x - m, y - m, x + w + m, y + h + m)).resize((size, size), Image.BILINEAR)
        xs.append(np.asarray(crop))
        ys.append(class_ids.index(a["category_id"]))
    if not xs:
        raise ValueError(f"{coco_path}: no non-crowd object of classes {class_ids}")
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std, torch.tensor(ys)


def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    net.eval()
    with torch.no_grad():
        acc = torch.cat([net(b).argmax(1) for b in x.split(256)]).eq(y).float().mean().item()
    net.train()
    return acc


def train(net: nn.Module, data: dict[str, tuple[Tensor, Tensor]], steps: int, batch: int, lr: float,
          seed: int, label: str) -> dict[str, float]:
    """SGD (momentum 0.9, wd 1e-4, constant lr) on random batches of training crops."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                          weight_decay=1e-4)
    x, y = data["train"]
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(len(y), (batch,), generator=gen)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            accs = {k: accuracy(net, *v) for k, v in data.items()}
            print(f"{label} step {step} views {step * batch} loss {loss.item():.3f} "
                  f"train_acc {accs['train']:.3f} val_acc {accs['val']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    return accs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cpl_shape_from_scratch", description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="a CPL run with splits and grounding done")
    ap.add_argument("--recipe", default="demo_cpl")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--crop", type=int, default=64, help="crop side, px")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    splits = args.run_dir / "splits"
    partition = json.loads((splits / "partition.json").read_text())
    class_ids = [c["id"] for c in partition["base"]]
    data = {
        "train": crops(splits / "train_base.json", Path(recipe.data.path(recipe.data.train_images)), class_ids, args.crop),
        "val": crops(splits / "val_base.json", Path(recipe.data.path(recipe.data.val_images)), class_ids, args.crop),
    }
    grounding = torch.load(args.run_dir / "grounding" / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    results = {}
    # the from-scratch study: the ResNet-18 with GroupNorm that the demo used before it had ImageNet weights
    same = (recipe.model.backbone, recipe.model.norm) == ("resnet18", "gn")
    inits = ("random", "grounding") if same else ("random",)
    for init in inits:
        torch.manual_seed(args.seed)
        net = build_trunk("resnet18", trainable_layers=5, norm="gn")
        if init == "grounding":
            state = {k.removeprefix("backbone."): v for k, v in grounding.items() if k.startswith("backbone.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith("fc.") for k in missing):
                raise ValueError(f"grounding backbone does not fit {recipe.model.backbone}: "
                                 f"missing {missing}, unexpected {unexpected}")
        net.fc = nn.Linear(net.fc.in_features, len(class_ids))
        results[init] = train(net, data, args.steps, args.batch, args.lr, args.seed, init)
    print(f"classes={len(class_ids)} train_crops={len(data['train'][1])} val_crops={len(data['val'][1])} "
          f"steps={args.steps} batch={args.batch} "
          + " ".join(f"{init}_{k}_acc={v:.3f}" for init, accs in results.items() for k, v in accs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

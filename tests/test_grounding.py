"""CPL caption-grounding pretraining (OVR "MMSS" grounding head, docs/cpl.md#21-caption-pretraining), offline on CPU."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here must work without a network

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from ovis.config import Recipe
from ovis.data.dataset import CaptionImages
from ovis.methods.cpl import grounding_task
from ovis.models.grounding import (
    LOSS_NAMES,
    GroundingModel,
    grounding_scores,
    save_grounding_checkpoint,
    teacher_init_state,
)
from ovis.models.text import StaticTokenEmbedding

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}


@pytest.fixture(scope="module")
def encoder() -> StaticTokenEmbedding:
    return StaticTokenEmbedding()  # offline MiniLM, 384-d token table


@pytest.fixture(scope="module")
def model(encoder) -> GroundingModel:
    """Random-init resnet18 with frozen BN (eval-mode statistics in train mode too); not trained."""
    torch.manual_seed(0)
    return GroundingModel("resnet18", encoder)


def _squares() -> tuple[list[torch.Tensor], list[dict]]:
    images, targets = [], []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        im = torch.full((3, 32, 64), 0.5)  # 1×2 C5 cells
        im[:, 8:24, 16:48] = torch.tensor(rgb)[:, None, None]
        images.append(im)
        targets.append({"image_id": i, "caption": f"a {name} square"})
    return images, targets


def test_grounding_loss_falls_and_the_matching_caption_wins(encoder):
    torch.manual_seed(0)
    model = GroundingModel("resnet18", encoder, train_bn=True)  # random init: BN statistics are learned
    images, targets = _squares()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    model.train()
    totals = []
    for _ in range(15):
        losses = model(images, targets)
        assert set(losses) == set(LOSS_NAMES)  # both alignment directions × pick caption / pick image
        total = sum(losses.values())
        assert torch.isfinite(total)
        totals.append(total.item())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
    assert totals[0] == pytest.approx(4 * np.log(4), abs=0.05)  # untrained: uniform over 4 pairs
    assert totals[-1] < 0.8 * totals[0]
    model.eval()
    with torch.no_grad():
        scores = model(images, targets)  # [image, caption]
    assert scores.shape == (4, 4)
    truth = torch.arange(4)
    assert (scores.argmax(1) == truth).float().mean() >= 0.75  # caption retrieval, chance 0.25
    assert (scores.argmax(0) == truth).float().mean() >= 0.75  # image retrieval


def test_masked_regions_and_words_do_not_change_scores():
    g = torch.Generator().manual_seed(0)
    regions, words = torch.randn(2, 5, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    region_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    word_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    w2r, r2w = grounding_scores(regions, region_mask, words, word_mask, temperature=10.0)
    # padding: more masked cells / word slots holding large garbage values
    big_regions = torch.cat([regions, 50 * torch.randn(2, 3, 8, generator=g)], 1)
    big_words = torch.cat([words, 50 * torch.randn(3, 2, 8, generator=g)], 1)
    pad_r, pad_w = torch.zeros(2, 3, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.bool)
    w2r_p, r2w_p = grounding_scores(big_regions, torch.cat([region_mask, pad_r], 1), big_words,
                                    torch.cat([word_mask, pad_w], 1), temperature=10.0)
    torch.testing.assert_close(w2r_p, w2r)
    torch.testing.assert_close(r2w_p, r2w)
    # the masks are what keeps them out
    w2r_u, _ = grounding_scores(big_regions, torch.ones(2, 8, dtype=torch.bool), words, word_mask)
    assert not torch.allclose(w2r_u, w2r)
    # by hand: image 1 (2 regions) with caption 2 (1 word): that word's softmax-weighted similarity
    s = regions[1, :2] @ words[2, 0] / 10.0
    assert w2r[1, 2].item() == pytest.approx((s.softmax(0) * s).sum().item(), rel=1e-5)
    assert r2w[1, 2].item() == pytest.approx(s.mean().item(), rel=1e-5)  # one word: each region attends to it


def test_padded_image_is_scored_on_its_own_cells_only(model):
    model.eval()
    small, big = torch.rand(3, 64, 70), torch.rand(3, 96, 128)  # 2×3 cells; batch grid 3×4
    captions = ["a red square", "two dogs on a green sofa"]
    with torch.no_grad():
        regions, valid = model.region_features([small, big])
        assert regions.shape == (2, 12, model.out_channels)
        expected = torch.zeros(3, 4, dtype=torch.bool)
        expected[:2, :3] = True
        assert torch.equal(valid[0], expected.flatten()) and valid[1].all()
        w2r, r2w = model.score_matrices([small, big], captions)
        # the same features with the padded cells deleted rather than masked
        own = model.projection(regions[0, valid[0]])[None]
        words, word_valid = model.word_embeddings(captions)
        w2r_own, r2w_own = grounding_scores(own, torch.ones(1, 6, dtype=torch.bool), words, word_valid)
        torch.testing.assert_close(w2r[:1], w2r_own)
        torch.testing.assert_close(r2w[:1], r2w_own)
        unmasked, _ = grounding_scores(model.projection(regions[:1]), torch.ones(1, 12, dtype=torch.bool),
                                       words, word_valid)
        assert not torch.allclose(unmasked, w2r_own)  # padded cells would have counted


def test_training_keeps_at_most_max_regions_random_cells(model):
    torch.manual_seed(0)  # frozen BN: train and eval features agree
    images = [torch.rand(3, 320, 352), torch.rand(3, 64, 96)]  # 10×11 = 110 cells, 2×3 = 6 cells
    with torch.no_grad():
        full, full_valid = model.eval().region_features(images)
        kept, kept_valid = model.train().region_features(images)
    assert full.shape[1] == 110 and full_valid.sum(1).tolist() == [110, 6]
    assert kept.shape == (2, 100, 512) and kept_valid.sum(1).tolist() == [100, 6]
    for b, n in ((0, 100), (1, 6)):  # kept rows are distinct real cells of that image
        dist = torch.cdist(kept[b, :n], full[b, full_valid[b]], compute_mode="donot_use_mm_for_euclid_dist")
        nearest = dist.argmin(1)
        assert torch.all(dist.min(1).values < 1e-4 * full[b].norm(dim=1).mean())
        assert nearest.unique().numel() == n


def test_teacher_init_state_uses_torchvision_resnet_keys(model, tmp_path):
    state = teacher_init_state(model)
    tv = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    assert set(state) == {f"backbone.{k}" for k in tv} | {"projection.weight", "projection.bias"}
    assert all(state[f"backbone.{k}"].shape == v.shape for k, v in tv.items())
    assert state["projection.weight"].shape == (384, 512) and state["projection.bias"].shape == (384,)
    assert set(model.state_dict()) == set(state)  # the loop's model_final.pth holds the same keys
    path = save_grounding_checkpoint(model, tmp_path / "grounding" / "teacher_init.pth")
    assert sorted(p.name for p in path.parent.iterdir()) == ["teacher_init.pth"]  # no temp file left
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["backbone"] == "resnet18" and blob["embedding_dim"] == 384 and blob["temperature"] == 10.0
    assert all(torch.equal(blob["model"][k], v) for k, v in state.items())
    net = torchvision.models.resnet18()
    res = net.load_state_dict({k.removeprefix("backbone."): v for k, v in blob["model"].items()
                               if k.startswith("backbone.")}, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys


def test_model_rejects_bad_settings(encoder, model):
    with pytest.raises(ValueError, match="resnet101"):
        GroundingModel("resnet101", encoder)
    with pytest.raises(ValueError, match="input_format='bgr'"):
        GroundingModel("resnet18", encoder, input_format="bgr")
    with pytest.raises(TypeError, match="static token embeddings"):
        GroundingModel("resnet18", object())
    model.train()
    one = [torch.rand(3, 32, 32)]
    with pytest.raises(ValueError, match="batch_size"):  # no in-batch negative
        model(one, [{"caption": "a cat"}])
    with pytest.raises(ValueError, match=r"images \[7\] have no 'caption'"):
        model(one * 2, [{"caption": "a cat"}, {"image_id": 7}])


def _write_coco(root, sizes: dict[int, tuple[int, int]]) -> tuple:
    (root / "images").mkdir(parents=True)
    images = []
    for image_id, (h, w) in sizes.items():
        name = f"{image_id:06d}.png"
        Image.fromarray(np.full((h, w, 3), 40 * image_id, dtype=np.uint8)).save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": [],
                               "categories": [{"id": 1, "name": "thing"}]}))
    return ann, root / "images"


def test_caption_dataset_skips_uncaptioned_images_and_samples_captions(tmp_path):
    ann, root = _write_coco(tmp_path, {1: (30, 40), 2: (20, 20), 3: (50, 25)})
    captions = {"1": ["a cat on a mat", "a sleepy cat", "one cat"], "3": ["a tall tree"], "2": [], "99": ["elsewhere"]}
    data = CaptionImages(ann, root, captions)
    assert data.ids == [1, 3] and len(data) == 2  # image 2 has no caption, 99 is not in the split
    assert data.aspect_ratios() == [40 / 30, 25 / 50]
    image, target = data[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert image.max().item() == pytest.approx(40 / 255)
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        _, target = data[0]
        assert target["image_id"] == 1 and target["caption"] in captions["1"]
        seen.add(target["caption"])
    assert seen == set(captions["1"])  # a random caption per access
    torch.manual_seed(5)
    first = data[0][1]["caption"]
    torch.manual_seed(5)
    assert data[0][1]["caption"] == first  # seeded by torch's RNG
    resized = CaptionImages(ann, root, {1: ["x"], 3: ["y"]}, min_size=60, max_size=100)
    assert resized[0][0].shape == (3, 60, 80)  # shorter side 30 → 60
    assert resized[1][0].shape == (3, 100, 50)  # 50×25 → 120×60 would pass max_size 100
    with pytest.raises(ValueError, match="none of its 3 images has a caption"):
        CaptionImages(ann, root, {"99": ["elsewhere"]})
    with pytest.raises(ValueError, match="key 'abc' is not an image id"):
        CaptionImages(ann, root, {"abc": ["x"]})


def test_caption_dataset_decode_once_returns_each_image_and_flip_decoded_once(tmp_path, monkeypatch):
    ann, root = _write_coco(tmp_path, {1: (30, 40), 3: (50, 25)})
    captions = {"1": ["a cat", "one cat", "the cat"], "3": ["a tree", "one tree"]}
    plain = CaptionImages(ann, root, captions, min_size=60, max_size=100, flip_prob=0.5)
    once = CaptionImages(ann, root, captions, min_size=60, max_size=100, flip_prob=0.5, decode_once=True)
    loads: list[int] = []
    real = CaptionImages.load_image
    monkeypatch.setattr(CaptionImages, "load_image", lambda self, i: loads.append(i) or real(self, i))
    seen: set[tuple[int, bool]] = set()
    for seed in range(12):
        for index in (0, 1):
            torch.manual_seed(seed)
            ref_image, ref = plain[index]
            torch.manual_seed(seed)
            image, target = once[index]
            key = (target["image_id"], target["flipped"])
            assert {k: target[k] for k in ("image_id", "caption", "flipped")} == \
                {k: ref[k] for k in ("image_id", "caption", "flipped")}  # the same random draws
            assert image.shape == ref_image.shape and ref["decoded"]
            assert target["decoded"] == (key not in seen)
            if target["decoded"]:
                assert torch.equal(image, ref_image)
            seen.add(key)
    assert len(seen) == 4  # both images, each plain and mirrored
    assert len(loads) == 24 + 4  # the plain dataset decodes every visit, decode_once each (image, flip) once


def test_grounding_model_refuses_undecoded_images_whose_maps_are_not_cached(encoder):
    images, targets = _squares()
    model = _frozen(encoder).train()
    model.cache_backbone()
    named = [dict(t, flipped=False, decoded=i != 1) for i, t in enumerate(targets)]
    with pytest.raises(ValueError, match=r"images \[1\] came without their pixels .* not cached"):
        model(images, named)
    model(images, [dict(t, decoded=True) for t in named])  # caches all four
    model(images, named)  # now image 1's map is there
    with pytest.raises(ValueError, match=r"images \[1\] came without their pixels"):
        model.eval()(images, named)  # eval mode never uses the cache


def test_grounding_task_trains_with_the_engine(tmp_path):
    pytest.importorskip("ovis.engine.train")
    from ovis.engine.train import TrainTask, train

    run_dir = tmp_path / "run"
    splits = run_dir / "splits"
    splits.mkdir(parents=True)
    ann, _ = _write_coco(tmp_path / "data", {1: (64, 64), 2: (64, 96), 3: (96, 64), 4: (64, 64)})
    (splits / "train_base.json").write_text(ann.read_text())
    (splits / "captions.json").write_text(json.dumps({str(i): [f"a {c} square"] for i, c in enumerate(COLOURS, 1)}))
    recipe = Recipe(name="g")
    recipe.data.root, recipe.data.train_images = str(tmp_path / "data"), "images"
    recipe.model.backbone, recipe.model.backbone_weights = "resnet18", None
    recipe.model.min_size = recipe.model.max_size = 64
    g = recipe.grounding
    g.max_iter, g.batch_size, g.num_workers, g.warmup_iters, g.checkpoint_period, g.log_period = 2, 2, 0, 0, 2, 1
    task = grounding_task(recipe, run_dir)
    assert isinstance(task, TrainTask) and task.cfg is recipe.grounding and len(task.dataset) == 4
    assert isinstance(task.model, GroundingModel) and task.model.train_bn  # no weights → BN trains
    result = train(task, run_dir / "grounding", device="cpu", progress=False)
    final = torch.load(result.final, map_location="cpu", weights_only=True)["model"]
    assert set(final) == set(teacher_init_state(task.model))
    rows = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and all(k in rows[0] for k in LOSS_NAMES)
    with pytest.raises(FileNotFoundError, match="run the splits stage first"):
        grounding_task(recipe, tmp_path / "nowhere")


def _frozen(encoder) -> GroundingModel:
    torch.manual_seed(0)
    m = GroundingModel("resnet18", encoder)
    m.backbone.requires_grad_(False)
    return m.train()


def test_feature_cache_gives_the_uncached_losses_and_skips_the_backbone(encoder):
    images, targets = _squares()
    targets = [dict(t, flipped=False) for t in targets]
    plain, cached = _frozen(encoder), _frozen(encoder)
    cached.cache_backbone()
    calls: list[int] = []
    cached.backbone.register_forward_hook(lambda _m, inp, _out: calls.append(inp[0].shape[0]))
    for step in range(3):  # the same cells are drawn: the cache changes no random number
        torch.manual_seed(step)
        want = plain(images, targets)
        torch.manual_seed(step)
        got = cached(images, targets)
        for name in LOSS_NAMES:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert calls == [1, 1, 1, 1]  # one forward per image, in the first step only
    assert sorted(cached._feature_cache) == [(i, False) for i in range(4)]
    flipped = [dict(t, flipped=True) for t in targets]
    cached(images[:2], [flipped[0], targets[1]])
    assert calls == [1, 1, 1, 1, 1] and (0, True) in cached._feature_cache  # a flip is another map
    cached.eval()(images, targets)  # eval mode scores without the cache
    assert calls[-1] == 4
    # the projection still trains: gradients reach it through the cached maps
    loss = sum(cached.train()(images, targets).values())
    loss.backward()
    assert cached.projection.weight.grad is not None and cached.projection.weight.grad.abs().sum() > 0


def test_feature_cache_refuses_a_training_backbone_and_unnamed_images(encoder):
    images, targets = _squares()
    torch.manual_seed(0)
    model = GroundingModel("resnet18", encoder).train()
    model.cache_backbone()
    with pytest.raises(ValueError, match=r"needs 'image_id' and 'flipped' in every target; targets \[0, 1, 2, 3\]"):
        model(images, targets)
    named = [dict(t, flipped=False) for t in targets]
    with pytest.raises(ValueError, match=r"needs a frozen backbone \(freeze: \[backbone\]\).*backbone parameters \['backbone.conv1.weight'"):
        model(images, named)
    bn_trains = GroundingModel("resnet18", encoder, train_bn=True).train()
    bn_trains.backbone.requires_grad_(False)
    bn_trains.cache_backbone()
    with pytest.raises(ValueError, match=r"its BatchNorm trains"):
        bn_trains(images, named)


def test_grounding_task_with_cached_features_trains_as_without(tmp_path):
    from ovis.engine.train import train

    run_dir = tmp_path / "run"
    (run_dir / "splits").mkdir(parents=True)
    ann, _ = _write_coco(tmp_path / "data", {i: (64, 64) for i in range(1, 5)})
    (run_dir / "splits" / "train_base.json").write_text(ann.read_text())
    (run_dir / "splits" / "captions.json").write_text(json.dumps({str(i): [f"a {c} square"] for i, c in enumerate(COLOURS, 1)}))
    finals = {}
    for cache in (False, True):
        recipe = Recipe(name="g")
        recipe.data.root, recipe.data.train_images = str(tmp_path / "data"), "images"
        recipe.model.backbone, recipe.model.backbone_weights = "efficientnet_lite0", "imagenet"
        recipe.model.min_size = recipe.model.max_size = 64
        g = recipe.grounding
        g.max_iter, g.batch_size, g.num_workers, g.warmup_iters, g.checkpoint_period = 6, 2, 0, 0, 6
        g.freeze, g.cache_features = ["backbone"], cache
        torch.manual_seed(0)  # the projection's initial weights
        task = grounding_task(recipe, run_dir)
        result = train(task, tmp_path / f"grounding_{cache}", device="cpu", progress=False)
        finals[cache] = torch.load(result.final, map_location="cpu", weights_only=True)["model"]
        if cache:  # 6 iterations × 2 images visit all 4 images, some mirrored; each decoded once
            keys = task.model._feature_cache
            assert keys and {i for i, _ in keys} == {1, 2, 3, 4} and len(keys) <= 8
            assert task.dataset._decoded == set(keys)
    assert set(finals[True]) == set(finals[False])
    for key in finals[False]:
        torch.testing.assert_close(finals[True][key], finals[False][key], rtol=1e-5, atol=1e-6)
    recipe.model.backbone_weights = None  # no statistics to freeze: the cache is refused at the first step
    with pytest.raises(ValueError, match="needs a frozen backbone"):
        train(grounding_task(recipe, run_dir), tmp_path / "grounding_bad", device="cpu", progress=False)

"""GGN pairwise-affinity target, loss and network (docs/ggn.md#31-pa-network, docs/ggn.md#6-pitfalls items 13–15)."""

import math

import pytest
import torch
from torchvision.models import resnet18

from ovis.models.affinity import (
    AffinityNet,
    affinity_loss,
    affinity_target,
    palette_from_masks,
)


def _square_palette() -> torch.Tensor:
    pal = torch.zeros(6, 6, dtype=torch.int64)
    pal[1:4, 1:4] = 1
    return pal


def test_palette_indexes_instances_and_overlaps_add_up():
    masks = torch.zeros(2, 4, 4, dtype=torch.uint8)
    masks[0, :2, :2] = 1
    masks[1, 1:3, 1:3] = 1
    pal = palette_from_masks(masks)
    assert pal[0, 0] == 1 and pal[2, 2] == 2 and pal[1, 1] == 3 and pal[3, 3] == 0


def test_target_is_one_inside_lower_at_instance_and_image_borders():
    target, _ = affinity_target(_square_palette())
    assert target[2, 2] == 1.0  # instance interior: all 8 neighbours same
    assert target[1, 1] == pytest.approx(3 / 8)  # instance corner
    assert target[0, 0] == pytest.approx(2 / 8)  # image corner: 5 outside + 1 instance neighbour
    assert target[0, 5] == pytest.approx(3 / 8)  # background corner away from the instance: only outside differs
    assert target[5, 5] == pytest.approx(3 / 8)
    assert target[4, 5] == pytest.approx(5 / 8)  # background border pixel: 3 outside neighbours
    assert ((target >= 0) & (target <= 1)).all()


def test_loss_mask_excludes_pixels_whose_neighbourhood_is_unannotated():
    _, valid = affinity_target(_square_palette())
    assert valid[2, 2] and valid[4, 4] and valid[0, 0]  # annotated, or touching an annotated pixel
    assert not valid[5, 5] and not valid[0, 5] and not valid[5, 0]
    assert int(valid.sum()) == 25  # the 5×5 dilation of the 3×3 instance


def test_batched_target_equals_per_image():
    pals = torch.stack([_square_palette(), _square_palette().flip(0) * 2])
    t, v = affinity_target(pals)
    for i in range(2):
        ti, vi = affinity_target(pals[i])
        assert torch.equal(t[i], ti) and torch.equal(v[i], vi)


def test_loss_matches_hand_computation_and_empty_images_give_zero():
    logits = torch.tensor([[[[0.0, 1.0, 5.0]]], [[[3.0, 3.0, 3.0]]]])
    target = torch.tensor([[[1.0, 0.25, 0.0]], [[1.0, 1.0, 1.0]]])
    valid = torch.tensor([[[True, True, False]], [[False, False, False]]])
    pw = 0.05
    s1 = 1 / (1 + math.exp(-1.0))
    img0 = (pw * math.log(2.0) + -(pw * 0.25 * math.log(s1) + 0.75 * math.log(1 - s1))) / 2
    loss = affinity_loss(logits, target, valid, pos_weight=pw)
    assert loss.item() == pytest.approx(img0 / 2, rel=1e-5)
    assert torch.isfinite(affinity_loss(logits[1:], target[1:], valid[1:])) and affinity_loss(
        logits[1:], target[1:], valid[1:]
    ).item() == 0.0


def test_pos_weight_downweights_same_instance_evidence():
    logits = torch.zeros(1, 1, 1, 1)
    one, valid = torch.ones(1, 1, 1), torch.ones(1, 1, 1, dtype=torch.bool)
    assert affinity_loss(logits, one, valid, pos_weight=0.05).item() == pytest.approx(0.05 * math.log(2.0))
    assert affinity_loss(logits, one, valid, pos_weight=1.0).item() == pytest.approx(math.log(2.0))
    zero = torch.zeros(1, 1, 1)  # boundary evidence is not affected
    assert affinity_loss(logits, zero, valid, pos_weight=0.05).item() == pytest.approx(math.log(2.0))


def _tiny_net(**kw) -> AffinityNet:
    torch.manual_seed(0)
    return AffinityNet("resnet18", channels=16, pool_channels=16, **kw)


def _target(h: int, w: int) -> dict:
    masks = torch.zeros(1, h, w, dtype=torch.uint8)
    masks[0, h // 4 : h // 2, w // 4 : w // 2] = 1
    return {"masks": masks}


def test_net_train_and_eval_shapes_for_two_image_sizes():
    net = _tiny_net()
    images = [torch.rand(3, 50, 70), torch.rand(3, 66, 40)]
    net.train()
    out = net(images, [_target(50, 70), _target(66, 40)])
    assert set(out) == {"loss_affinity"} and out["loss_affinity"].dim() == 0
    assert torch.isfinite(out["loss_affinity"])
    net.eval()
    with torch.no_grad():
        probs = net(images)
        batch = net(torch.rand(2, 3, 40, 52))
    assert [tuple(p.shape) for p in probs] == [(1, 50, 70), (1, 66, 40)]
    assert all(((p > 0) & (p < 1)).all() for p in probs)
    assert tuple(batch.shape) == (2, 1, 40, 52)


def test_net_errors_name_the_problem():
    net = _tiny_net().train()
    with pytest.raises(ValueError, match="masks"):
        net([torch.rand(3, 64, 64)], [{"masks": torch.zeros(1, 16, 16, dtype=torch.uint8)}])
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        net([torch.rand(1, 64, 64)], [_target(64, 64)])
    with pytest.raises(ValueError, match="model.backbone='vgg16' is not supported; use one of resnet18, resnet34, resnet50"):
        AffinityNet("vgg16")


def test_backbone_weights_load_from_local_file(tmp_path):
    torch.manual_seed(1)
    ref = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    net = AffinityNet("resnet18", weights=str(path), channels=16, pool_channels=16)
    assert torch.equal(net.stem[0].weight, ref.conv1.weight)
    assert torch.equal(net.stages[3][1].conv2.weight, ref.layer4[1].conv2.weight)


def test_loss_decreases_when_fitting_one_image():
    net = _tiny_net().train()
    img = torch.full((3, 64, 64), 0.2)
    img[:, 16:40, 20:44] = 0.9
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 16:40, 20:44] = 1
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = net([img], [{"masks": masks}])["loss_affinity"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_input_scale_resizes_the_image_and_its_masks_before_the_network():
    plain, scaled = _tiny_net(), _tiny_net(input_scale=2.0)
    scaled.load_state_dict(plain.state_dict())
    image, target = torch.rand(3, 30, 22), _target(30, 22)
    big = torch.nn.functional.interpolate(image[None], size=(60, 44), mode="bilinear", align_corners=False)[0]
    big_masks = target["masks"].repeat_interleave(2, 1).repeat_interleave(2, 2)  # nearest at 2x
    plain.eval(), scaled.eval()
    with torch.no_grad():
        out, ref = scaled([image])[0], plain([big])[0]
    assert tuple(out.shape) == (1, 60, 44) and torch.allclose(out, ref)
    assert scaled.scaled_size(30, 22) == (60, 44) and scaled.scaled_size(1, 1) == (2, 2)
    plain.train(), scaled.train()
    loss, ref_loss = scaled([image], [target])["loss_affinity"], plain([big], [{"masks": big_masks}])["loss_affinity"]
    assert torch.allclose(loss, ref_loss)
    with pytest.raises(ValueError, match=r"'masks' \[N, 30, 22\]"):  # masks match the image as given, not as resized
        scaled([image], [_target(60, 44)])
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="input_scale must be a finite number > 0"):
            AffinityNet("resnet18", channels=16, pool_channels=16, input_scale=bad)

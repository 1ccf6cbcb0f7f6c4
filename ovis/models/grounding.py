"""CPL stage (a): caption-grounding pretraining, OVR-CNN's "MMSS" grounding head (docs/cpl.md#21-caption-pretraining).

A ResNet to C5 (all four stages, stride 32) sees each C5 cell as a region; a linear
vision→language projection (``projection``, C5 channels → text dim) maps regions into the space
of the caption's *static WordPiece input-token embeddings* (frozen, :class:`StaticTokenEmbedding`,
special tokens excluded, docs/cpl.md#6-pitfalls item 1, docs/deviations.md#92-text-embeddings). For image i and caption c:

- local similarity ``s[w, r] = ⟨projection(region r of i), word w of c⟩ / temperature`` (10);
- words → regions: each word attends over the image's regions by softmax, score
  ``w2r[i, c] = mean_w Σ_r a_wr · s[w, r]``; regions → words: each region attends over the
  caption's words, ``r2w[i, c] = mean_r Σ_w a_rw · s[w, r]``;
- losses, both directions, in-batch negatives (cross-entropy over the batch):
  ``loss_grounding_w2r_caption`` (each image picks its caption among the batch's captions),
  ``loss_grounding_w2r_image`` (each caption picks its image), and the same two for ``r2w``.
  The loop sums the four with weight 1, as OVR-CNN does. Negatives are the images of one
  process's batch.

Training keeps at most ``max_regions`` (100) random valid cells per image (OVR's spatial
dropout). Images of different sizes are zero-padded (after normalisation) to a common size that
is a multiple of 32; padded cells are masked out of both attentions and of the means.

The teacher starts from this model (docs/cpl.md#22-teacher): its state dict *is* the teacher-init state —
torchvision ResNet keys under ``backbone.`` (``backbone.conv1.weight``, ``backbone.bn1.*``,
``backbone.layer1.…`` … ``backbone.layer4.…``) plus ``projection.weight`` [text dim, C5 channels]
and ``projection.bias``. The C4 teacher takes stem + ``layer1``–``layer3`` as its backbone and
``layer4`` as its res5 RoI head (maskrcnn-benchmark lands res5 weights in the RoI head by suffix
matching); ``projection`` initialises the teacher's frozen embedding projection. The detector
side maps these keys; this module only produces them (:func:`teacher_init_state`,
:func:`save_grounding_checkpoint`; the loop's ``grounding/model_final.pth`` holds the same keys
under ``"model"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovis.io import atomic_path
from ovis.models.backbones import (
    NORMS,
    RESNETS,
    build_trunk,
    check_backbone,
    pixel_stats,
    stage_channels,
    trunk_children,
)
from ovis.models.text import StaticTokenEmbedding

__all__ = [
    "GroundingModel",
    "grounding_losses",
    "grounding_scores",
    "save_grounding_checkpoint",
    "teacher_init_state",
]

BGR255_MEAN = (102.9801, 115.9465, 122.7717)  # maskrcnn-benchmark / caffe2 pixel mean, std 1
C5_STRIDE = 32
LOSS_NAMES = ("loss_grounding_w2r_caption", "loss_grounding_w2r_image",
              "loss_grounding_r2w_caption", "loss_grounding_r2w_image")


# --------------------------------------------------------------------------------------------
# grounding head (pure functions)


def grounding_scores(
    regions: Tensor, region_mask: Tensor, words: Tensor, word_mask: Tensor, temperature: float = 10.0
) -> tuple[Tensor, Tensor]:
    """Image–caption scores of every pair by soft alignment in both directions.

    ``regions`` [I, R, D] projected regions, ``region_mask`` bool [I, R]; ``words`` [C, W, D]
    word embeddings, ``word_mask`` bool [C, W]. Returns ``(w2r, r2w)``, each [I, C]: row i,
    column c is the score of image i with caption c. Masked regions/words get exactly zero
    attention and do not count in the means. Every image needs ≥ 1 region and every caption
    ≥ 1 word.
    """
    n_regions = region_mask.sum(1)
    n_words = word_mask.sum(1)
    if (n_regions == 0).any() or (n_words == 0).any():
        raise ValueError(f"grounding_scores: every image needs a region and every caption a word "
                         f"(regions per image {n_regions.tolist()}, words per caption {n_words.tolist()})")
    local = torch.einsum("ird,cwd->icwr", regions, words) / temperature  # [I, C, W, R]
    pair = word_mask[None, :, :, None] & region_mask[:, None, None, :]
    # finfo.min (not -inf) keeps fully masked rows finite; they are zeroed by `pair` afterwards
    masked = local.masked_fill(~pair, torch.finfo(local.dtype).min)
    w2r = (masked.softmax(dim=3) * pair * local).sum((2, 3)) / n_words[None, :].to(local.dtype)
    r2w = (masked.softmax(dim=2) * pair * local).sum((2, 3)) / n_regions[:, None].to(local.dtype)
    return w2r, r2w


def grounding_losses(w2r: Tensor, r2w: Tensor) -> dict[str, Tensor]:
    """Cross-entropy over the batch of square score matrices [B, B] (image i ↔ caption i).

    ``*_caption``: each image picks its caption among the batch's captions (softmax over a row);
    ``*_image``: each caption picks its image (softmax over a column). Keys: ``LOSS_NAMES``.
    """
    if w2r.shape[0] != w2r.shape[1] or w2r.shape[0] < 2:
        raise ValueError(f"grounding losses need a square score matrix of ≥ 2 pairs (in-batch negatives), "
                         f"got {tuple(w2r.shape)}; set grounding.batch_size ≥ 2")
    target = torch.arange(w2r.shape[0], device=w2r.device)
    values = (F.cross_entropy(w2r, target), F.cross_entropy(w2r.t(), target),
              F.cross_entropy(r2w, target), F.cross_entropy(r2w.t(), target))
    return dict(zip(LOSS_NAMES, values))


# --------------------------------------------------------------------------------------------
# model


class GroundingModel(nn.Module):
    """Backbone-C5 regions + v2l ``projection`` grounded on static caption-token embeddings.

    ``backbone`` and ``weights`` as ``model.backbone`` / ``model.backbone_weights``
    (:mod:`ovis.models.backbones`). ``text_encoder``: a :class:`StaticTokenEmbedding` (default:
    offline MiniLM, 384-d); its token table is frozen and kept out of the state dict.
    ``input_format``: ``rgb`` (the backbone's pixel statistics) or ``bgr255`` (caffe ResNets);
    ``stride_in_1x1`` as ``model.stride_in_1x1``.

    Normalisation (``norm`` as ``model.norm``): ``frozen_bn`` builds BatchNorm; with
    ``train_bn=False`` (default) every BN layer stays in eval mode with fixed affine parameters
    (FrozenBN semantics, as maskrcnn-benchmark), ``train_bn=True`` trains BN normally (for random
    initialisation, where there are no statistics to freeze). ``gn`` builds trained GroupNorm, the
    layers a ``model.norm=gn`` detector expects from this checkpoint.

    ``forward(images, targets)``: ``images`` list of float [3, H, W] in 0..1, ``targets`` list of
    dicts with ``"caption"``. Train mode → dict of the four losses (``LOSS_NAMES``); eval mode →
    [B, B] image–caption scores (row image, column caption), the mean of the ``w2r`` and ``r2w``
    scores (:meth:`score_matrices` gives both).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        text_encoder: StaticTokenEmbedding | None = None,
        weights: str | None = None,
        temperature: float = 10.0,
        max_regions: int = 100,
        input_format: str = "rgb",
        stride_in_1x1: bool = False,
        train_bn: bool = False,
        norm: str = "frozen_bn",
    ) -> None:
        super().__init__()
        check_backbone(backbone)
        if input_format not in ("rgb", "bgr255") or (input_format == "bgr255" and backbone not in RESNETS):
            raise ValueError(f"model.input_format={input_format!r}: expected 'rgb' or, for ResNets, 'bgr255'")
        if temperature <= 0 or max_regions < 1:
            raise ValueError(f"temperature must be > 0 and max_regions ≥ 1, got {temperature}, {max_regions}")
        text_encoder = text_encoder if text_encoder is not None else StaticTokenEmbedding()
        if not isinstance(text_encoder, StaticTokenEmbedding):
            raise TypeError(f"grounding needs static token embeddings (StaticTokenEmbedding, e.g. text encoder "
                            f"'minilm' or 'bert-base-uncased'), got {type(text_encoder).__name__}")
        if norm not in NORMS:
            raise ValueError(f"model.norm={norm!r}: use one of {', '.join(NORMS)}")
        net = build_trunk(backbone, weights, trainable_layers=5, norm="gn" if norm == "gn" else "bn",
                          stride_in_1x1=stride_in_1x1)
        # the backbone's own child names (stem, layer1..layer4), so state-dict keys match it
        self.backbone = nn.Sequential(trunk_children(net))
        self.backbone_name = backbone
        self.out_channels = stage_channels(net.get_submodule("layer4"))
        self.text_encoder = text_encoder
        # plain attribute, not a buffer: frozen, on CPU (rows are gathered there), not in state_dict
        self._token_table = text_encoder._embedding_table()
        self.embedding_dim = int(self._token_table.shape[1])
        self.projection = nn.Linear(self.out_channels, self.embedding_dim)
        self.temperature = float(temperature)
        self.max_regions = int(max_regions)
        self.input_format = input_format
        self.train_bn = train_bn
        # (image id, flipped) → the image's C5 map, once :meth:`cache_backbone` turns it on; not a buffer
        self._feature_cache: dict[tuple[int, bool], Tensor] | None = None
        if not train_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.requires_grad_(False)
                    m.eval()

    def train(self, mode: bool = True) -> GroundingModel:
        super().train(mode)
        if not self.train_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def cache_backbone(self) -> None:
        """Keep each training image's C5 map after its first forward (keyed by the targets' ``image_id``
        and ``flipped``), so later visits skip the backbone. Only a frozen backbone gives the same map on
        every visit: at the first cached forward every backbone parameter must be frozen and BatchNorm
        fixed (``train_bn`` False), else ValueError. Each map is computed for its image alone (padded to
        its own multiple of 32), as at batch size 1; memory grows by one map per image and flip. A target
        with ``decoded`` False (``CaptionImages(decode_once=True)``) needs its map cached, else ValueError."""
        self._feature_cache = {}

    def _check_frozen(self) -> None:
        trainable = [f"backbone.{n}" for n, p in self.backbone.named_parameters() if p.requires_grad]
        if trainable or self.train_bn:
            why = f"backbone parameters {trainable[:3]} train" if trainable else "its BatchNorm trains (no backbone_weights)"
            raise ValueError(f"grounding.cache_features needs a frozen backbone (freeze: [backbone]) with pretrained "
                             f"BatchNorm statistics, but {why}")

    def _normalise(self, image: Tensor) -> Tensor:
        if self.input_format == "bgr255":
            mean = torch.as_tensor(BGR255_MEAN, dtype=image.dtype, device=image.device)
            return image[[2, 1, 0]] * 255.0 - mean[:, None, None]
        stats = pixel_stats(self.backbone_name)
        mean = torch.as_tensor(stats[0], dtype=image.dtype, device=image.device)
        std = torch.as_tensor(stats[1], dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def _backbone_batch(self, images: Sequence[Tensor]) -> Tensor:
        """Images normalised, zero-padded to a common multiple of 32, through the backbone: [B, C, H/32, W/32]."""
        sizes = torch.tensor([im.shape[-2:] for im in images])
        hp, wp = (math.ceil(int(s) / C5_STRIDE) * C5_STRIDE for s in sizes.max(0).values)
        batch = images[0].new_zeros(len(images), 3, hp, wp)
        for b, im in zip(batch, images):
            b[:, : im.shape[1], : im.shape[2]].copy_(self._normalise(im))
        return self.backbone(batch)

    def _cached_backbone(self, images: Sequence[Tensor], keys: Sequence[tuple[int, bool]]) -> Tensor:
        cache = self._feature_cache
        assert cache is not None
        if not cache:
            self._check_frozen()
        maps = []
        for im, key in zip(images, keys):
            if key not in cache:
                with torch.no_grad():
                    cache[key] = self._backbone_batch([im])[0]
            maps.append(cache[key])
        gh, gw = max(m.shape[1] for m in maps), max(m.shape[2] for m in maps)
        feats = maps[0].new_zeros(len(maps), maps[0].shape[0], gh, gw)
        for f, m in zip(feats, maps):
            f[:, : m.shape[1], : m.shape[2]] = m
        return feats

    def region_features(self, images: Sequence[Tensor], keys: Sequence[tuple[int, bool]] | None = None
                        ) -> tuple[Tensor, Tensor]:
        """C5 cells of each image → ``(regions [B, R, C5 channels], valid bool [B, R])``.

        Images are normalised, zero-padded to a common multiple of 32; a cell is valid when it
        lies inside its image (``ceil(h / 32) × ceil(w / 32)`` cells). In train mode at most
        ``max_regions`` random valid cells per image are kept (R shrinks accordingly). ``keys``
        (image id, flipped) name the images for the feature cache (:meth:`cache_backbone`), used in
        train mode.
        """
        if not images:
            raise ValueError("GroundingModel: empty batch")
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3 or not im.is_floating_point():
                raise ValueError(f"GroundingModel: image {i} must be a float [3, H, W] tensor in 0..1, "
                                 f"got {im.dtype} {tuple(im.shape)}")
        sizes = torch.tensor([im.shape[-2:] for im in images])  # [B, 2] (h, w)
        if self.training and self._feature_cache is not None and keys is not None:
            feats = self._cached_backbone(images, keys)
        else:
            feats = self._backbone_batch(images)
        bsz, channels, gh, gw = feats.shape
        cells = torch.div(sizes + C5_STRIDE - 1, C5_STRIDE, rounding_mode="floor").to(feats.device)
        rows = torch.arange(gh, device=feats.device)[None, :, None] < cells[:, 0, None, None]
        cols = torch.arange(gw, device=feats.device)[None, None, :] < cells[:, 1, None, None]
        valid = (rows & cols).reshape(bsz, gh * gw)
        regions = feats.flatten(2).transpose(1, 2)  # [B, R, C]
        if self.training:
            keep = min(self.max_regions, int(valid.sum(1).max()))
            draws = torch.rand(valid.shape, device=valid.device).masked_fill(~valid, 2.0)
            order = draws.argsort(dim=1)[:, :keep]  # random valid cells first, then padding
            regions = regions.gather(1, order[:, :, None].expand(-1, -1, channels))
            valid = valid.gather(1, order)
        return regions, valid

    def word_embeddings(self, captions: Sequence[str], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """Static input-token embeddings of each caption's WordPieces (special tokens excluded).

        Returns ``(words [B, W, D], valid bool [B, W])``, zero-padded to the longest caption.
        """
        ids = self.text_encoder.token_ids(list(captions))
        empty = [c for c, i in zip(captions, ids) if not i]
        if empty:
            raise ValueError(f"GroundingModel: captions {empty!r} give no WordPiece tokens; every caption needs words")
        longest = max(len(i) for i in ids)
        index = torch.zeros(len(ids), longest, dtype=torch.long)
        valid = torch.zeros(len(ids), longest, dtype=torch.bool)
        for row, token_ids in enumerate(ids):
            index[row, : len(token_ids)] = torch.as_tensor(token_ids)
            valid[row, : len(token_ids)] = True
        words = self._token_table[index] * valid[:, :, None]
        return words.to(device), valid.to(device)

    def score_matrices(self, images: Sequence[Tensor], captions: Sequence[str],
                       keys: Sequence[tuple[int, bool]] | None = None) -> tuple[Tensor, Tensor]:
        """``(w2r, r2w)`` scores [len(images), len(captions)] (see :func:`grounding_scores`); ``keys`` as
        :meth:`region_features`."""
        regions, region_valid = self.region_features(images, keys)
        projected = self.projection(regions)
        words, word_valid = self.word_embeddings(captions, projected.device)
        return grounding_scores(projected, region_valid, words.to(projected.dtype), word_valid, self.temperature)

    def forward(self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Any]]) -> dict[str, Tensor] | Tensor:
        if len(images) != len(targets):
            raise ValueError(f"GroundingModel: {len(images)} images but {len(targets)} targets")
        missing = [t.get("image_id", i) for i, t in enumerate(targets) if not isinstance(t.get("caption"), str)]
        if missing:
            raise ValueError(f"GroundingModel: targets of images {missing} have no 'caption' string")
        keys = None
        if self._feature_cache is not None:
            unnamed = [i for i, t in enumerate(targets) if "image_id" not in t or "flipped" not in t]
            if unnamed:
                raise ValueError(f"GroundingModel: the feature cache needs 'image_id' and 'flipped' in every target; "
                                 f"targets {unnamed} lack them")
            keys = [(int(t["image_id"]), bool(t["flipped"])) for t in targets]
        cached = self._feature_cache if self.training and self._feature_cache is not None else {}
        lost = [t.get("image_id", i) for i, t in enumerate(targets) if t.get("decoded") is False
                and (keys is None or keys[i] not in cached)]
        if lost:
            raise ValueError(f"GroundingModel: images {lost} came without their pixels (CaptionImages decode_once) "
                             "but their features are not cached; build the dataset afresh with the model")
        w2r, r2w = self.score_matrices(images, [t["caption"] for t in targets], keys)
        if self.training:
            return grounding_losses(w2r, r2w)
        return (w2r + r2w) / 2


# --------------------------------------------------------------------------------------------
# hand-over to the teacher


def teacher_init_state(model: nn.Module) -> dict[str, Tensor]:
    """Backbone (torchvision ResNet keys under ``backbone.``) and ``projection.weight`` [D, C5]
    / ``projection.bias`` [D] of a :class:`GroundingModel` (DDP-wrapped is fine), on CPU."""
    model = getattr(model, "module", model)
    if not isinstance(model, GroundingModel):
        raise TypeError(f"teacher_init_state needs a GroundingModel, got {type(model).__name__}")
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k.startswith(("backbone.", "projection."))}


def save_grounding_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write ``{"model": teacher_init_state(model), "backbone", "embedding_dim", "temperature"}``
    to ``path`` atomically (:func:`ovis.io.atomic_path`); returns the path.
    ``torch.load(path, weights_only=True)`` reads it; the engine's ``train.init`` accepts it."""
    path = Path(path)
    state = teacher_init_state(model)
    inner = getattr(model, "module", model)
    blob = {"model": state, "backbone": inner.backbone_name, "embedding_dim": inner.embedding_dim,
            "temperature": inner.temperature}
    with atomic_path(path, unique=False, sync_dir=True) as tmp:  # as the engine's checkpoints
        torch.save(blob, tmp)
    return path

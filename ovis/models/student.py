"""CPL's robust student (docs/cpl.md#24-robust-student): base GT + pseudo masks, heteroscedastic mask noise.

:class:`RobustStudent` has the module names of the ovis R-C4 detector (``transform``, ``backbone``,
``rpn``, ``roi_heads``), so the teacher's checkpoint initialises it key for key (the σ-head is the
only new tensor). Training, per batch:

- the frozen backbone computes features once (no graph when every backbone weight is frozen);
  the RPN is never trained (upstream ``DONT_TRAIN``): its losses are discarded;
- **GT branch** (images with ≥ 1 GT box; caption-only images, which have none, skip it as upstream's
  ``is_det == "No"`` images do, docs/cpl.md#27-caption-only-images): RPN in train mode with the base
  GT (post-NMS train top-n, GT boxes appended), standard losses with the base-class embeddings
  (L2-normalised, zero background row), plain BCE mask loss → ``loss_classifier_gt``,
  ``loss_box_reg_gt``, ``loss_mask_gt``; a batch without GT boxes gives zeros tied to the heads'
  trainable parameters, so the loss dict keeps its keys and always back-propagates;
- **pseudo branch** (images with ≥ 1 pseudo box; the others skip it): eval-mode RPN proposals
  (≤ post-NMS test top-n, no GT appended), sampled like the GT branch (IoU ≥ 0.5 positive,
  positive fraction from the recipe), logits against the pseudo vocabulary's L2-normalised name
  embeddings **with a real zero background row** (docs/deviations.md#95-ambiguities;
  upstream's aerosol-can-as-background quirk is not reproduced). Mask logits are perturbed once, ``μ + σ·ε`` with
  ``σ = exp(s/2)``, ``s`` from a 1×1 conv on the *detached* mask feature; BCE averaged over pixels
  → ``loss_mask_pl`` (weight 1). ``loss_classifier_pl`` and ``loss_box_reg_pl`` are multiplied
  per image by ``λ = 0.01 / mean σ`` (detached mean over that image's positive-RoI pixels;
  an image without positive RoIs reuses the last λ). With ``uncertainty`` off there is no noise
  and all three pseudo losses are × ``lambda_pseudo``. ``pseudo_box_loss=False`` drops
  ``loss_box_reg_pl`` (the author's statement in issue #3; the released code keeps it).

Batches of any size work: λ is computed per image, so batch size 1 (upstream's hard requirement)
gives upstream's numbers exactly. ``σ`` and ``λ`` are not losses (the loop sums every entry of the
loss dict): :attr:`RobustStudent.last_stats` holds the last batch's ``sigma_mean`` / ``lambda_pl``
and ``ovis.methods.cpl.StudentHook`` logs them to ``student/robust.jsonl``.

Inference is a plain Mask R-CNN forward (mask logits μ only) with whatever class embeddings
:func:`ovis.models.detector.set_class_embeddings` installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.roi_heads import project_masks_on_boxes
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ovis.models.heads import ClassAgnosticRoIHeads, EmbeddingRoIHeads

__all__ = [
    "HeteroscedasticMaskPredictor",
    "LAMBDA_NUMERATOR",
    "RobustRoIHeads",
    "RobustStudent",
    "adaptive_weight",
    "heteroscedastic_bce",
]

LAMBDA_NUMERATOR = 0.01  # λ = 0.01 / mean σ (st_generalized_rcnn.py)
SIGMA_BIAS_INIT = 1.0  # σ₀ = exp(1/2) ≈ 1.65
SIGMA_WEIGHT_STD = 0.001


class HeteroscedasticMaskPredictor(MaskRCNNPredictor):
    """The mask predictor (2× deconv → ReLU → 1×1 logits) plus a σ-head ``log_var`` (1×1 conv on
    the detached deconv feature, weight N(0, 0.001), bias 1). ``forward`` returns μ only;
    :meth:`forward_with_sigma` returns ``(μ [R, 1, M, M], σ [R, 1, M, M])``."""

    conv5_mask: nn.ConvTranspose2d
    mask_fcn_logits: nn.Conv2d

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int = 1) -> None:
        super().__init__(in_channels, dim_reduced, num_classes)
        self.log_var = nn.Conv2d(dim_reduced, 1, 1)
        nn.init.normal_(self.log_var.weight, std=SIGMA_WEIGHT_STD)
        nn.init.constant_(cast(Tensor, self.log_var.bias), SIGMA_BIAS_INIT)

    @classmethod
    def from_predictor(cls, predictor: MaskRCNNPredictor) -> HeteroscedasticMaskPredictor:
        """A copy of ``predictor``'s weights with a fresh σ-head."""
        conv, logits = cast(nn.ConvTranspose2d, predictor.conv5_mask), cast(nn.Conv2d, predictor.mask_fcn_logits)
        out = cls(conv.in_channels, conv.out_channels, logits.out_channels)
        out.load_state_dict(predictor.state_dict(), strict=False)
        return out.to(conv.weight.device)

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.conv5_mask(x))

    def forward(self, x: Tensor) -> Tensor:  # nn.Sequential would also run log_var
        return self.mask_fcn_logits(self.features(x))

    def forward_with_sigma(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.mask_fcn_logits(h), torch.exp(0.5 * self.log_var(h.detach()))


def heteroscedastic_bce(mu: Tensor, sigma: Tensor, targets: Tensor, noise: Tensor | None = None) -> Tensor:
    """BCE of one noisy sample ``μ + σ·ε`` (ε ~ N(0, 1) per pixel unless ``noise`` is given)
    against ``targets``, averaged over every pixel. ``mu``/``sigma``/``targets`` broadcast to one
    shape; an empty input gives a zero that keeps the graph."""
    if mu.numel() == 0:
        return mu.sum() * 0 + sigma.sum() * 0
    eps = torch.randn_like(mu) if noise is None else noise
    return F.binary_cross_entropy_with_logits(mu + sigma * eps, targets)


def adaptive_weight(sigma: Tensor) -> Tensor:
    """λ = 0.01 / mean(σ), detached (a scalar tensor)."""
    return LAMBDA_NUMERATOR / sigma.detach().mean()


class RobustRoIHeads(EmbeddingRoIHeads):
    """Student RoI heads: the teacher's C4/FPN heads plus a pseudo branch (see module doc).

    ``box_predictor.class_embeddings`` holds the GT (base) vocabulary; ``pseudo_class_embeddings``
    ``[V + 1, d]`` (row 0 zero = background) the pseudo vocabulary.
    """

    mask_predictor: HeteroscedasticMaskPredictor
    uncertainty: bool
    pseudo_box_loss: bool
    lambda_pseudo: float
    last_lambda: float

    @classmethod
    def from_heads(cls, heads: EmbeddingRoIHeads, uncertainty: bool = True, pseudo_box_loss: bool = True,
                   lambda_pseudo: float = 0.1) -> RobustRoIHeads:
        """The same sub-modules and settings as ``heads`` (the mask predictor gets a σ-head)."""
        if heads.mask_predictor is None:
            raise ValueError("the robust student needs a mask branch (model.mask: true)")
        out = cls(
            heads.box_roi_pool, heads.box_head, heads.box_predictor,
            heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
            mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head,
            mask_predictor=HeteroscedasticMaskPredictor.from_predictor(heads.mask_predictor),
            res5=heads.res5, background_weight=heads.background_weight, smooth_l1_beta=heads.smooth_l1_beta,
        )
        out.uncertainty, out.pseudo_box_loss, out.lambda_pseudo = uncertainty, pseudo_box_loss, lambda_pseudo
        d = heads.box_predictor.projection.out_features
        out.register_buffer("pseudo_class_embeddings", torch.zeros(1, d), persistent=False)
        out.last_lambda = LAMBDA_NUMERATOR / math.exp(SIGMA_BIAS_INIT / 2)
        return out

    def set_pseudo_class_embeddings(self, embeddings: Tensor) -> None:
        """Pseudo vocabulary ``[V, d]`` (as given: L2-normalise beforehand); labels 1..V index it."""
        d = self.box_predictor.projection.out_features
        if embeddings.ndim != 2 or embeddings.shape[1] != d:
            raise ValueError(f"pseudo class embeddings must be [V, {d}], got {list(embeddings.shape)}")
        w = self.box_predictor.projection.weight
        emb = embeddings.detach().to(device=w.device, dtype=w.dtype)
        self.pseudo_class_embeddings = torch.cat([emb.new_zeros(1, d), emb])

    def _sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]):
        """Upstream pseudo-branch sampling: no GT boxes appended to the proposals."""
        gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
        matched, labels = self.assign_targets_to_proposals(proposals, gt_boxes, [t["labels"] for t in targets])
        sampled = self.subsample(labels)
        proposals = [p[s] for p, s in zip(proposals, sampled)]
        labels = [lab[s] for lab, s in zip(labels, sampled)]
        matched = [m[s] for m, s in zip(matched, sampled)]
        reg = self.box_coder.encode([g[m] for g, m in zip(gt_boxes, matched)], proposals)
        return proposals, matched, labels, reg

    def pseudo_losses(self, features: dict[str, Tensor], proposals: list[Tensor],
                      image_shapes: list[tuple[int, int]], targets: list[dict[str, Tensor]]) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Pseudo-branch losses of images that all have ≥ 1 pseudo box; also ``{sigma_mean, lambda_pl}``."""
        if self.pseudo_class_embeddings.shape[0] < 2:
            raise RuntimeError("RobustRoIHeads: no pseudo vocabulary set (call set_pseudo_class_embeddings)")
        n_cls = self.pseudo_class_embeddings.shape[0]
        for t in targets:
            if len(t["labels"]) and (int(t["labels"].min()) < 1 or int(t["labels"].max()) >= n_cls):
                raise ValueError(f"pseudo labels must be 1..{n_cls - 1} (the pseudo vocabulary), got "
                                 f"{t['labels'].tolist()} in image {t.get('image_id', '?')}")
        proposals, matched, labels, reg = self._sample(proposals, targets)
        maps, feats = self.box_features(features, proposals, image_shapes)
        logits = self.box_predictor.embed(feats) @ self.pseudo_class_embeddings.T
        deltas = self.box_predictor.bbox_pred(feats.flatten(1))
        labels_all, reg_all = torch.cat(labels), torch.cat(reg)
        image_of_roi = torch.cat([torch.full((len(lab),), i, device=logits.device) for i, lab in enumerate(labels)])
        n_rois = max(labels_all.numel(), 1)

        pos = [torch.where(lab > 0)[0] for lab in labels]
        pos_boxes = [p[i] for p, i in zip(proposals, pos)]
        if self.res5 is not None:
            offsets = torch.tensor([0] + [len(p) for p in proposals[:-1]], device=maps.device).cumsum(0)
            mask_maps = maps[torch.cat([i + o for i, o in zip(pos, offsets)])]
        else:
            mask_maps = self.mask_head(self.mask_roi_pool(features, pos_boxes, image_shapes))
        mu, sigma = self.mask_predictor.forward_with_sigma(mask_maps)
        m = mu.shape[-1]
        mask_targets = torch.cat([project_masks_on_boxes(t["masks"], b, mi[i], m)
                                  for t, b, mi, i in zip(targets, pos_boxes, matched, pos)])[:, None]

        stats: dict[str, float] = {}
        if self.uncertainty:
            loss_mask = heteroscedastic_bce(mu, sigma, mask_targets)
            lambdas = []
            for s in sigma.split([len(i) for i in pos]):  # per image: λ_i = 0.01 / mean σ of its positives
                lambdas.append(float(adaptive_weight(s)) if s.numel() else self.last_lambda)
                self.last_lambda = lambdas[-1]
            weight = torch.tensor(lambdas, device=logits.device, dtype=logits.dtype)[image_of_roi]
            stats = {"lambda_pl": sum(lambdas) / len(lambdas)}
            if sigma.numel():  # no positive pseudo RoI in this batch: no σ to report
                stats["sigma_mean"] = float(sigma.detach().mean())
        else:
            loss_mask = (F.binary_cross_entropy_with_logits(mu, mask_targets) if mu.numel() else mu.sum() * 0)
            loss_mask = loss_mask * self.lambda_pseudo
            weight = logits.new_full((len(labels_all),), self.lambda_pseudo)
        cls_w = logits.new_ones(n_cls)
        cls_w[0] = self.background_weight
        ce = F.cross_entropy(logits, labels_all, weight=cls_w, reduction="none")
        losses = {"loss_classifier_pl": (weight * ce).sum() / n_rois}
        if self.pseudo_box_loss:
            is_pos = labels_all > 0
            l1 = F.smooth_l1_loss(deltas[is_pos], reg_all[is_pos], beta=self.smooth_l1_beta, reduction="none").sum(1)
            losses["loss_box_reg_pl"] = (weight[is_pos] * l1).sum() / n_rois
        losses["loss_mask_pl"] = loss_mask
        return losses, stats

    def pseudo_loss_keys(self) -> list[str]:
        return ["loss_classifier_pl"] + (["loss_box_reg_pl"] if self.pseudo_box_loss else []) + ["loss_mask_pl"]

    def gt_losses(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                  targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """GT-branch losses (``loss_classifier``, ``loss_box_reg``, ``loss_mask``) of the given images; with
        none, zeros that depend on every trainable parameter of the heads (zero gradients, a graph to run
        backward through), as upstream's ``compute_dummy_loss``."""
        if targets:
            return ClassAgnosticRoIHeads.training_losses(self, features, proposals, image_shapes, targets)
        trainable = [p for p in self.parameters() if p.requires_grad]
        zero = sum((p.sum() for p in trainable), next(iter(features.values())).new_zeros(())) * 0.0
        return {k: zero for k in ("loss_classifier", "loss_box_reg", "loss_mask")}


class RobustStudent(nn.Module):
    """The student detector (see module doc). Build with :meth:`from_detector`.

    ``labeler`` (optional, online mode): an object with ``label(images, captions) -> list[dict]``
    (:class:`ovis.pseudo.cross_modal.PseudoLabeler`) whose outputs' ``category_ids`` map to
    pseudo labels through ``pseudo_label_of``; targets then carry ``captions``. It is kept out of
    the state dict.
    """

    def __init__(self, transform: GeneralizedRCNNTransform, backbone: nn.Module, rpn: nn.Module,
                 roi_heads: RobustRoIHeads) -> None:
        super().__init__()
        self.transform, self.backbone, self.rpn, self.roi_heads = transform, backbone, rpn, roi_heads
        self.last_stats: dict[str, float] = {}
        self._online: tuple[Any, dict[int, int]] | None = None

    @classmethod
    def from_detector(cls, detector: MaskRCNN, uncertainty: bool = True, pseudo_box_loss: bool = True,
                      lambda_pseudo: float = 0.1) -> RobustStudent:
        if not isinstance(detector.roi_heads, EmbeddingRoIHeads):
            raise TypeError("the robust student needs the embedding detector (model.classifier: embedding)")
        heads = RobustRoIHeads.from_heads(detector.roi_heads, uncertainty, pseudo_box_loss, lambda_pseudo)
        return cls(cast(GeneralizedRCNNTransform, detector.transform), detector.backbone, detector.rpn, heads)

    def set_online_labeler(self, labeler: Any, pseudo_label_of: Mapping[int, int]) -> None:
        """Produce pseudo targets every batch with ``labeler`` (a frozen teacher), as upstream does."""
        self._online = (labeler, dict(pseudo_label_of))

    def _add_online_pseudo(self, online: tuple[Any, dict[int, int]], images: list[Tensor],
                           targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        labeler, label_of = online
        if any("captions" not in t for t in targets):
            raise ValueError("online pseudo-labelling needs targets with 'captions' (student.online_pseudo: true)")
        outs = labeler.label(images, [t["captions"] for t in targets])
        merged = []
        for t, o in zip(targets, outs):
            dev = t["boxes"].device
            n = len(o["category_ids"])
            labels = torch.tensor([label_of[c] for c in o["category_ids"]], dtype=torch.int64, device=dev)
            merged.append({
                **t,
                "boxes": torch.cat([t["boxes"], o["boxes"].to(dev, t["boxes"].dtype)]),
                "labels": torch.cat([t["labels"], labels]),
                "masks": torch.cat([t["masks"], o["masks"].to(dev, t["masks"].dtype)]),
                "pseudo": torch.cat([t.get("pseudo", torch.zeros(len(t["labels"]), dtype=torch.bool, device=dev)),
                                     torch.ones(n, dtype=torch.bool, device=dev)]),
            })
        return merged

    def forward(self, images: list[Tensor], targets: list[dict[str, Any]] | None = None):
        if not self.training:
            sizes = [(im.shape[-2], im.shape[-1]) for im in images]
            il, _ = self.transform(images)
            feats = self.backbone(il.tensors)
            proposals, _ = self.rpn(il, feats)
            dets, _ = self.roi_heads(feats, proposals, il.image_sizes)
            return self.transform.postprocess(dets, il.image_sizes, sizes)
        if targets is None:
            raise ValueError("RobustStudent in training mode needs targets")
        if self._online is not None:
            targets = self._add_online_pseudo(self._online, images, targets)
        for t in targets:
            if "pseudo" not in t:
                raise ValueError(f"student targets need a 'pseudo' flag per box (image {t.get('image_id', '?')})")
        il, targets = self.transform(images, targets)
        split = [(t, t["pseudo"].bool()) for t in targets]
        keys = ("boxes", "labels", "masks")
        gt = [{k: t[k][~p] for k in keys} | {"image_id": t.get("image_id")} for t, p in split]
        pl = [{k: t[k][p] for k in keys} | {"image_id": t.get("image_id")} for t, p in split]
        with torch.set_grad_enabled(any(p.requires_grad for p in self.backbone.parameters())):
            feats = self.backbone(il.tensors)
        det = [i for i, g in enumerate(gt) if len(g["boxes"])]  # caption-only images have no GT box
        det_feats = feats if len(det) == len(gt) else {k: v[det] for k, v in feats.items()}
        det_sizes = [il.image_sizes[i] for i in det]
        with torch.no_grad():  # the RPN is not trained in the student (upstream DONT_TRAIN)
            gt_props: list[Tensor] = []
            if det:
                det_il = il if len(det) == len(gt) else ImageList(il.tensors[det], det_sizes)
                gt_props, _ = self.rpn(det_il, det_feats, [{"boxes": gt[i]["boxes"]} for i in det])
            self.rpn.eval()
            try:
                pl_props, _ = self.rpn(il, feats)
            finally:
                self.rpn.train()
        heads = self.roi_heads
        gt_losses = heads.gt_losses(det_feats, gt_props, det_sizes, [{k: gt[i][k] for k in keys} for i in det])
        losses = {f"{k}_gt": v for k, v in gt_losses.items()}
        have = [i for i, p in enumerate(pl) if len(p["boxes"])]
        if have:
            sub = {k: v[have] for k, v in feats.items()}
            pl_losses, stats = heads.pseudo_losses(sub, [pl_props[i] for i in have],
                                                   [il.image_sizes[i] for i in have], [pl[i] for i in have])
            self.last_stats = stats
        else:
            zero = il.tensors.new_zeros(())
            pl_losses = {k: zero for k in heads.pseudo_loss_keys()}
            self.last_stats = {}
        losses.update(pl_losses)
        return losses

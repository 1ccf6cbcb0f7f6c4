"""The hand-over from caption grounding to the teacher (docs/cpl.md#22-teacher): the grounding checkpoint's keys
mapped onto the C4 embedding detector."""

from __future__ import annotations

from torch import Tensor, nn

from ovis.runs import FINAL

GROUNDING_CHECKPOINT = f"grounding/{FINAL}"  # relative to the run folder
# grounding (backbone under backbone., projection.) → C4 embedding detector; first match wins
GROUNDING_PREFIXES = (
    ("backbone.layer4.", "roi_heads.res5."),
    ("backbone.", "backbone.body."),
    ("projection.", "roi_heads.box_predictor.projection."),
)


def grounding_to_detector(state: dict[str, Tensor], detector: nn.Module) -> dict[str, Tensor]:
    """Grounding checkpoint keys → the C4 detector's: layer4 → ``roi_heads.res5.*``, the stem and
    layer1–3 → ``backbone.body.*`` (the res5 RoI head, as maskrcnn-benchmark's suffix matching
    does), ``projection.*`` → ``roi_heads.box_predictor.projection.*``. BatchNorm
    ``num_batches_tracked`` is dropped (the detector's BN is frozen; GroupNorm has no statistics).
    Every detector tensor under those prefixes must be filled with the same shape; otherwise a
    ValueError says which."""
    ours = detector.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        for src, dst in GROUNDING_PREFIXES:
            if key.startswith(src):
                new = dst + key[len(src):]
                if new not in ours:
                    raise ValueError(f"grounding key {key} → {new}: no such detector tensor "
                                     "(model.arch must be c4 and model.norm the grounding run's)")
                if ours[new].shape != value.shape:
                    raise ValueError(f"grounding key {key} {list(value.shape)} does not fit {new} {list(ours[new].shape)}; "
                                     "model.backbone / text encoder must match the grounding run")
                out[new] = value
                break
    targets = [k for k in ours if any(k.startswith(d) for _, d in GROUNDING_PREFIXES)]
    missing = [k for k in targets if k not in out]
    if missing:
        raise ValueError(f"the grounding checkpoint lacks {len(missing)} detector tensors, e.g. {missing[:4]}")
    return out

"""Published numbers to hold ovis against (docs/protocols.md#8-reference-numbers), as fractions like our metrics.

Each entry names its source; `PAPER_AR_CURVES` holds VOC -> non-VOC AR@k points (k -> AR) for the AR-vs-k plot,
`PAPER_AR_BY_PROTOCOL` the points of every open-world setting by protocol (`paper_ar_curves`),
`PAPER_AP50` holds the COCO 48/17 mask AP50 table (`paper_ap50` gives it for its protocol), `PAPER_NOTES` what the
papers say of a setting whose table the kit does not hold.
"""

from __future__ import annotations

# COCO 48/17 mask AP50 (docs/protocols.md#8-reference-numbers, CGG paper's table). Keys: constrained base/novel,
# generalized base/novel/all.
PAPER_AP50: dict[str, dict[str, float]] = {
    "CGG": {"constrained_base": 0.468, "constrained_novel": 0.295, "generalized_base": 0.460,
            "generalized_novel": 0.284, "generalized_all": 0.414},
    "XPM / CPL": {"constrained_base": 0.424, "constrained_novel": 0.240, "generalized_base": 0.415,
                  "generalized_novel": 0.216, "generalized_all": 0.363},
    "OVR (mask)": {"constrained_base": 0.420, "constrained_novel": 0.209, "generalized_base": 0.416,
                   "generalized_novel": 0.171, "generalized_all": 0.352},
    "SB": {"constrained_base": 0.416, "constrained_novel": 0.208, "generalized_base": 0.410,
           "generalized_novel": 0.160, "generalized_all": 0.345},
    "BA-RPN": {"constrained_base": 0.418, "constrained_novel": 0.201, "generalized_base": 0.413,
               "generalized_novel": 0.154, "generalized_all": 0.345},
}

# Open-vocabulary mask AP50 tables by protocol (`paper_ap50`): only COCO 48/17 has one. `demo_ovr`, its setting
# on the demo data, shows it for scale (the report says the numbers are not comparable).
PAPER_AP50_BY_PROTOCOL: dict[str, dict[str, dict[str, float]]] = {"coco_ovr_48_17": PAPER_AP50, "demo_ovr": PAPER_AP50}

# Protocol -> (what the papers give for its setting, the SOURCES key), for settings without a table here.
PAPER_NOTES: dict[str, tuple[str, str]] = {
    "ovr_category_split": (
        "XPM's per-setting numbers for Open Images + Conceptual Captions (recipe `cpl_oi_cc`) are not in the kit: "
        "the paper's abstract gives only its gain there, +5.1 mAP over the state of the art.", "XPM abstract"),
}


def paper_ap50(protocol: str) -> dict[str, dict[str, float]]:
    """The papers' mask AP50 table of a protocol's setting ({} where none is held)."""
    return PAPER_AP50_BY_PROTOCOL.get(protocol, {})


# VOC -> non-VOC AR@k points by iou type (docs/protocols.md#8-reference-numbers). OLN-Box: docs/protocols.md#53-oln-results.
PAPER_AR_CURVES: dict[str, dict[str, dict[int, float]]] = {
    "bbox": {
        "OLN-Box": {10: 0.180, 30: 0.264, 50: 0.296, 100: 0.334, 300: 0.390, 500: 0.415, 1000: 0.450},
        "v-CLR": {100: 0.403},
        "UDOS": {100: 0.335},
    },
    "segm": {
        "GGN (Mask R-CNN)": {100: 0.287},
        "GGN + OLN": {100: 0.337},
        "Mask R-CNN (class-agnostic)": {100: 0.199},
        "v-CLR": {100: 0.337},
        "UDOS": {100: 0.316},
    },
}

PAPER_AUC: dict[str, float] = {"OLN-Box (bbox)": 0.248}

# GGN's other settings, mask AR@100 from the model zoo (docs/protocols.md#52-ggn-results): "Mask R-CNN
# (class-agnostic)" is the table's baseline, "GGN (Mask R-CNN)" GGN; both entries name source "GGN".
# Keyed by the protocol that evaluates the setting; `paper_ar_curves` looks them up.
PAPER_AR_BY_PROTOCOL: dict[str, dict[str, dict[str, dict[int, float]]]] = {
    "coco_voc_nonvoc": PAPER_AR_CURVES,
    "coco_person_nonperson": {  # Person, COCO -> Non-Person, COCO; top-k 3
        "segm": {"GGN (Mask R-CNN)": {100: 0.209}, "Mask R-CNN (class-agnostic)": {100: 0.049}},
    },
    "coco_lvis_noncoco": {  # COCO, LVIS -> Non-COCO, LVIS; top-k 1
        "segm": {"GGN (Mask R-CNN)": {100: 0.204}, "Mask R-CNN (class-agnostic)": {100: 0.165}},
    },
    "lvis_noncoco_coco": {  # Non-COCO, LVIS -> COCO; top-k 1
        "segm": {"GGN (Mask R-CNN)": {100: 0.236}, "Mask R-CNN (class-agnostic)": {100: 0.217}},
    },
    "coco_uvo": {  # COCO -> UVO; top-k 3
        "segm": {"GGN (Mask R-CNN)": {100: 0.434}, "Mask R-CNN (class-agnostic)": {100: 0.401}},
    },
}


def paper_ar_curves(protocol: str, iou_type: str) -> dict[str, dict[int, float]]:
    """The papers' AR@k points for a protocol's setting and IoU type ({} where none are held). Protocols
    without an entry of their own (the VOC -> non-VOC variants and the demo) get the VOC -> non-VOC curves."""
    return PAPER_AR_BY_PROTOCOL.get(protocol, PAPER_AR_CURVES).get(iou_type, {})

SOURCES: dict[str, str] = {
    "PAPER_AP50": "jianzongwu/betrayed-by-captions:figs/result-OVIS.png (CGG paper table), docs/protocols.md#8-reference-numbers",
    "OLN-Box": "mcahny/object_localization_network README and tools/compute_auc.py, docs/protocols.md#53-oln-results",
    "GGN": "facebookresearch/Generic-Grouping README model zoo (VOC -> non-VOC, person -> non-person, COCO -> "
           "non-COCO LVIS, non-COCO LVIS -> COCO, COCO -> UVO), docs/protocols.md#52-ggn-results, docs/protocols.md#8-reference-numbers",
    "v-CLR / UDOS": "self-reported best later numbers, docs/protocols.md#8-reference-numbers",
    "XPM abstract": "Huynh et al., \"Open-Vocabulary Instance Segmentation via Robust Cross-Modal Pseudo-Labeling\", "
                    "CVPR 2022, abstract (+4.5 mAP on MS-COCO, +5.1 on Open Images + Conceptual Captions), "
                    "docs/protocols.md#51-cpl-results",
}

"""Published numbers to hold ovis against (docs/protocols.md#8-reference-numbers), as fractions like our metrics.

Each entry names its source; `PAPER_AR_CURVES` holds AR@k points (k -> AR) for the AR-vs-k plot,
`PAPER_AP50` holds the COCO 48/17 mask AP50 table.
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

SOURCES: dict[str, str] = {
    "PAPER_AP50": "jianzongwu/betrayed-by-captions:figs/result-OVIS.png (CGG paper table), docs/protocols.md#8-reference-numbers",
    "OLN-Box": "mcahny/object_localization_network README and tools/compute_auc.py, docs/protocols.md#53-oln-results",
    "GGN": "facebookresearch/Generic-Grouping README model zoo, docs/protocols.md#52-ggn-results, docs/protocols.md#8-reference-numbers",
    "v-CLR / UDOS": "self-reported best later numbers, docs/protocols.md#8-reference-numbers",
}

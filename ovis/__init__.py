"""ovis: reproducibility kit for open-vocabulary (CPL/XPM) and open-world (GGN/OLN) instance segmentation."""

__version__ = "0.1.0"

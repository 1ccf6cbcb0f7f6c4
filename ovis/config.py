"""Recipes: typed sections loaded from YAML, a base recipe extended by method recipes, dotted overrides.

A recipe file may say ``extends: base.yaml`` (relative to its own folder); the child overrides
only the keys it names. ``--set teacher.max_iter=100`` style overrides are parsed as YAML values.
The resolved recipe and its hash are saved into every run directory.

Sections. The core sections (``data``, ``splits``, ``model``, ``eval``, ``launch``) are declared here,
with :class:`TrainConfig`, the generic training schedule. Every other section belongs to a method, which
declares it in its own package (its module's ``SECTIONS``: section name -> dataclass, e.g.
``ovis/methods/cpl/config.py``); a recipe holds the sections of its ``method`` in ``Recipe.sections``,
read as attributes (``recipe.pseudo``), and a section its method does not own is an error.

This layer knows methods by name only (``ovis.registry``): the lookup from a method to its sections is
installed from above, by :mod:`ovis.methods` when it is imported (:func:`use_method_sections`), so no
string here imports a method. Building a recipe before that is an error that says so; the callers
import their loader from :mod:`ovis.methods` (``from ovis.methods import load_recipe``) or run below a
method's own module, which imports it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints, overload

import yaml

from ovis.io import write_text_atomic
from ovis.protocols import protocol_names
from ovis.registry import METHOD_MODULES


class RecipeError(ValueError):
    """A recipe file or override is wrong; the message says where and what to do."""


@dataclass
class DataConfig:
    """Where the dataset lives. Paths are relative to ``root`` unless absolute."""

    root: str = "demo_data"
    demo: bool = False  # generate the embedded synthetic dataset into root when missing
    demo_seed: int = 0
    demo_num_train: int = 240
    demo_num_val: int = 60
    demo_image_size: int = 160
    train_instances: str = "annotations/instances_train2017.json"
    val_instances: str = "annotations/instances_val2017.json"
    train_captions: str | None = "annotations/captions_train2017.json"
    train_images: str = "train2017"
    val_images: str = "val2017"
    # caption-only images (docs/cpl.md#27-caption-only-images): a COCO captions JSON or a JSONL of
    # {"image", "captions"} lines, and the folder its image paths are relative to; both or neither
    caption_set: str | None = None
    caption_set_images: str | None = None

    def __post_init__(self) -> None:
        if (self.caption_set is None) != (self.caption_set_images is None):
            raise RecipeError("data: caption_set and caption_set_images go together (the captions file of the "
                              "caption-only images and their image folder); set both or neither")

    @overload
    def path(self, rel: str) -> Path: ...
    @overload
    def path(self, rel: str | None) -> Path | None: ...

    def path(self, rel: str | None) -> Path | None:
        if rel is None:
            return None
        p = Path(rel)
        return p if p.is_absolute() else Path(self.root) / p


# keys left out of Recipe.to_dict (and so of every hash) while they are None, by section: settings added
# after runs existed, so that a recipe that does not use them keeps its hash
OPTIONAL_KEYS = {"data": ("caption_set", "caption_set_images"), "model": ("oln_objectness_neg_pos_ub", "oln_rpn_box_coder",
                                                                           "affinity_input_scale"),
                 "pseudo": ("oln_ranker",)}


@dataclass
class SplitsConfig:
    protocol: str = "coco_ovr_48_17"


@dataclass
class ModelConfig:
    """Detector / affinity network layout (docs/cpl.md#22-teacher, docs/ggn.md#31-pa-network, docs/ggn.md#34-mask-r-cnn, docs/ggn.md#35-oln)."""

    arch: str = "c4"  # c4 | fpn
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50
    backbone_weights: str | None = None  # local .pth file or torchvision enum, e.g. ResNet50_Weights.IMAGENET1K_V1
    trainable_layers: int = 3
    norm: str = "frozen_bn"  # frozen_bn (pretrained weights) | gn (GroupNorm trained from scratch)
    classifier: str = "embedding"  # embedding (open vocabulary) | agnostic (one foreground class)
    heads: str = "standard"  # standard | oln
    text_encoder: str = "minilm"
    embedding_dim: int | None = None  # text space size; None = the encoder's
    embedding_temperature: float = 1.0  # embedding classifier: logits = <projection(f), t_c> / T (1 = upstream)
    mask_logits_init_std: float | None = None  # mask logits conv: None = Kaiming (upstream), or normal(0, std)
    min_size: int = 800
    max_size: int = 1333
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    fpn_channels: int = 256
    representation_size: int = 1024
    mask_head_channels: int = 256
    rpn_pre_nms_top_n_train: int = 12000  # per FPN level; OLN heads keep all of them (no NMS, no post cap)
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_train: int = 2000  # not used by OLN heads
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 1.0
    background_weight: float = 0.2
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_smooth_l1_beta: float = 1.0  # RoI box loss: smooth-L1 beta (maskrcnn-benchmark 1.0; 0 = L1 as mmdet)
    c4_pooler_resolution: int = 14  # R-C4 RoIAlign size before res5 (14 as maskrcnn-benchmark; masks are 2x res5 output)
    mask: bool = True  # mask branch (False: boxes only, e.g. OLN-Box)
    # OLN heads: at most this many objectness negatives per positive in an image (mmdet's neg_pos_ub); null = unbounded (upstream)
    oln_objectness_neg_pos_ub: float | None = None
    # OLN-RPN box coder: null = Faster R-CNN's deltas (centre offset, log size); tblr = upstream's distances to the
    # box sides (docs/ggn.md#35-oln), whose proposals start as points (docs/deviations.md#99-demo-recipes)
    oln_rpn_box_coder: str | None = None
    input_format: str = "rgb"  # rgb (torchvision ImageNet mean/std) | bgr255 (maskrcnn-benchmark/caffe checkpoints)
    stride_in_1x1: bool = False  # bottleneck stride on the 1x1 conv (MSRA/caffe ResNet, maskrcnn-benchmark)
    decoder_channels: int = 256  # affinity network (UperNet) width
    # affinity network: it and the grouping see each image resized by this factor, in training and extraction; pseudo
    # masks are resized back to the image. null = the image's own resolution, as upstream (docs/ggn.md#31-pa-network)
    affinity_input_scale: float | None = None


@dataclass
class TrainConfig:
    """One training run (teacher, student, affinity network, grounding)."""

    max_iter: int = 1000
    batch_size: int = 1  # images per process
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_factor: float = 1.0
    weight_decay_bias: float | None = None  # None = weight_decay
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3
    steps: list[int] = field(default_factory=list)
    gamma: float = 0.1
    clip_grad_norm: float | None = None
    amp: str = "none"  # none | bf16 | fp16 (GPU only)
    checkpoint_period: int = 500
    log_period: int = 20
    seed: int = 0
    num_workers: int = 2
    flip_prob: float = 0.5
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept frozen
    init: str | None = None  # checkpoint to initialise from (relative to the run dir)
    find_unused_parameters: bool = False  # DDP; needed when some parameters get no gradient in a step


@dataclass
class EvalConfig:
    protocol: str = "coco_ovr_48_17"
    iou_types: list[str] = field(default_factory=lambda: ["segm", "bbox"])
    max_images: int | None = None
    detections_per_img: int = 100
    # GGN/OLN: detectors run inference side by side in this many single-threaded CPU processes (1: one
    # after another in the stage's process); the detections do not depend on it
    workers: int = 1


@dataclass
class LaunchConfig:
    launcher: str = "local"  # local | torchrun | slurm
    nproc: int = 1
    nodes: int = 1
    partition: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    timeout_min: int = 4320
    cpus_per_task: int = 8  # slurm: CPU cores per GPU task (data-loading workers)
    mem_gb: int | None = None  # slurm: memory per node; None = the partition's default
    rdzv_endpoint: str | None = None  # torchrun with nodes > 1: HOST:PORT of the rendezvous node
    # local on CPU: a pipeline stage's training stages in up to this many spawned one-thread processes
    workers: int = 1


# a method name -> the recipe sections it owns (section name -> dataclass), in recipe order
SectionLookup = Callable[[str], Mapping[str, type]]
_method_sections: SectionLookup | None = None


def use_method_sections(lookup: SectionLookup) -> None:
    """Install the lookup of each method's own sections (:mod:`ovis.methods` installs it on import)."""
    global _method_sections
    _method_sections = lookup


def owned_sections(method: str) -> Mapping[str, type]:
    """The sections ``method`` owns, by the installed lookup."""
    if _method_sections is None:
        raise RecipeError(f"the sections of method {method!r} are unknown here: the methods layer declares them "
                          "and installs their lookup when it is imported; load recipes with its load_recipe")
    return _method_sections(method)


@dataclass
class Recipe:
    """A resolved recipe: the core sections, and in ``sections`` those its method owns (built with their
    defaults when not given), read as attributes: ``recipe.pseudo`` is ``recipe.sections["pseudo"]``."""

    name: str = "unnamed"
    method: str = "cpl"  # a method of ovis.registry.METHOD_MODULES: cpl | ggn | oln
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    splits: SplitsConfig = field(default_factory=SplitsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sections: dict[str, Any] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def __post_init__(self) -> None:
        owned = owned_sections(self.method)
        foreign = sorted(set(self.sections) - set(owned))
        if foreign:
            raise _not_owned(f"recipe {self.name}", self.method, owned, foreign)
        self.sections = {name: self.sections[name] if name in self.sections else cls() for name, cls in owned.items()}

    def __getattr__(self, name: str) -> Any:
        """A section of the recipe's method (called only when no field has the name)."""
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"recipe {self.__dict__.get('name')!r}: method {self.__dict__.get('method')!r} has no "
                             f"section {name!r}; its own sections: {', '.join(sections) or 'none'}")

    def to_dict(self) -> dict[str, Any]:
        """All sections as one mapping (the method's beside the core ones), less the keys of
        ``OPTIONAL_KEYS`` that are None (so the hash of a recipe that does not use them is the one it
        had before they existed)."""
        out: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if key == "sections":
                out.update(value)
            else:
                out[key] = value
        for section, keys in OPTIONAL_KEYS.items():
            for key in keys:
                if key in out.get(section, {}) and out[section][key] is None:  # a method's section may lack it
                    del out[section][key]
        return out

    def hash(self, sections: tuple[str, ...] | None = None) -> str:
        """Short content hash of the resolved recipe, or of only the named top-level ``sections`` that it
        has (a stage's sections that its method does not own are left out)."""
        data = self.to_dict()
        if sections is not None:
            data = {k: data[k] for k in sections if k in data}
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def save(self, run_dir: str | Path) -> Path:
        """Write ``recipe.yaml`` (resolved, with its hash) into run_dir atomically."""
        text = f"# ovis resolved recipe, hash {self.hash()}\n" + yaml.safe_dump(self.to_dict(), sort_keys=False)
        return write_text_atomic(text, Path(run_dir) / "recipe.yaml")


# the top-level keys of every recipe; a method's sections take other names
CORE_KEYS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "sections")


def _not_owned(where: str, method: str, owned: Mapping[str, type], keys: list[str]) -> RecipeError:
    return RecipeError(f"{where}: unknown key(s) {keys}: method {method!r} owns the sections "
                       f"{', '.join(owned) or '(none)'}; valid keys: {sorted([*CORE_KEYS, *owned])}")


def recipe_dir() -> Path:
    return Path(str(resources.files("ovis") / "recipes"))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml") if not p.stem.startswith("_"))


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise RecipeError(f"{path}: 'extends' cycle through {[str(p) for p in seen]}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML{_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return _merge(_read_yaml((path.parent / parent).resolve(), seen + (path,)), data)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's multi-line error as one line: where and what."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{where}: {' '.join(str(getattr(e, 'problem', None) or e).split())}"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``["teacher.max_iter=100", "model.arch=fpn"]`` (or a flat dict of dotted keys) → nested dict."""
    if not overrides:
        return {}
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for item in overrides:
            if "=" not in item:
                raise RecipeError(f"override {item!r}: expected SECTION.KEY=VALUE, e.g. teacher.max_iter=100")
            key, raw = item.split("=", 1)
            try:
                parsed.append((key.strip(), yaml.safe_load(raw)))
            except yaml.YAMLError as e:
                raise RecipeError(f"override {item!r}: value is not valid YAML{_yaml_problem(e)}") from None
        items = parsed
    nested: dict[str, Any] = {}
    for key, value in items:
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise RecipeError(f"{where}: null is not allowed here (expected {getattr(hint, '__name__', hint)})")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise RecipeError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _value(hint: Any, value: Any, where: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    return _check_type(value, hint, where)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    obj = cls(**{key: _value(hints[key], value, f"{where}.{key}") for key, value in data.items()})
    if isinstance(obj, TrainConfig):
        _check_schedule(obj, where)
    _check_values(obj, where)
    return obj


def _build_recipe(data: Any, where: str) -> Recipe:
    """The core sections as ``_build`` builds a section, then those the recipe's method owns, each from its
    keys in ``data`` or from none (its defaults, checked all the same)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {data!r}")
    method = _check_type(data.get("method", Recipe.method), str, f"{where}.method")
    if method not in METHOD_MODULES:
        raise RecipeError(f"{where}: method={method!r} must be one of {', '.join(METHOD_MODULES)}")
    owned = owned_sections(method)
    foreign = sorted(set(data) - set(CORE_KEYS) - set(owned))
    if foreign:
        raise _not_owned(where, method, owned, foreign)
    hints = get_type_hints(Recipe)
    core = {key: _value(hints[key], value, f"{where}.{key}") for key, value in data.items() if key in CORE_KEYS}
    return Recipe(**core, sections={name: _build(cls, data.get(name, {}), f"{where}.{name}")
                                    for name, cls in owned.items()})


def unit_interval(v: float) -> bool:
    return 0 <= v <= 1


def positive_or_none(v: int | None) -> bool:
    return v is None or v >= 1


# the values a key may take: (key, test, what the test asks for); the test is a callable or the allowed values
Rule = tuple[str, Any, str]

# the rules of the core sections. A method's section class declares its own as ``RULES: ClassVar[list[Rule]]``.
# Backbone, text encoder and choice names are those the builders accept (ovis.models); protocols are named in
# ovis.protocols.
_RULES: dict[type, list[Rule]] = {
    DataConfig: [(k, lambda v: v >= 1, "≥ 1") for k in ("demo_num_train", "demo_num_val")]
    + [("demo_image_size", lambda v: v >= 32, "≥ 32")],
    SplitsConfig: [("protocol", protocol_names("splits"), "")],
    ModelConfig: [
        ("arch", ("c4", "fpn"), ""), ("backbone", ("resnet18", "resnet34", "resnet50", "efficientnet_lite0"), ""),
        ("norm", ("frozen_bn", "gn"), ""), ("classifier", ("embedding", "agnostic"), ""),
        ("heads", ("standard", "oln"), ""), ("input_format", ("rgb", "bgr255"), ""),
        ("text_encoder", ("minilm", "bert-base-uncased", "minilm-sentence"), ""),
        ("trainable_layers", lambda v: 0 <= v <= 5, "in 0..5"), ("embedding_dim", positive_or_none, "≥ 1 or null"),
        ("min_size", lambda v: v >= 1, "≥ 1"), ("max_size", lambda v: v >= 1, "≥ 1"),
        ("anchor_sizes", lambda v: bool(v) and all(a > 0 for a in v), "a non-empty list of sizes > 0"),
        ("aspect_ratios", lambda v: bool(v) and all(math.isfinite(a) and a > 0 for a in v),
         "a non-empty list of ratios > 0"),
        *[(k, lambda v: v >= 1, "≥ 1") for k in (
            "fpn_channels", "representation_size", "mask_head_channels", "rpn_pre_nms_top_n_train",
            "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test",
            "box_batch_size_per_image", "box_detections_per_img", "c4_pooler_resolution", "decoder_channels")],
        *[(k, unit_interval, "in [0, 1]") for k in (
            "rpn_nms_thresh", "box_positive_fraction", "box_score_thresh", "box_nms_thresh")],
        ("background_weight", lambda v: math.isfinite(v) and v >= 0, "a finite number ≥ 0"),
        ("box_smooth_l1_beta", lambda v: math.isfinite(v) and v >= 0, "a finite number ≥ 0"),
        ("embedding_temperature", lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
        ("oln_rpn_box_coder", lambda v: v in (None, "tblr"), "tblr or null (Faster R-CNN deltas)"),
        *[(k, lambda v: v is None or (math.isfinite(v) and v > 0), "a finite number > 0 or null")
          for k in ("mask_logits_init_std", "oln_objectness_neg_pos_ub", "affinity_input_scale")],
    ],
    TrainConfig: [("amp", ("none", "bf16", "fp16"), "")],
    EvalConfig: [("protocol", protocol_names("eval"), ""),
                 ("iou_types", lambda v: bool(v) and set(v) <= {"segm", "bbox"}, "a non-empty list of segm, bbox"),
                 ("max_images", positive_or_none, "≥ 1 or null"), ("detections_per_img", lambda v: v >= 1, "≥ 1"),
                 ("workers", lambda v: v >= 1, "≥ 1")],
    LaunchConfig: [("launcher", ("local", "torchrun", "slurm"), ""),
                   ("device", lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"), "auto, cpu, cuda or cuda:N"),
                   *[(k, lambda v: v >= 1, "≥ 1") for k in ("nproc", "nodes", "timeout_min", "cpus_per_task", "workers")],
                   ("mem_gb", positive_or_none, "≥ 1 or null")],
}


def _check_values(obj: Any, where: str) -> None:
    """Values a section cannot run with (``demo_ggn.pseudo.workers=-2``), checked when the recipe is loaded,
    before any stage reads a file or writes one."""
    rules = (rule for klass in type(obj).__mro__ for rule in _RULES.get(klass, vars(klass).get("RULES", ())))
    for key, ok, need in rules:
        value = getattr(obj, key)
        allowed = ok(value) if callable(ok) else value in ok
        if not allowed:
            choices = f"one of {', '.join(map(str, ok))}" if not callable(ok) else need
            raise RecipeError(f"{where}: {key}={value!r} must be {choices}")


def _check_schedule(cfg: TrainConfig, where: str) -> None:
    """Values a training schedule cannot run with, named like type errors (``demo_cpl.teacher.max_iter``)."""
    rules = [
        ("max_iter", cfg.max_iter >= 1, "≥ 1"), ("batch_size", cfg.batch_size >= 1, "≥ 1"),
        ("lr", math.isfinite(cfg.lr) and cfg.lr > 0, "a finite number > 0"),
        ("momentum", 0 <= cfg.momentum < 1, "in [0, 1)"), ("weight_decay", cfg.weight_decay >= 0, "≥ 0"),
        ("warmup_iters", cfg.warmup_iters >= 0, "≥ 0"), ("gamma", cfg.gamma > 0, "> 0"),
        ("steps", all(s >= 0 for s in cfg.steps), "iterations ≥ 0"),
        ("clip_grad_norm", cfg.clip_grad_norm is None or cfg.clip_grad_norm > 0, "> 0 or null"),
        ("checkpoint_period", cfg.checkpoint_period >= 1, "≥ 1"), ("log_period", cfg.log_period >= 1, "≥ 1"),
        ("num_workers", cfg.num_workers >= 0, "≥ 0"), ("flip_prob", 0 <= cfg.flip_prob <= 1, "in [0, 1]"),
    ]
    for key, ok, need in rules:
        if not ok:
            raise RecipeError(f"{where}: {key}={getattr(cfg, key)!r} must be {need}")


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A recipe is a packaged name (``demo_cpl``) or a path to a YAML file."""
    p = Path(recipe)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise RecipeError(f"{p}: recipe file not found")
        return p
    packaged = recipe_dir() / f"{recipe}.yaml"
    if not packaged.is_file():
        raise RecipeError(f"unknown recipe {str(recipe)!r}; packaged recipes: {', '.join(list_recipes())}")
    return packaged


def load_recipe(recipe: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Load a recipe by name or path, apply dotted overrides, validate every key and type."""
    path = resolve_recipe_path(recipe)
    data = _merge(_read_yaml(path.resolve()), parse_overrides(overrides))
    data.setdefault("name", path.stem)
    return _build_recipe(data, path.stem)


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Rebuild a Recipe from its ``to_dict()`` form (e.g. a saved ``recipe.yaml``)."""
    return _build_recipe(data, str(data.get("name", "recipe")))

"""Captions → category words (docs/cpl.md#23-pseudo-labels steps 1–2, docs/deviations.md#93-lemmatisation, docs/deviations.md#94-vocabulary).

CPL's pseudo-label vocabulary is every synonym of the 1203 LVIS v1 categories; an image's
captions are lemmatised and every synonym that occurs as a whole word sequence is a match.

Text normalisation, applied identically to vocabulary synonyms and captions:

1. lower-case; for synonyms also underscores → spaces and everything from "(" on dropped
   (``"bus_(vehicle)"`` → ``"bus"``);
2. tokens = maximal runs of letters: digits, punctuation, apostrophes and hyphens separate words,
   so ``"hot-dog"`` in a caption matches the synonym ``"hot dog"`` and LVIS ``"t-shirt"`` is
   the two tokens ``t shirt`` on both sides (spaCy, used upstream, splits hyphens too);
3. every token is lemmatised as a noun with lemminflect (:func:`lemmatize`), whose data ships
   in the package (spaCy's English model, used upstream, is not on the registry).

Matching follows upstream: a synonym matches where its token sequence occurs in a caption's
token sequence; overlapping matches are all kept (``"hot dog"`` also yields ``"dog"``), matches
are pooled over an image's captions and de-duplicated by synonym string. Matching is a dict
lookup over the caption's n-grams (n ≤ longest synonym, pruned by a prefix set), so the cost
per caption does not grow with the vocabulary.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from lemminflect import getAllLemmas, getLemma
from PIL import Image, UnidentifiedImageError

from ovis.data.coco import CocoFormatError, is_coco_id, read_json

__all__ = [
    "COCO_EXTRA_SYNONYMS",
    "COCO_TO_LVIS",
    "CaptionedImage",
    "Vocabulary",
    "WordMatch",
    "caption_tokens",
    "caption_words",
    "find_words",
    "lemmatize",
    "load_lvis_categories",
    "lvis_matches",
    "normalize_phrase",
    "parse_caption_file",
    "read_caption_set",
]

# COCO category name → LVIS v1 category names whose synonyms it also takes, beyond the
# automatic match (same normalised name or synonym, see ``lvis_matches``). Needed where LVIS
# names the object differently ("wine glass" ↔ "wineglass") or where COCO's category covers
# several LVIS ones (COCO "sports ball" covers LVIS "ball", "soccer_ball", ...).
COCO_TO_LVIS: dict[str, tuple[str, ...]] = {
    "airplane": ("jet_plane", "seaplane"),
    "bird": ("duck", "duckling", "goose", "gull", "pigeon"),
    "car": ("cab_(taxi)", "jeep", "minivan"),
    "cat": ("kitten",),
    "cell phone": ("cellular_telephone", "telephone"),
    "cup": ("mug", "teacup"),
    "cow": ("calf",),
    "dining table": ("table", "kitchen_table"),
    "dog": ("puppy",),
    "hair drier": ("hair_dryer",),
    "laptop": ("laptop_computer",),
    "microwave": ("microwave_oven",),
    "oven": ("stove",),
    "potted plant": ("flowerpot",),
    "remote": ("remote_control",),
    "sheep": ("lamb_(animal)",),
    "sports ball": ("ball", "soccer_ball", "tennis_ball", "beachball"),
    "tennis racket": ("racket",),
    "truck": ("pickup_truck", "fire_engine", "garbage_truck", "trailer_truck", "tow_truck"),
    "wine glass": ("wineglass",),
}

# COCO category name → words LVIS has no synonym for but COCO captions use for that object.
# Not part of the upstream (LVIS) vocabulary: used only by ``Vocabulary.from_categories(...,
# lvis_synonyms=True)`` so that COCO-class parsing finds what a careful reader would.
COCO_EXTRA_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("people", "guy", "lady", "kid", "player", "skier", "surfer", "skateboarder",
               "snowboarder", "pitcher", "batter", "catcher", "toddler"),
    "airplane": ("plane", "jet", "jetliner", "airliner", "aircraft"),
    "baseball glove": ("mitt",),
    "motorcycle": ("motorbike", "motor bike"),
    "hot dog": ("hotdog",),
    "refrigerator": ("fridge",),
    "teddy bear": ("teddy",),
    "potted plant": ("houseplant", "plant"),
    "tv": ("television",),
    "laptop": ("computer",),
    "cell phone": ("smartphone",),
    "wine glass": ("glass of wine",),
}

_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (Unicode), nothing else


@lru_cache(maxsize=200_000)
def lemmatize(word: str) -> str:
    """Noun lemma of one lower-case word ("men" → "man", "knives" → "knife", "skis" → "ski").

    Dictionary words without a noun reading ("riding", "was") stay as they are; words outside
    lemminflect's dictionary get its noun rules ("frisbees" → "frisbee"). With several noun
    lemmas the word itself wins if it is one ("glasses"), else the first lemma that is not also
    a verb lemma ("leaves" → "leaf", not "leave").
    """
    lemmas = getAllLemmas(word)
    if not lemmas:
        oov = getLemma(word, upos="NOUN", lemmatize_oov=True)
        return oov[0] if oov else word
    nouns = lemmas.get("NOUN")
    if not nouns:
        return word
    if len(nouns) == 1:
        return nouns[0]
    if word in nouns:
        return word
    other = {lemma for pos, forms in lemmas.items() if pos != "NOUN" for lemma in forms}
    return next((n for n in nouns if n not in other), nouns[0])


def caption_tokens(text: str) -> tuple[str, ...]:
    """Lemmatised word tokens of a caption (lower-cased, split on non-letters)."""
    return tuple(lemmatize(w) for w in _WORD.findall(text.lower()))


def normalize_phrase(name: str) -> str:
    """Vocabulary form of a category name or synonym: ``"Bus_(vehicle)"`` → ``"bus"``,
    ``"hot_dogs"`` → ``"hot dog"``; empty string if nothing is left."""
    return " ".join(caption_tokens(name.split("(", 1)[0].replace("_", " ")))


@dataclass(frozen=True)
class WordMatch:
    """One vocabulary synonym found in an image's captions.

    ``word``: the lemmatised synonym; ``category_id``: the category it maps to; ``captions``:
    indices (into the caption list given to :func:`find_words`) of the captions containing it.
    """

    word: str
    category_id: int
    captions: tuple[int, ...]


class Vocabulary:
    """Lemmatised synonym → category id, plus category id → name.

    Build with :meth:`from_lvis` (upstream CPL vocabulary) or :meth:`from_categories` (a
    dataset's own categories). When two synonyms lemmatise to the same string the later one
    wins, as upstream.
    """

    def __init__(self, synonyms: Mapping[str, int], category_names: Mapping[int, str]) -> None:
        self.synonyms: dict[str, int] = dict(synonyms)
        self.category_names: dict[int, str] = dict(category_names)
        missing = sorted({c for c in self.synonyms.values() if c not in self.category_names})
        if missing:
            raise ValueError(f"Vocabulary: category ids {missing} have synonyms but no name")
        self._by_tokens = {tuple(s.split(" ")): s for s in self.synonyms if s}
        self._prefixes = {key[:n] for key in self._by_tokens for n in range(1, len(key) + 1)}
        self.max_words = max((len(k) for k in self._by_tokens), default=0)

    def __len__(self) -> int:
        return len(self.synonyms)

    def __repr__(self) -> str:
        return (f"Vocabulary({len(self.synonyms)} synonyms, {len(self.category_names)} categories, "
                f"up to {self.max_words} words)")

    @classmethod
    def _from_pairs(cls, pairs: Iterable[tuple[str, int]], names: Mapping[int, str]) -> Vocabulary:
        synonyms: dict[str, int] = {}
        for raw, cid in pairs:
            phrase = normalize_phrase(raw)
            if phrase:
                synonyms[phrase] = cid
        return cls(synonyms, names)

    @classmethod
    def from_lvis(cls, categories: Sequence[Mapping] | None = None) -> Vocabulary:
        """CPL's vocabulary: all synonyms of the LVIS v1 categories → LVIS category id (1..1203).

        ``categories`` defaults to the packaged ``lvis_v1_categories.json``.
        """
        cats = load_lvis_categories() if categories is None else categories
        pairs = [(syn, int(c["id"])) for c in cats for syn in c["synonyms"]]
        return cls._from_pairs(pairs, {int(c["id"]): str(c["name"]) for c in cats})

    @classmethod
    def from_categories(cls, categories: Sequence[Mapping], lvis_synonyms: bool = False) -> Vocabulary:
        """Vocabulary of a dataset's own categories: each ``name`` and optional ``synonyms``.

        With ``lvis_synonyms=True`` every category also takes the synonyms of its LVIS
        categories (:func:`lvis_matches`: same normalised name or synonym, plus ``COCO_TO_LVIS``)
        and the words in ``COCO_EXTRA_SYNONYMS`` for its name. So for COCO, "a man riding a
        skateboard" yields person (LVIS "person" lists "man") and skateboard.
        """
        names = {int(c["id"]): str(c["name"]) for c in categories}
        pairs: list[tuple[str, int]] = []
        extra = {normalize_phrase(k): v for k, v in COCO_EXTRA_SYNONYMS.items()} if lvis_synonyms else {}
        if lvis_synonyms:
            lvis = {int(c["id"]): c for c in load_lvis_categories()}
            for cid, lvis_ids in lvis_matches(categories).items():
                pairs += [(syn, cid) for lid in lvis_ids for syn in lvis[lid]["synonyms"]]
        for c in categories:
            cid = int(c["id"])
            pairs.append((str(c["name"]), cid))
            pairs += [(str(s), cid) for s in c.get("synonyms") or ()]
            pairs += [(s, cid) for s in extra.get(normalize_phrase(str(c["name"])), ())]
        return cls._from_pairs(pairs, names)

    def match_tokens(self, toks: Sequence[str]) -> list[str]:
        """Synonyms occurring in one lemmatised token sequence, in order of their start."""
        found: list[str] = []
        by_tokens, prefixes = self._by_tokens, self._prefixes
        n = len(toks)
        for i in range(n):
            key: tuple[str, ...] = ()
            for j in range(i, min(n, i + self.max_words)):
                key = key + (toks[j],)
                if key not in prefixes:
                    break
                syn = by_tokens.get(key)
                if syn is not None:
                    found.append(syn)
        return found


@lru_cache(maxsize=1)
def _lvis_categories_cached() -> tuple[dict, ...]:
    ref = resources.files("ovis.data") / "resources" / "lvis_v1_categories.json"
    with ref.open("r", encoding="utf-8") as f:
        return tuple(json.load(f))


def load_lvis_categories() -> list[dict]:
    """The packaged LVIS v1 category list (1203 dicts with id, name, synonyms, ...)."""
    return [dict(c) for c in _lvis_categories_cached()]


def lvis_matches(categories: Sequence[Mapping]) -> dict[int, list[int]]:
    """Category id → LVIS v1 category ids describing the same object.

    Rule: an LVIS category matches when the normalised category name equals the normalised LVIS
    name or one of its synonyms (so COCO "couch" ↔ LVIS "sofa", "skis" ↔ "ski", "tie" ↔
    "necktie"); ``COCO_TO_LVIS`` adds the rest by name. Categories with no match are absent.
    """
    lvis = _lvis_categories_cached()
    by_phrase: dict[str, list[int]] = {}
    for entry in lvis:
        for s in {entry["name"], *entry["synonyms"]}:
            ids = by_phrase.setdefault(normalize_phrase(s), [])
            if entry["id"] not in ids:
                ids.append(entry["id"])
    by_name = {c["name"]: c["id"] for c in lvis}
    table = {normalize_phrase(k): v for k, v in COCO_TO_LVIS.items()}
    out: dict[int, list[int]] = {}
    for c in categories:
        key = normalize_phrase(str(c["name"]))
        ids = list(by_phrase.get(key, []))
        for lvis_name in table.get(key, ()):
            if lvis_name not in by_name:
                raise KeyError(f"COCO_TO_LVIS[{c['name']!r}] names {lvis_name!r}, not an LVIS v1 category")
            if by_name[lvis_name] not in ids:
                ids.append(by_name[lvis_name])
        if ids:
            out[int(c["id"])] = ids
    return out


def find_words(captions: Sequence[str], vocab: Vocabulary) -> list[WordMatch]:
    """Vocabulary synonyms found in the captions of one image, pooled and de-duplicated.

    Ordered by first occurrence (caption, then position); each :class:`WordMatch` lists the
    indices of the captions containing its synonym.
    """
    where: dict[str, list[int]] = {}
    for idx, caption in enumerate(captions):
        for syn in vocab.match_tokens(caption_tokens(caption)):
            hits = where.setdefault(syn, [])
            if not hits or hits[-1] != idx:
                hits.append(idx)
    return [WordMatch(syn, vocab.synonyms[syn], tuple(idx)) for syn, idx in where.items()]


def parse_caption_file(path: str | Path) -> dict[int, list[str]]:
    """COCO captions JSON → image id → its captions (file order, whitespace stripped).

    Images listed under ``images`` without captions map to ``[]``. Every caption needs a unique integer
    ``id``, an integer ``image_id`` (one of ``images`` when the file lists them) and a non-empty string
    ``caption``; unknown keys are allowed. Raises :class:`~ovis.data.coco.CocoFormatError` naming the
    file, the annotation (id or index) and the field on bad input.
    """
    return _captions_by_image(read_json(path), os.fspath(path))


def _captions_by_image(data: Any, name: str) -> dict[int, list[str]]:
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise CocoFormatError(f"{name}: no 'annotations' list (is this a COCO captions file?)")
    out: dict[int, list[str]] = {}
    images = data.get("images", [])
    if not isinstance(images, list):
        raise CocoFormatError(f"{name}: 'images' is a {type(images).__name__}, expected a list")
    for i, img in enumerate(images):
        iid = img.get("id") if isinstance(img, dict) else None
        if not is_coco_id(iid):
            raise CocoFormatError(f"{name}: image at index {i}: 'id' is {iid!r:.40}, expected a 64-bit integer")
        if iid in out:
            raise CocoFormatError(f"{name}: image {iid}: duplicate 'id'")
        out[iid] = []
    seen: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise CocoFormatError(f"{name}: annotation at index {i} is a {type(ann).__name__}, expected an object")
        aid = ann.get("id")
        if not is_coco_id(aid):
            raise CocoFormatError(f"{name}: annotation at index {i}: 'id' is {aid!r:.40}, expected a 64-bit integer")
        if aid in seen:
            raise CocoFormatError(f"{name}: annotation {aid}: duplicate 'id'")
        seen.add(aid)
        image_id, caption = ann.get("image_id"), ann.get("caption")
        if not is_coco_id(image_id) or (images and image_id not in out):
            expected = "an image id in 'images'" if images else "an integer"
            raise CocoFormatError(f"{name}: annotation {aid}: 'image_id' {image_id!r:.40} is not {expected}")
        if not isinstance(caption, str) or not caption.strip():
            raise CocoFormatError(f"{name}: annotation {aid}: 'caption' is {caption!r:.40}, expected a non-empty "
                                  "string; is this a captions file?")
        out.setdefault(image_id, []).append(caption.strip())
    return out


def caption_words(captions_by_image: Mapping[int, Sequence[str]], vocab: Vocabulary) -> dict[int, list[dict]]:
    """Image id → ``[{"word", "category_id", "category_name"}]`` found in its captions.

    The per-image lists of ``splits/captions.json``; images whose captions match nothing map
    to ``[]`` (they get no pseudo labels, docs/cpl.md#23-pseudo-labels step 8).
    """
    return {
        image_id: [
            {"word": m.word, "category_id": m.category_id, "category_name": vocab.category_names[m.category_id]}
            for m in find_words(caps, vocab)
        ]
        for image_id, caps in captions_by_image.items()
    }


@dataclass(frozen=True)
class CaptionedImage:
    """One image of a caption-only set: ``file_name`` relative to the set's image folder, its captions,
    ``source`` (where the file names it: ``"image <id>"`` of a COCO captions file, ``"line <n>"`` of a JSONL,
    the first line of an image listed on several) and its size (None where neither the file nor a read of the
    image gave one)."""

    file_name: str
    captions: tuple[str, ...]
    source: str
    width: int | None = None
    height: int | None = None


def read_caption_set(path: str | Path, image_root: str | Path | None = None) -> list[CaptionedImage]:
    """The captioned images of a caption-only set (docs/cpl.md#27-caption-only-images), in file order.

    ``path`` is a COCO captions JSON (:func:`parse_caption_file`, whose ``images`` need a ``file_name``; images
    without a caption are left out) or, when it ends in ``.jsonl``, one JSON object per line with ``image`` (the
    path under the image folder) and ``captions`` (a list of strings) or ``caption`` (one string); an image on
    several lines takes the captions of all of them. With ``image_root`` every image must be a readable file
    there, and sizes the file does not give are read from it. Bad input raises
    :class:`~ovis.data.coco.CocoFormatError` naming the file and the image id or line.
    """
    name = os.fspath(path)
    items = _jsonl_caption_set(path, name) if name.endswith(".jsonl") else _coco_caption_set(path, name)
    if not items:
        raise CocoFormatError(f"{name}: no captioned image; a caption-only set needs at least one")
    if image_root is None:
        return items
    root = Path(image_root)
    out = []
    for item in items:
        where, file = f"{name}: {item.source}", root / item.file_name
        if item.width is None or item.height is None:
            width, height = _image_size(file, where)
            item = CaptionedImage(item.file_name, item.captions, item.source, width, height)
        elif not file.is_file():
            raise CocoFormatError(f"{where}: image file {file} not found; check data.caption_set_images")
        out.append(item)
    return out


def _image_size(file: Path, where: str) -> tuple[int, int]:
    try:
        with Image.open(file) as im:
            return im.size
    except FileNotFoundError:
        raise CocoFormatError(f"{where}: image file {file} not found; check data.caption_set_images") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CocoFormatError(f"{where}: cannot read image {file}: {e}") from None


def _coco_caption_set(path: str | Path, name: str) -> list[CaptionedImage]:
    data = read_json(path)
    captions = _captions_by_image(data, name)
    images = data.get("images")
    if not images:
        raise CocoFormatError(f"{name}: no 'images' list; a caption-only set in COCO form needs its images' file_name")
    out = []
    for im in images:
        file_name, width, height = im.get("file_name"), im.get("width"), im.get("height")
        if not isinstance(file_name, str) or not file_name.strip():
            raise CocoFormatError(f"{name}: image {im['id']}: 'file_name' is {file_name!r:.40}, expected the image's "
                                  "path under the image folder")
        if (width is None) != (height is None) or any(v is not None and (type(v) is not int or v < 1)
                                                      for v in (width, height)):
            raise CocoFormatError(f"{name}: image {im['id']}: width {width!r:.20} and height {height!r:.20} must "
                                  "both be integers >= 1, or both absent (read from the image)")
        if captions[im["id"]]:
            out.append(CaptionedImage(file_name, tuple(captions[im["id"]]), f"image {im['id']}", width, height))
    return out


def _jsonl_caption_set(path: str | Path, name: str) -> list[CaptionedImage]:
    by_image: dict[str, tuple[list[str], int]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except OSError as e:
        raise CocoFormatError(f"{name}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise CocoFormatError(f"{name}: not UTF-8 text ({e.reason})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}: line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CocoFormatError(f"{where}: not a JSON object ({e.msg}); each line is "
                                  '{"image": PATH, "captions": [TEXT, ...]}') from None
        if not isinstance(obj, dict):
            raise CocoFormatError(f"{where}: a {type(obj).__name__}, expected an object with 'image' and 'captions'")
        image = obj.get("image")
        if not isinstance(image, str) or not image.strip():
            raise CocoFormatError(f"{where}: 'image' is {image!r:.40}, expected the image's path under the image folder")
        if ("caption" in obj) == ("captions" in obj):
            raise CocoFormatError(f"{where}: give 'captions' (a list of strings) or 'caption' (a string), one of them")
        caps = [obj["caption"]] if "caption" in obj else obj["captions"]
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c.strip() for c in caps):
            raise CocoFormatError(f"{where}: captions {caps!r:.60} are not a non-empty list of non-empty strings")
        by_image.setdefault(image, ([], n))[0].extend(c.strip() for c in caps)
    return [CaptionedImage(image, tuple(caps), f"line {n}") for image, (caps, n) in by_image.items()]

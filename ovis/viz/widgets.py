"""The pseudo-mask browser: GT, teacher predictions and pseudo masks side by side.

``MaskBrowser`` pages through the images of a COCO instances file and draws, per image, one
row ``GT | panel 1 | panel 2 ...`` (e.g. teacher detections, pseudo masks). Controls filter by
category or caption word, by score and uncertainty, jump to an image id and set the mask
opacity. The live view is built with ``ipywidgets.interactive_output`` into an ``Output``;
callbacks do not run in a headless (papermill) execution, so ``show()`` first displays a
static grid of the first filtered images, which an executed notebook keeps.
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
from IPython.display import HTML, Image, display
from matplotlib.figure import Figure

from ovis.viz.draw import load_image, panel_grid

__all__ = ["MaskBrowser", "figure_png"]

Choice = tuple[str, Any]  # ("all", None) | ("category", category id) | ("word", word)
ALL: Choice = ("all", None)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure (fast zlib level: these are for screens, not archives)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def _read_json(path: str | Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"MaskBrowser: {what} file {path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"MaskBrowser: {what} file {path} is not valid JSON ({e})") from None


def _panel_annotations(name: str, src: Sequence[dict] | Mapping | str | Path) -> list[dict]:
    """A panel's annotations from a results list, an instances dict, or a JSON file of either."""
    where = f"panel {name!r}"
    data: Any = src  # a file holds any JSON
    if isinstance(src, (str, Path)):
        where += f" ({src})"
        data = _read_json(src, f"panel {name!r}")
    if isinstance(data, Mapping):
        if "annotations" not in data:
            raise ValueError(f"MaskBrowser: {where} is a dict without 'annotations'; give a COCO "
                             "results list or a COCO instances dict")
        data = data["annotations"]
    anns = list(data)
    for a in anns:
        if not isinstance(a, Mapping) or "image_id" not in a:
            raise ValueError(f"MaskBrowser: {where} has an entry without 'image_id' ({str(a)[:80]}); "
                             "annotations must be COCO results or instances annotations")
    return anns


def _int_keys(d: Mapping[Any, Sequence[str]] | None) -> dict[int, list[str]]:
    # JSON object keys are strings; image ids are ints
    return {int(k): list(v) for k, v in (d or {}).items()}


class MaskBrowser:
    """Browse images with GT and any number of annotation panels side by side.

    gt: COCO instances dict or JSON path. image_root: folder of the images' ``file_name``.
    panels: name → annotations (COCO results list, instances dict, or a JSON path to either);
    annotations may carry ``score``, ``uncertainty`` and ``pseudo`` (drawn dashed).
    captions: image id → captions (first one shown under GT). words: image id → caption words
    (e.g. the category words of ``splits/captions.json``), offered in the filter dropdown.

    Filtering: GT annotations are kept by category; panel annotations by category, score ≥
    ``score`` and uncertainty ≤ ``uncertainty`` (a missing score or uncertainty passes). An
    image passes when it matches the category (some kept annotation in any panel) or the
    word (in its ``words``), and, once a threshold is moved off its default, when at least
    one panel annotation survives the thresholds.
    """

    def __init__(
        self,
        gt: dict | str | Path,
        image_root: str | Path,
        panels: Mapping[str, Sequence[dict] | Mapping | str | Path] | None = None,
        captions: Mapping[Any, Sequence[str]] | None = None,
        words: Mapping[Any, Sequence[str]] | None = None,
        *,
        alpha: float = 0.5,
        panel_size: float = 4.0,
        cache_images: int = 16,
    ) -> None:
        self.coco = gt if isinstance(gt, dict) else _read_json(gt, "GT")
        self.image_root = Path(image_root)
        self.images: dict[int, dict] = {img["id"]: img for img in self.coco.get("images", [])}
        if not self.images:
            raise ValueError("MaskBrowser: the GT has no images; pass a COCO instances dict/file with 'images'")
        self.categories: dict[int, str] = {c["id"]: c["name"] for c in self.coco.get("categories", [])}
        self.captions = _int_keys(captions)
        self.words = {k: sorted({w.lower() for w in v}) for k, v in _int_keys(words).items()}
        self.panel_size = panel_size

        self._anns: dict[str, dict[int, list[dict]]] = {"GT": defaultdict(list)}
        for a in self.coco.get("annotations", []):
            self._anns["GT"][a["image_id"]].append(a)
        for name, src in (panels or {}).items():
            if name == "GT":
                raise ValueError("MaskBrowser: panel name 'GT' is reserved for the ground truth; rename the panel")
            anns = _panel_annotations(name, src)
            by_image: dict[int, list[dict]] = defaultdict(list)
            for a in anns:
                if a["image_id"] in self.images:
                    by_image[a["image_id"]].append(a)
            if anns and not by_image:
                raise ValueError(
                    f"MaskBrowser: none of the {len(anns)} annotations of panel {name!r} refers to a GT image "
                    f"(first image_id {anns[0]['image_id']!r}); the panel belongs to another dataset/split"
                )
            self._anns[name] = by_image
        self.panel_names = list(self._anns)[1:]

        panel_anns = [a for name in self.panel_names for lst in self._anns[name].values() for a in lst]
        scores = [float(a["score"]) for a in panel_anns if a.get("score") is not None]
        uncs = [float(a["uncertainty"]) for a in panel_anns if a.get("uncertainty") is not None]
        score_max = max([1.0, *scores])
        unc_max = max(uncs) if uncs else 1.0
        unc_max = unc_max if unc_max > 0 else 1.0

        cat_ids = sorted(
            {a["category_id"] for by in self._anns.values() for lst in by.values() for a in lst
             if a.get("category_id") is not None},
            key=lambda c: (self.categories.get(c, str(c)), c),
        )
        all_words = sorted({w for ws in self.words.values() for w in ws})
        options: list[tuple[str, Choice]] = [("All", ALL)]
        options += [(f"category: {self.categories.get(c, c)}", ("category", c)) for c in cat_ids]
        options += [(f"word: {w}", ("word", w)) for w in all_words]

        style = {"description_width": "initial"}
        self.choice = W.Dropdown(options=options, value=ALL, description="show", style=style)
        self.score = W.FloatSlider(value=0.0, min=0.0, max=score_max, step=0.01, description="score ≥",
                                   continuous_update=False, style=style, disabled=not scores)
        self.uncertainty = W.FloatSlider(value=unc_max, min=0.0, max=unc_max, step=unc_max / 100,
                                         description="uncertainty ≤", continuous_update=False,
                                         style=style, disabled=not uncs)
        self.opacity = W.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="opacity",
                                     continuous_update=False, style=style)
        self.image = W.Dropdown(description="image", style=style)
        self.jump = W.IntText(value=0, description="go to id", style=style, layout=W.Layout(width="180px"))
        self.prev_button = W.Button(description="◀ prev", layout=W.Layout(width="80px"))
        self.next_button = W.Button(description="next ▶", layout=W.Layout(width="80px"))
        self.status = W.HTML()

        self.n_renders = 0  # renders into the live Output (tests and users can watch it change)
        self.last_figure: Figure | None = None
        self.output: W.Output | None = None
        self._widget: W.VBox | None = None
        self._updating = False  # set while the image list is rebuilt: one render per user change
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_images

        self._refresh_images()
        for w in (self.choice, self.score, self.uncertainty):
            w.observe(self._on_filter, names="value")
        self.jump.observe(self._on_jump, names="value")
        self.prev_button.on_click(lambda _: self.step(-1))
        self.next_button.on_click(lambda _: self.step(+1))
        self.image.observe(lambda _: self._update_status(), names="value")

    # ---------------------------------------------------------------------------- filtering

    def _visible(self, image_id: int, cat: Any, s_min: float, u_max: float) -> dict[str, list[dict]]:
        # widget values are read once by the caller: traitlets access is slow per annotation
        out = {}
        for name, by_image in self._anns.items():
            anns = by_image.get(image_id, [])
            if cat is not None:
                anns = [a for a in anns if a.get("category_id") == cat]
            if name != "GT":
                anns = [
                    a for a in anns
                    if (a.get("score") is None or a["score"] >= s_min)
                    and (a.get("uncertainty") is None or a["uncertainty"] <= u_max)
                ]
            out[name] = anns
        return out

    def _params(self) -> tuple[Any, float, float]:
        kind, value = self.choice.value
        return (value if kind == "category" else None), self.score.value, self.uncertainty.value

    def visible_annotations(self, image_id: int) -> dict[str, list[dict]]:
        """Annotations drawn for an image under the current filters: {"GT": [...], panel: [...]}."""
        if image_id not in self.images:
            raise KeyError(f"MaskBrowser: image id {image_id} is not in the GT images")
        return self._visible(image_id, *self._params())

    def _thresholds_moved(self) -> bool:
        return self.score.value > self.score.min or (
            not self.uncertainty.disabled and self.uncertainty.value < self.uncertainty.max
        )

    def filtered_image_ids(self) -> list[int]:
        """Ids of the images passing the current category/word choice and thresholds, in GT order."""
        kind, value = self.choice.value
        thresholds = self._thresholds_moved()
        params = self._params()
        ids = []
        for image_id in self.images:
            if kind == "word" and value not in self.words.get(image_id, ()):
                continue
            if kind == "all" and not thresholds:
                ids.append(image_id)
                continue
            vis = self._visible(image_id, *params)
            if kind == "category" and not any(vis.values()):
                continue
            if thresholds and not any(vis[name] for name in self.panel_names):
                continue
            ids.append(image_id)
        return ids

    # ---------------------------------------------------------------------------- navigation

    @property
    def image_id(self) -> int | None:
        """The image shown now (None when no image passes the filter)."""
        return self.image.value

    def _refresh_images(self) -> None:
        ids = self.filtered_image_ids()
        current = self.image.value
        self._updating = True
        try:
            self.image.options = [(f"{i} · {self.images[i].get('file_name', '')}", i) for i in ids]
            if ids:  # keep the current image if it still passes, else the first one
                self.image.value = current if current in ids else ids[0]
        finally:
            self._updating = False
        self._update_status()

    def _update_status(self, note: str = "") -> None:
        opts = self.image.options
        pos = f"{self.image.index + 1} / {len(opts)}" if self.image.index is not None else f"0 / {len(opts)}"
        msg = f"image {pos} passing the filter (of {len(self.images)})"
        self.status.value = f"{msg} · <b>{note}</b>" if note else msg

    def _on_filter(self, _change: Any) -> None:
        self._refresh_images()

    def step(self, delta: int) -> None:
        """Move ``delta`` images forward/backward through the filtered images (wraps around)."""
        n = len(self.image.options)
        if n:
            self.image.index = ((self.image.index or 0) + delta) % n

    def go_to(self, image_id: int) -> bool:
        """Show an image by id; False (with a note in the status line) if absent or filtered out."""
        if image_id in [v for _, v in self.image.options]:
            self.image.value = image_id
            self._update_status()
            return True
        if image_id in self.images:
            self._update_status(f"image {image_id} is hidden by the filter; set 'show' to All and reset the sliders")
        else:
            self._update_status(f"no image {image_id} in the GT")
        return False

    def _on_jump(self, change: Any) -> None:
        self.go_to(int(change["new"]))

    # ---------------------------------------------------------------------------- drawing

    def _load(self, info: dict) -> np.ndarray:
        image_id = info["id"]
        if image_id in self._cache:
            self._cache.move_to_end(image_id)
            return self._cache[image_id]
        img = load_image(self.image_root, info)
        self._cache[image_id] = img
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return img

    def _figure(self, image_ids: Sequence[int]) -> Figure:
        rows = [(self.images[i], self.visible_annotations(i)) for i in image_ids]
        return panel_grid(
            rows, self._load, self.categories, cols=1 + len(self.panel_names), captions=self.captions,
            alpha=float(self.opacity.value), panel_size=self.panel_size,
        )

    def render(self, image_id: int | None = None) -> Figure:
        """One row GT | panel 1 | ... for an image (default: the current one), as filtered now."""
        image_id = self.image_id if image_id is None else image_id
        if image_id is None:
            raise ValueError("MaskBrowser.render: no image passes the current filter; relax the filter or pass an id")
        return self._figure([image_id])

    def static_grid(self, n: int = 4) -> Figure:
        """Rows for the first ``n`` filtered images (what a headless, executed notebook shows)."""
        ids = self.filtered_image_ids()[:n]
        if not ids:
            raise ValueError("MaskBrowser.static_grid: no image passes the current filter; relax the filter")
        return self._figure(ids)

    def _on_render(self, **_values: Any) -> None:
        # interactive_output calls this inside ``with output:`` after clear_output(wait=True);
        # while the image list is rebuilt we draw nothing and the old picture stays up
        if self._updating:
            return
        if self.image_id is None:
            display(HTML("<i>no image passes the filter</i>"))
            return
        self.last_figure = self.render()
        self.n_renders += 1
        display(Image(data=figure_png(self.last_figure)))

    @property
    def widget(self) -> W.VBox:
        """The live browser: controls above an ``Output`` fed by ``interactive_output`` (built once)."""
        if self._widget is None:
            controls = {"image_id": self.image, "alpha": self.opacity, "choice": self.choice,
                        "score": self.score, "uncertainty": self.uncertainty}
            self.output = W.interactive_output(self._on_render, controls)
            self._widget = W.VBox([
                W.HBox([self.choice, self.score, self.uncertainty]),
                W.HBox([self.prev_button, self.image, self.next_button, self.jump, self.opacity]),
                self.status,
                self.output,
            ])
        return self._widget

    def show(self, n_static: int = 4, live: bool = True) -> None:
        """Display a static grid of the first ``n_static`` filtered images, then the live widget.

        ``live=False`` shows the grid alone: headless executors (papermill/nbclient) can hang on
        widget traffic (nbclient issue #312), and nobody is there to move the sliders anyway.
        """
        if n_static > 0 and self.image.options:
            display(Image(data=figure_png(self.static_grid(n_static))))
        if live:
            display(self.widget)

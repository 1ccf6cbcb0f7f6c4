"""The pseudo-mask browser reacts to its controls without a browser or a kernel."""

from __future__ import annotations

import json

import ipywidgets as W
import numpy as np
import pytest
from matplotlib.patches import Rectangle
from PIL import Image
from pycocotools import mask as mask_utils

import ovis.viz.widgets as widgets_mod
from ovis.viz.widgets import MaskBrowser

H, W_ = 48, 64
CAT, DOG = 1, 2


def rle_box(y0: int, y1: int, x0: int, x1: int) -> dict:
    m = np.zeros((H, W_), np.uint8)
    m[y0:y1, x0:x1] = 1
    r = mask_utils.encode(np.asfortranarray(m))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def ann(image_id: int, cat: int, **extra) -> dict:
    return {"image_id": image_id, "category_id": cat, "segmentation": rle_box(8, 30, 10, 40), **extra}


@pytest.fixture
def dataset(tmp_path):
    """4 images: GT cats/dogs; teacher results (JSON list); pseudo masks (instances JSON)."""
    rng = np.random.default_rng(1)
    images = []
    for i in range(1, 5):
        Image.fromarray(rng.integers(0, 255, (H, W_, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        images.append({"id": i, "file_name": f"im{i}.png", "height": H, "width": W_})
    gt_anns = [ann(1, CAT), ann(2, DOG), ann(3, CAT), ann(3, DOG), ann(4, CAT)]
    for k, a in enumerate(gt_anns, start=1):
        a.update(id=k, iscrowd=0, area=660.0, bbox=[10, 8, 30, 22])
    categories = [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}]
    gt = {"images": images, "annotations": gt_anns, "categories": categories}
    teacher = [ann(1, CAT, score=0.9), ann(2, DOG, score=0.3), ann(3, CAT, score=0.95), ann(3, DOG, score=0.5)]
    pseudo = {"images": images, "categories": categories, "annotations": [
        ann(1, DOG, id=101, score=0.8, uncertainty=0.2, pseudo=True),
        ann(2, DOG, id=102, score=0.6, uncertainty=0.7, pseudo=True),
        ann(1, CAT, id=103),  # base GT copied into the pseudo file: no score, no uncertainty
    ]}
    for name, obj in (("gt.json", gt), ("teacher.json", teacher), ("pseudo.json", pseudo)):
        (tmp_path / name).write_text(json.dumps(obj))
    return tmp_path


@pytest.fixture
def browser(dataset) -> MaskBrowser:
    return MaskBrowser(
        dataset / "gt.json", dataset,
        {"teacher": dataset / "teacher.json", "pseudo": str(dataset / "pseudo.json")},
        captions={"1": ["a cat on a mat"], 2: ["a dog with a frisbee"]},
        words={1: ["cat"], 2: ["dog", "frisbee"], 3: ["cat", "dog"], "4": ["Cat"]},
        panel_size=2.0,
    )


def counts(b: MaskBrowser, image_id: int) -> dict[str, int]:
    return {k: len(v) for k, v in b.visible_annotations(image_id).items()}


def test_category_word_and_threshold_filters_select_images(browser) -> None:
    assert browser.filtered_image_ids() == [1, 2, 3, 4]
    browser.choice.value = ("category", DOG)  # GT dogs on 2 and 3, a pseudo dog on 1
    assert browser.filtered_image_ids() == [1, 2, 3]
    browser.choice.value = ("category", CAT)
    assert browser.filtered_image_ids() == [1, 3, 4]
    browser.choice.value = ("word", "frisbee")
    assert browser.filtered_image_ids() == [2]
    browser.choice.value = ("all", None)
    browser.score.value = 0.85  # only teacher 0.9 (image 1) and 0.95 (image 3) survive
    assert browser.filtered_image_ids() == [1, 3]
    browser.choice.value = ("category", DOG)
    assert browser.filtered_image_ids() == []
    assert browser.image_id is None and "0 / 0" in browser.status.value


def test_dropdown_offers_categories_and_lowercased_caption_words(browser) -> None:
    labels = [label for label, _ in browser.choice.options]
    assert labels == ["All", "category: cat", "category: dog", "word: cat", "word: dog", "word: frisbee"]


def test_render_draws_the_filtered_instances_of_every_panel(browser) -> None:
    assert counts(browser, 1) == {"GT": 1, "teacher": 1, "pseudo": 2}
    fig = browser.render(1)
    boxes = [sum(isinstance(p, Rectangle) for p in ax.patches) for ax in fig.axes]
    assert boxes == [1, 1, 2]
    assert [ax.get_title() for ax in fig.axes] == ["#1 · GT · 1", "teacher · 1", "pseudo · 2"]
    assert fig.axes[0].get_xlabel() == "a cat on a mat"

    browser.score.value = 0.85
    browser.uncertainty.value = 0.1
    assert counts(browser, 1) == {"GT": 1, "teacher": 1, "pseudo": 1}  # unscored GT copy stays
    boxes = [sum(isinstance(p, Rectangle) for p in ax.patches) for ax in browser.render(1).axes]
    assert boxes == [1, 1, 1]
    browser.score.value = 0.0
    browser.uncertainty.value = 0.5  # pseudo dog on image 2 is too uncertain
    assert counts(browser, 2) == {"GT": 1, "teacher": 1, "pseudo": 0}
    browser.choice.value = ("category", CAT)
    assert counts(browser, 3) == {"GT": 1, "teacher": 1, "pseudo": 0}


def test_jump_and_buttons_move_through_filtered_images(browser) -> None:
    assert browser.image_id == 1
    browser.jump.value = 3
    assert browser.image_id == 3
    browser.next_button.click()
    assert browser.image_id == 4
    browser.next_button.click()
    assert browser.image_id == 1  # wraps around
    browser.prev_button.click()
    assert browser.image_id == 4

    browser.choice.value = ("category", DOG)  # image 4 has no dog: first passing image is shown
    assert browser.image_id == 1 and [v for _, v in browser.image.options] == [1, 2, 3]
    browser.jump.value = 4
    assert browser.image_id == 1 and "image 4 is hidden by the filter" in browser.status.value
    browser.jump.value = 99
    assert "no image 99 in the GT" in browser.status.value
    browser.jump.value = 2
    assert browser.image_id == 2 and "image 2 / 3" in browser.status.value


def test_live_output_renders_once_per_change_with_the_current_opacity(browser, dataset) -> None:
    vbox = browser.widget
    assert isinstance(vbox, W.VBox) and isinstance(browser.output, W.Output)
    assert browser.output in vbox.children and browser.widget is vbox
    assert browser.n_renders == 1  # interactive_output draws the first image at once

    browser.opacity.value = 0.0
    assert browser.n_renders == 2
    shown = np.asarray(browser.last_figure.axes[0].images[0].get_array())
    original = np.asarray(Image.open(dataset / "im1.png"))
    assert (shown[15, 20] == original[15, 20]).all()  # inside the mask, nothing blended at 0
    browser.opacity.value = 1.0
    shown = np.asarray(browser.last_figure.axes[0].images[0].get_array())
    assert not (shown[15, 20] == original[15, 20]).all()

    browser.score.value = 0.85  # changes the image list too, still one render
    assert browser.n_renders == 4 and browser.image_id == 1
    browser.jump.value = 3
    assert browser.n_renders == 5 and browser.last_figure.axes[0].get_title() == "#3 · GT · 2"
    browser.choice.value = ("category", DOG)  # nothing passes: a message, no figure
    assert browser.n_renders == 5 and browser.image_id is None


def test_static_grid_and_show_for_headless_notebooks(browser, monkeypatch) -> None:
    browser.choice.value = ("category", CAT)
    fig = browser.static_grid(n=2)
    assert [ax.get_title() for ax in fig.axes] == [
        "#1 · GT · 1", "teacher · 1", "pseudo · 1", "#3 · GT · 1", "teacher · 1", "pseudo · 0"]
    shown = []
    monkeypatch.setattr(widgets_mod, "display", shown.append)
    browser.show(n_static=2)
    assert shown[0].data[:8] == b"\x89PNG\r\n\x1a\n"  # the static grid first, as an image
    assert shown[-1] is browser.widget  # then the live widget (its first render lands in between)


def test_sliders_disable_without_scores_or_uncertainties(dataset) -> None:
    gt = json.loads((dataset / "gt.json").read_text())
    b = MaskBrowser(gt, dataset, {"teacher": json.loads((dataset / "teacher.json").read_text())})
    assert b.uncertainty.disabled and not b.score.disabled
    assert MaskBrowser(gt, dataset).score.disabled


def test_bad_panels_are_named_in_errors(dataset) -> None:
    gt = dataset / "gt.json"
    with pytest.raises(ValueError, match="none of the 1 annotations of panel 'teacher' refers to a GT image"):
        MaskBrowser(gt, dataset, {"teacher": [ann(77, CAT, score=0.5)]})
    with pytest.raises(ValueError, match="panel 'x'.*without 'annotations'"):
        MaskBrowser(gt, dataset, {"x": {"images": []}})
    with pytest.raises(FileNotFoundError, match="panel 'p' file .*nope.json not found"):
        MaskBrowser(gt, dataset, {"p": dataset / "nope.json"})

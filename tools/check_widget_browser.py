"""Check the MaskBrowser widget in a real headless browser: JupyterLab + Chromium, driven by Playwright.

The browserless tests (tests/test_widgets.py) set widget values from Python; this drives the
real page instead. It starts JupyterLab (from the project venv) on 127.0.0.1 with a random token
in a temporary notebook folder, writes a notebook that builds a ``MaskBrowser`` on a tiny
generated demo dataset (GT + a "pseudo" panel made from the GT with scores), opens it in headless
Chromium, runs all cells from the Run menu, waits for the live widget's image, then

1. clicks the widget's "next ▶" button,
2. drags the "score ≥" slider handle to about 60 % of its track,
3. picks, in the "show" dropdown, the category of the shown image's top-scoring pseudo mask
   (the notebook prints which), so the image stays and its other categories disappear,

and after each step waits for the ``<img>`` in the widget's Output to change (SHA-1 of its
``src``). Finally it re-runs the last cell, which prints the kernel's view of the widget
(``n_renders``, image id, score, choice) and checks it matches the page (``kernel_agrees``),
shuts the server down and prints ``key=value`` pairs as its last line. Screenshots (PNG) and the
server log go to ``--out``. Exit code 0 when every check passed, 1 otherwise, 2 for bad arguments.

Playwright is not a project dependency; run this with a Python that has it, e.g.::

    python3 -m venv /tmp/pwvenv && /tmp/pwvenv/bin/pip install playwright   # no `playwright install`
    apt-get install chromium
    /tmp/pwvenv/bin/python tools/check_widget_browser.py --out /tmp/widget-check

Only 127.0.0.1 is contacted: the page's requests to any other host are aborted, and JupyterLab's
news and update checks are off. Every wait is bounded (``--timeout`` seconds per step).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

# The notebook run in the kernel. The last cell reports the kernel-side state of the widget and
# is re-run after the browser interactions.
SETUP = """\
import json
from pathlib import Path
from ovis.data.synthetic import generate_demo_dataset
from ovis.viz.widgets import MaskBrowser

paths = generate_demo_dataset(Path("demo"), num_train=4, num_val=2, image_size=96)
gt = json.loads(paths.train_instances.read_text())
# a fake pseudo panel: the GT masks with scores 0.2 .. 0.9 spread over each image's instances
per_image = {}
for a in gt["annotations"]:
    per_image.setdefault(a["image_id"], []).append(a)
pseudo = []
for anns in per_image.values():
    for k, a in enumerate(anns):
        score = 0.2 + 0.7 * k / max(1, len(anns) - 1)
        pseudo.append({**a, "score": round(score, 3), "pseudo": True})
print("images", len(gt["images"]), "gt", len(gt["annotations"]), "pseudo", len(pseudo))
# per image, the dropdown entry of its top-scoring pseudo mask: after the score slider, choosing it
# keeps the image and hides the other categories, so the drawing must change
names = {c["id"]: c["name"] for c in gt["categories"]}
print("PICK " + json.dumps({i: "category: " + names[anns[-1]["category_id"]] for i, anns in per_image.items()}))
"""
SHOW = """\
browser = MaskBrowser(paths.train_instances, paths.train_images, {"pseudo": pseudo}, panel_size=2.5)
browser.show(n_static=1)
"""
STATE = """\
print("STATE " + json.dumps({"n_renders": browser.n_renders, "image_id": browser.image_id,
                             "score": browser.score.value, "choice": browser.choice.label}))
"""


def notebook(cells: list[str]) -> dict:
    """A minimal nbformat-4 notebook of code cells on the python3 kernel."""
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
                     "language_info": {"name": "python"}},
        "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None, "outputs": [],
                   "source": src} for i, src in enumerate(cells)],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    """Poll ``url`` until it answers 200; raise if the server exits or ``timeout`` s pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout:.0f} s")


def kernel_idle(port: int, token: str, notebook_path: str) -> bool:
    """Whether the server has a session for ``notebook_path`` whose kernel is idle."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sessions?token={token}", timeout=5) as r:
            sessions = json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(s.get("path") == notebook_path and (s.get("kernel") or {}).get("execution_state") == "idle"
               for s in sessions)


def start_lab(python: str, root: Path, port: int, token: str, log: Path) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:port serving ``root``, config/workspaces/runtime isolated in ``root``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"  # kernel argv is plain "python"
    for var, sub in (("JUPYTER_CONFIG_DIR", "cfg"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("JUPYTERLAB_SETTINGS_DIR", "settings")):
        (root / ".jupyter" / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(root / ".jupyter" / sub)
    # user settings: never fetch Jupyter news (no toast, no request), start the notebook's kernel unasked
    for plugin, value in (("apputils-extension/notification", {"fetchNews": "false"}),
                          ("notebook-extension/tracker", {"autoStartDefaultKernel": True})):
        f = root / ".jupyter" / "settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)
    cmd = [python, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", f"--notebook-dir={root}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers: Jupyter refuses root otherwise
        cmd.append("--allow-root")
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_lab(proc: subprocess.Popen, port: int, token: str) -> None:
    """Ask the server to shut down (it stops its kernels), then SIGTERM/SIGKILL its process group."""
    if proc.poll() is None:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/shutdown", method="POST",
                                     headers={"Authorization": f"token {token}"})
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except (urllib.error.URLError, OSError):
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    # anything left in the server's process group; the kernel runs in a session of its own, is
    # stopped by /api/shutdown above and exits by itself when its parent (the server) is gone
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"),
                    help="Python with jupyterlab, ipywidgets and ovis (default: the project venv)")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    ap.add_argument("--out", type=Path, default=None, help="folder for screenshots and the server log "
                    "(default: a new temporary folder, kept)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds allowed for each waiting step")
    args = ap.parse_args(argv)
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("check_widget_browser: error: playwright is not installed in this Python; "
              "pip install playwright into a separate venv and run the script with it", file=sys.stderr)
        return 2
    for exe, what in ((args.python, "--python"), (args.chromium, "--chromium")):
        if not Path(exe).exists():
            print(f"check_widget_browser: error: {what} {exe} does not exist", file=sys.stderr)
            return 2

    t0 = time.monotonic()
    out = args.out or Path(tempfile.mkdtemp(prefix="ovis-widget-check-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "error.png").unlink(missing_ok=True)
    results: dict[str, object] = {"rendered": 0, "changed_after_next": 0, "changed_after_slider": 0,
                                  "changed_after_dropdown": 0, "kernel_dialog": 0}
    tmp = tempfile.TemporaryDirectory(prefix="ovis-lab-")
    root = Path(tmp.name)
    (root / "check.ipynb").write_text(json.dumps(notebook([SETUP, SHOW, STATE]), indent=1))
    port, token = free_port(), secrets.token_hex(16)
    proc = start_lab(args.python, root, port, token, out / "jupyterlab.log")
    ms = int(args.timeout * 1000)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", args.timeout, proc)
        with sync_playwright() as pw:
            # Playwright gives every launch a fresh temporary --user-data-dir of its own
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            try:
                page.set_default_timeout(ms)
                blocked: list[str] = []

                def only_local(route, request) -> None:
                    if urlparse(request.url).hostname in ("127.0.0.1", None) or request.url.startswith("data:"):
                        route.continue_()
                    else:
                        blocked.append(request.url)
                        route.abort()

                page.route("**/*", only_local)
                page.goto(f"http://127.0.0.1:{port}/lab/tree/check.ipynb?token={token}")
                page.wait_for_selector(".jp-Notebook .jp-Cell", state="visible")
                # the kernel must be up before "Run All"; answer the kernel picker should it still ask
                end = time.monotonic() + args.timeout
                while not kernel_idle(port, token, "check.ipynb"):
                    if time.monotonic() > end:
                        raise TimeoutError(f"no idle kernel for check.ipynb within {args.timeout:.0f} s")
                    pick = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
                    if pick.count():
                        pick.click()
                        results["kernel_dialog"] = 1
                    page.wait_for_timeout(500)
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

                widget = page.locator(".widget-vbox").filter(has=page.locator(".widget-output")).first
                img = widget.locator(".widget-output img").first
                img.wait_for(state="visible")
                page.wait_for_function(  # the output image has decoded, not just been inserted
                    "() => { const i = document.querySelector('.widget-output img');"
                    " return i && i.complete && i.naturalWidth > 0; }")
                results["rendered"] = 1
                widget.scroll_into_view_if_needed()
                page.screenshot(path=str(out / "widget_rendered.png"))
                widget.screenshot(path=str(out / "widget_rendered_element.png"))

                def src_hash() -> str:
                    return hashlib.sha1(img.get_attribute("src").encode()).hexdigest()

                def wait_changed(before: str) -> int:
                    end = time.monotonic() + args.timeout
                    while time.monotonic() < end:
                        try:
                            if img.count() and img.is_visible() and src_hash() != before:
                                return 1
                        except PlaywrightError:
                            pass  # the Output is re-rendering: the <img> came and went
                        page.wait_for_timeout(250)
                    return 0

                h = src_hash()
                status0 = widget.locator(".widget-html").first.inner_text()
                widget.get_by_role("button", name="next ▶").click()
                results["changed_after_next"] = wait_changed(h)
                widget.screenshot(path=str(out / "widget_after_next_element.png"))
                status1 = widget.locator(".widget-html").first.inner_text()

                h = src_hash()
                slider = widget.locator(".widget-slider").filter(has_text="score").first
                track = slider.locator(".noUi-target, .slider").first.bounding_box()
                handle = slider.locator(".noUi-handle").first.bounding_box()
                page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
                page.mouse.down()
                page.mouse.move(track["x"] + 0.6 * track["width"], track["y"] + track["height"] / 2, steps=10)
                page.mouse.up()
                results["score_readout"] = slider.locator(".widget-readout").inner_text().strip()
                results["changed_after_slider"] = wait_changed(h)
                widget.screenshot(path=str(out / "widget_after_slider_element.png"))

                h = src_hash()
                select = widget.locator(".widget-dropdown").filter(has_text="show").locator("select")
                shown = widget.locator(".widget-dropdown").filter(has_text="image").locator("select")
                image_id = shown.evaluate("s => s.options[s.selectedIndex].text").split("·")[0].strip()
                setup_out = page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".jp-OutputArea-output")
                picks = json.loads(setup_out.filter(has_text="PICK").first.inner_text().split("PICK", 1)[1])
                pick = picks[image_id]
                select.select_option(label=pick)
                results["dropdown"] = pick.replace(" ", "_")
                results["changed_after_dropdown"] = wait_changed(h)
                widget.scroll_into_view_if_needed()
                page.screenshot(path=str(out / "widget_after.png"))
                widget.screenshot(path=str(out / "widget_after_element.png"))

                # the kernel's side: re-run the last cell and read what it printed
                page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-InputArea-editor").click()
                page.keyboard.press("Shift+Enter")
                state_out = page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-OutputArea-output")
                state_out.filter(has_text="STATE").first.wait_for()
                state = json.loads(state_out.filter(has_text="STATE").first.inner_text().split("STATE", 1)[1])
                results["kernel_n_renders"] = state["n_renders"]
                results["kernel_image_id"] = state["image_id"]
                results["kernel_score"] = state["score"]
                # the kernel holds what the page shows: image, threshold, category, one render per change
                results["kernel_agrees"] = int(
                    str(state["image_id"]) == image_id
                    and abs(state["score"] - float(results["score_readout"])) < 1e-9
                    and state["choice"] == pick
                    and state["n_renders"] == 4
                )
                results["blocked_requests"] = len(blocked)
                print(f"status before/after next: {status0!r} -> {status1!r}")
                print(f"kernel state: {state}")
            except Exception:
                try:  # what the page showed when a step failed
                    page.screenshot(path=str(out / "error.png"), timeout=10_000)
                except PlaywrightError:
                    pass
                raise
            finally:
                browser.close()
    except (PlaywrightError, TimeoutError, RuntimeError, KeyError, ValueError) as e:
        results["error"] = type(e).__name__
        print(f"check_widget_browser: {type(e).__name__}: {str(e)[:2000]}\n(server log: {out / 'jupyterlab.log'}, "
              f"page at the failure: {out / 'error.png'})", file=sys.stderr)
    finally:
        stop_lab(proc, port, token)
        tmp.cleanup()
    results["server_stopped"] = int(proc.poll() is not None)
    results["seconds"] = round(time.monotonic() - t0, 1)
    results["out"] = str(out)
    ok = all(results.get(k) == 1 for k in ("rendered", "changed_after_next", "changed_after_slider",
                                            "changed_after_dropdown", "kernel_agrees", "server_stopped"))
    print(" ".join(f"{k}={v}" for k, v in results.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

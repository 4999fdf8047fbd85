"""The notebooks as a researcher sees them: JupyterLab on 127.0.0.1, headless Chromium, "Run All Cells".

`make test-ui` (not part of `make test`: it needs Debian's `chromium` and the `playwright` package, which the target
installs). Each notebook runs on a copy under runs/ui/work/ with its own defaults, in order (each reads what the
one before wrote). Asserted: it opens unmodified, no cell has an error or stderr output, every plotting cell shows
an image, 02's progress bar and live figure render, 05's explorer renders and its step slider changes the image.
Screenshots go to runs/ui/.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "ui"
WORK = OUT / "work"
CHROMIUM = os.environ.get("WANLITE_CHROMIUM", "/usr/bin/chromium")
CELL_TIMEOUT_S = 300
PLOTTING = (".plot(", ".explore(", "LivePlot(")

playwright = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab():
    """A JupyterLab server on a copy of notebooks/ (the repo's files are never touched); yields its base URL."""
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.copytree(ROOT / "notebooks", WORK / "notebooks")
    settings = WORK / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')  # every cell in the DOM
    news = WORK / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no pop-up on screenshots
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "WANLITE_HEADLESS"}  # someone watches: live widgets
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JUPYTER_CONFIG_DIR"] = str(WORK / "config")  # nobody's own lab settings or workspaces
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}"]
    cmd += [f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={WORK / 'notebooks'}"]
    cmd += [f"--LabApp.app_settings_dir={ROOT / 'notebooks' / '.lab'}", "--LabApp.expose_app_in_browser=True"]
    cmd += [f"--LabApp.user_settings_dir={WORK / 'settings'}", f"--LabApp.workspaces_dir={WORK / 'workspaces'}"]
    cmd += ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    log = (OUT / "jupyterlab.log").open("w")
    server = subprocess.Popen(cmd, cwd=WORK / "notebooks", env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"jupyter lab exited: {(OUT / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        server.wait(30)
        log.close()


@pytest.fixture(scope="module")
def page(lab):
    base, token = lab
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.goto(f"{base}/lab?token={token}")
        pg.wait_for_function("window.jupyterapp && window.jupyterapp.started", timeout=120_000)
        pg.evaluate("window.jupyterapp.started")
        yield pg
        browser.close()


CELLS_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  return panel.content.widgets.map((cell, i) => {
    const model = cell.model;
    cell.node.setAttribute('data-ui-cell', String(i));  // for the locators below
    const outputs = model.type === 'code' ? model.outputs.toJSON() : [];
    const node = cell.node;
    return {
      index: i, type: model.type, source: model.sharedModel.getSource(),
      count: model.type === 'code' ? model.executionCount : null,
      running: node.querySelector('.jp-InputPrompt') ? node.querySelector('.jp-InputPrompt').textContent : '',
      outputs: outputs.map(o => ({type: o.output_type, name: o.name || null, mimes: Object.keys(o.data || {}),
                                  text: o.output_type === 'stream' ? String(o.text).slice(0, 400)
                                        : (o.output_type === 'error' ? o.ename + ': ' + o.evalue
                                           : String((o.data || {})['text/plain'] || '').slice(0, 400))})),
      images: node.querySelectorAll('.jp-OutputArea-output img').length,
      progress: node.querySelectorAll('.widget-progress, .progress-bar').length,
      sliders: node.querySelectorAll('.widget-slider').length,
      widget_errors: Array.from(node.querySelectorAll('.jp-OutputArea-output')).filter(
        n => n.textContent.includes('Error displaying widget')).length,
    };
  });
}"""


def _open(page, name: str):
    page.evaluate(
        """async (path) => {
      const app = window.jupyterapp;
      const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
      await panel.context.ready; await panel.sessionContext.ready;
      app.shell.activateById(panel.id);
    }""",
        name,
    )
    page.wait_for_function(
        "() => { const k = window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel;"
        " return k && k.status === 'idle'; }",
        timeout=120_000,
    )
    page.wait_for_timeout(1500)


def _dirty(page) -> bool:
    return page.evaluate("() => window.jupyterapp.shell.currentWidget.context.model.dirty")


def _run_all(page, name: str, during=None):
    """Run All Cells; `during(page, cells)` is called on each poll while the notebook runs. Returns the cells."""
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    deadline = time.monotonic() + CELL_TIMEOUT_S * 3
    while time.monotonic() < deadline:
        page.wait_for_timeout(1000)
        cells = page.evaluate(CELLS_JS)
        if during is not None:
            during(page, cells)
        code = [c for c in cells if c["type"] == "code"]
        busy = page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status")
        errors = [c for c in code if any(o["type"] == "error" for o in c["outputs"])]
        if errors or (busy == "idle" and all(c["count"] is not None and "*" not in c["running"] for c in code)):
            page.wait_for_timeout(1500)  # the last display messages
            return page.evaluate(CELLS_JS)
    pytest.fail(f"{name}: still running after {CELL_TIMEOUT_S * 3} s")


def _cell(page, index: int):
    return page.locator(f'[data-ui-cell="{index}"]').first


def _close(page):
    page.evaluate(
        """async () => { const panel = window.jupyterapp.shell.currentWidget;
      await panel.context.save(); await panel.sessionContext.shutdown(); panel.dispose(); }"""
    )


def _check(name: str, cells: list[dict]):
    """No error or stderr output; every plotting cell has an image (the executed notebook must show figures)."""
    problems = []
    for c in cells:
        if c["type"] != "code":
            continue
        for o in c["outputs"]:
            if o["type"] == "error" or (o["type"] == "stream" and o["name"] == "stderr"):
                problems.append(f"cell {c['index']}: {o['type']} {o['name'] or ''} {o['text'][:300]!r}")
        if any(p in c["source"] for p in PLOTTING) and not c["images"]:
            problems.append(f"cell {c['index']} plots but shows no image: {c['source'][-80:]!r} -> {c['outputs']}")
        if c["widget_errors"]:
            problems.append(f"cell {c['index']}: 'Error displaying widget'")
    assert not problems, f"{name}:\n" + "\n".join(problems)


BOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("0*_*.ipynb"))


@pytest.mark.parametrize("name", BOOKS)
def test_notebook_runs_in_jupyterlab(page, name):
    _open(page, name)
    assert not _dirty(page), f"{name} opens already modified: JupyterLab holds metadata " + str(
        page.evaluate("() => window.jupyterapp.shell.currentWidget.model.toJSON().metadata")
    )
    seen = {"progress": 0, "images": 0, "frames": set()}

    def during(pg, cells):  # 02: what the training cell shows while it runs; a screenshot of its second frame
        for c in cells:
            if name.startswith("02") and "distill(" in c["source"] and "*" in c["running"]:
                seen["progress"] = max(seen["progress"], c["progress"])
                seen["images"] = max(seen["images"], c["images"])
                src = pg.evaluate(f"() => document.querySelector('[data-ui-cell=\"{c['index']}\"] img')?.src || ''")
                if c["progress"] and src and src not in seen["frames"] and len(seen["frames"]) < 2:
                    seen["frames"].add(src)
                    _cell(pg, c["index"]).screenshot(path=str(OUT / "02_training.png"))

    cells = _run_all(page, name, during)
    page.screenshot(path=str(OUT / f"{name[:2]}_end.png"))
    _check(name, cells)
    if name.startswith("02"):
        run = next(c for c in cells if "distill(" in c["source"])
        assert seen["progress"], f"02: no progress bar widget while training: {run['outputs']}"
        assert seen["images"] and run["images"] == 1, f"02: the live figure did not redraw in place: {run}"
        final = page.evaluate(f"() => document.querySelector('[data-ui-cell=\"{run['index']}\"] img').src")
        assert final not in list(seen["frames"])[:1], "02: the live figure never redrew (same picture as at first)"
        assert any("distill: 100%" in o["text"] for o in run["outputs"]), f"02: no final progress line: {run}"
    if name.startswith("05"):
        explorer = next(c for c in cells if ".explore(" in c["source"])
        assert explorer["sliders"] >= 2, f"05: the explorer's sliders did not render: {explorer['outputs']}"
        _move_step_slider(page, explorer["index"])
    _close(page)
    if name[:2] in ("02", "05"):  # saved, kernel gone, reopened: what a colleague opening the file sees
        _open(page, name)
        page.wait_for_timeout(3000)
        reopened = page.evaluate(CELLS_JS)
        shown = next(c for c in reopened if ("distill(" if name.startswith("02") else ".explore(") in c["source"])
        _cell(page, shown["index"]).screenshot(path=str(OUT / f"{name[:2]}_reopened.png"))
        broken = [c["index"] for c in reopened if c["widget_errors"]]
        assert not broken, f"{name} reopened: 'Error displaying widget' in cells {broken}"
        blank = [c["index"] for c in reopened if any(p in c["source"] for p in PLOTTING) and not c["images"]]
        assert not blank, f"{name} reopened: plotting cells {blank} show no image"
        _close(page)


def _move_step_slider(page, index: int):
    cell = _cell(page, index)
    image = cell.locator(".widget-output img").first
    before = image.get_attribute("src")
    cell.screenshot(path=str(OUT / "05_explorer.png"))
    slider = cell.locator(".widget-slider", has_text="step").first
    slider.locator(".noUi-handle").first.focus()
    page.keyboard.press("Home")  # step 0: the x0 predicted at the first step, not the final sample
    page.wait_for_function(
        "([i, src]) => { const img = window.jupyterapp.shell.currentWidget.content.widgets[i].node"
        ".querySelector('.widget-output img'); return img && img.src !== src; }",
        arg=[index, before],
        timeout=60_000,
    )
    cell.screenshot(path=str(OUT / "05_explorer_step0.png"))

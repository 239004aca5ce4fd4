"""The widget explorer in a real browser: headless Chromium drives JupyterLab like a student.

JupyterLab serves a copy of notebook 02 (quick mode) on 127.0.0.1 with a random token; the test
runs every cell from the Run menu, moves the learning-rate slider with the keyboard, presses
Train and waits for the epoch bar, the status line and the plot to change; starts a long run and
presses Stop, which must end it early; then it browses the
notebook's own sweeps in the "Sweep results" tab. The browser console must stay free of errors.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package
(``make test-browser`` installs them); without them this test is skipped, saying why.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "02_hyperparameter_sweeps.ipynb"


def _missing() -> str | None:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        return (f"no headless browser: {', '.join(missing)} not installed; `make test-browser` installs "
                "chromium, chromium-driver and selenium and runs this test")
    return None


pytestmark = [pytest.mark.browser, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quick_copy(directory: Path) -> Path:
    """Notebook 02 with ``quick = True`` in its parameters cell, as a student would set it."""
    nb = json.loads((ROOT / "notebooks" / NOTEBOOK).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"])
    assert "quick = False" in source
    cell["source"] = source.replace("quick = False", "quick = True")
    out = directory / NOTEBOOK
    out.write_text(json.dumps(nb))
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a token, serving a quick copy of notebook 02; stopped afterwards."""
    work = tmp_path_factory.mktemp("lab")
    _quick_copy(work)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JUPYTER_CONFIG_DIR": str(work / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(work / ".runtime")}
    log = open(work / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--ServerApp.shutdown_no_activity_timeout=900",
         "--MappingKernelManager.cull_idle_timeout=900",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],  # CI containers
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    log.flush()
                    raise RuntimeError(f"JupyterLab did not start:\n{(work / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"url": f"{base}/lab/tree/{NOTEBOOK}?token={token}", "dir": work}
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1200"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, what, timeout, message):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: what(d), message)


def _console_errors(driver) -> list:
    # Chromium reports page errors as SEVERE; a missing favicon is not the notebook's fault.
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]


def _answer_dialogs(driver) -> list:
    """Accept any JupyterLab dialog in the way (e.g. a kernel choice); returns their texts."""
    from selenium.webdriver.common.by import By
    texts = []
    for dialog in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog"):
        texts.append(dialog.text)
        buttons = dialog.find_elements(By.CSS_SELECTOR, "button.jp-mod-accept")
        if buttons:
            buttons[0].click()
    if texts:
        print("dialogs:", texts)
    return texts


def _slider(driver, label):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.XPATH, f"//div[contains(@class,'widget-slider')][.//label[normalize-space()='{label}']]")


def test_notebook_02_explorer_trains_and_browses_sweeps_in_a_browser(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    browser.get(lab["url"])
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 120,
          "JupyterLab did not open the notebook")
    _wait(browser, lambda d: d.find_elements(By.XPATH, "//*[contains(@class,'jp-Notebook-ExecutionIndicator') or "
                                                      "contains(@class,'jp-KernelStatus')]"), 60,
          "no kernel status shown")
    # Run > Run All Cells, through the menus as a student would; once the kernel is up the
    # first cell's prompt shows [*] or [1] (a click before then can find the command disabled)
    def started(d):
        return any(p.text.strip() not in ("[ ]:", "") for p in d.find_elements(By.CSS_SELECTOR, ".jp-InputPrompt"))

    for _attempt in range(6):
        time.sleep(2)
        _answer_dialogs(browser)
        browser.find_element(By.XPATH, "//div[contains(@class,'lm-MenuBar-itemLabel') and text()='Run']").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "li[data-command='runmenu:run-all']"), 20,
              "the Run menu has no 'Run All Cells'")
        browser.find_element(By.CSS_SELECTOR, "li[data-command='runmenu:run-all']").click()
        try:
            _wait(browser, started, 20, "")
            break
        except Exception:
            continue
    assert started(browser), "Run All Cells never started the notebook"

    def train_button(d):
        failed = [o.text for o in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output") if "Traceback" in o.text]
        assert not failed, f"a cell failed: {failed[0][:1500]}"
        return next((b for b in d.find_elements(By.CSS_SELECTOR, "button.jupyter-button") if b.text.strip() == "Train"),
                    None)

    # The last cell shows the explorer: wait for its Train button (the sweeps before it take a while)
    try:
        train = _wait(browser, train_button, 600, "the explorer's Train button never appeared")
    except Exception as err:
        browser.save_screenshot(str(lab["dir"] / "failed.png"))
        prompts = [p.text for p in browser.find_elements(By.CSS_SELECTOR, ".jp-InputPrompt")]
        raise AssertionError(f"{err}; prompts {prompts}; screenshot {lab['dir'] / 'failed.png'}") from err

    # Move the learning-rate slider with the keyboard: 4 steps of 10^0.25 from 1e-3 is 1e-2
    slider = _slider(browser, "learning rate")
    readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
    before = readout.text
    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    handle.click()
    for _ in range(4):
        handle.send_keys(Keys.ARROW_RIGHT)
    _wait(browser, lambda d: readout.text != before, 20, "the learning-rate slider did not move")
    assert readout.text.strip() == "1.0e-2", readout.text

    image = next(i for i in browser.find_elements(By.CSS_SELECTOR, ".widget-image") if i.is_displayed())
    src_before = image.get_attribute("src")
    train.click()
    status = lambda d: " ".join(h.text for h in d.find_elements(By.CSS_SELECTOR, ".widget-html"))  # noqa: E731
    _wait(browser, lambda d: "epoch 1/" in status(d) or "done" in status(d), 180, "no epoch progress shown")
    _wait(browser, lambda d: "done: best val acc" in status(d), 300, "training did not finish in the browser")
    # the explorer's own epoch bar (the one beside Train and Stop; the sweeps above have bars too)
    bar = browser.find_element(By.XPATH, "//div[contains(@class,'widget-hbox')][.//button[normalize-space()='Stop']]"
                                         "//div[contains(@class,'widget-hprogress')]//div[contains(@class,'progress-bar')]")
    assert bar.get_attribute("style").replace(" ", "").find("width:100%") >= 0, bar.get_attribute("style")
    assert image.get_attribute("src") != src_before, "the plot was not redrawn"

    # Stop: ask for many epochs, press Train, then Stop once the first epoch shows; the run must end
    # early (the status says so and names fewer epochs) and the epoch bar must stop short of the end
    epochs_slider = _slider(browser, "max epochs")
    epochs_readout = epochs_slider.find_element(By.CSS_SELECTOR, ".widget-readout")
    epochs_handle = epochs_slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    epochs_handle.click()
    epochs_handle.send_keys(Keys.END)  # the slider's maximum (the explorer's epochs_limit)
    _wait(browser, lambda d: int(epochs_readout.text) >= 50, 20, "the max-epochs slider did not move to its end")
    requested = int(epochs_readout.text)
    stop = next(b for b in browser.find_elements(By.CSS_SELECTOR, "button.jupyter-button") if b.text.strip() == "Stop")
    assert not stop.is_enabled(), "Stop is enabled while nothing trains"
    train.click()
    running = re.compile(rf"epoch (\d+)/{requested}:")
    _wait(browser, lambda d: running.search(status(d)), 180, f"no epoch progress shown for a {requested}-epoch run")
    _wait(browser, lambda d: stop.is_enabled(), 20, "Stop is not enabled while training")
    stop.click()
    _wait(browser, lambda d: "done: best val acc" in status(d), 180, "training did not end after Stop")
    final = status(browser)
    print(f"Stop pressed; requested {requested} epochs; status: {final}")
    assert "stopped by you" in final, final
    done_epochs = int(final.split(" epochs;")[0].rsplit("after ", 1)[1])
    assert 1 <= done_epochs < requested, final
    width = lambda: bar.get_attribute("style").replace(" ", "")  # noqa: E731
    shown_width = width()
    assert "width:100%" not in shown_width, shown_width
    time.sleep(3)  # nothing trains on after Stop: the bar and the status stay where they ended
    assert width() == shown_width and status(browser) == final
    assert train.is_enabled() and not stop.is_enabled()

    # The Sweep results tab: pick the notebook's learning-rate sweep and one of its runs
    tab = next(t for t in browser.find_elements(By.CSS_SELECTOR, ".lm-TabBar-tab") if t.text.strip() == "Sweep results")
    tab.click()
    sweep_select = _wait(browser, lambda d: next((s for s in d.find_elements(By.CSS_SELECTOR, ".widget-dropdown select")
                                                  if s.is_displayed() and "lab1-lr" in s.text), None), 30,
                         "the Sweep results tab lists no lab1-lr sweep")
    Select(sweep_select).select_by_visible_text("lab1-lr")
    shown = next(i for i in browser.find_elements(By.CSS_SELECTOR, ".widget-image") if i.is_displayed())
    selects = [s for s in browser.find_elements(By.CSS_SELECTOR, ".widget-dropdown select") if s.is_displayed()]
    run_select = selects[1]
    _wait(browser, lambda d: "learning_rate=0.01" in run_select.text, 30, "the run list did not fill")
    src = shown.get_attribute("src")
    Select(run_select).select_by_visible_text("learning_rate=0.01")
    _wait(browser, lambda d: shown.get_attribute("src") != src, 30, "picking a run did not redraw the plot")
    table = " ".join(h.text for h in browser.find_elements(By.CSS_SELECTOR, ".widget-html") if h.is_displayed())
    assert "0.01" in table and "final_val_acc" in table

    assert _console_errors(browser) == []

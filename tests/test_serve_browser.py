"""The explorer page in a real browser: headless Chromium driven by Selenium.

Runs where Debian's chromium and chromium-driver are installed (.ci/run installs them); in
CI a missing browser fails the test instead of skipping it. Set VAELAB_SCREENSHOT=FILE.png
to keep the screenshot (docs/images/serve.png is made that way from a trained MNIST run).
"""

import os
import shutil
import threading
import time

import pytest

from vaelab.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium and chromium-driver for the browser test (see .ci/run)")
    pytest.skip("headless Chromium and chromedriver are not installed", allow_module_level=True)
pytest.importorskip("selenium")
pytest.importorskip("uvicorn")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A trained run served by uvicorn in a thread on a free loopback port."""
    run = os.environ.get("VAELAB_SERVE_RUN")
    if not run:
        run = tmp_path_factory.mktemp("browser") / "cvae"
        assert main(["train", "--dataset", "mnist-sample", "--epochs", "2", "--batch-size", "250", "--hidden", "64",
                     "--latent-dim", "4", "--model", "cvae", "--quiet", "--out", str(run)]) == 0
    yield from _served(run)


@pytest.fixture(scope="module")
def ladder_server(tmp_path_factory):
    """A small ladder model's run, served as `server` serves its run."""
    run = tmp_path_factory.mktemp("browser") / "ladder"
    assert main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--batch-size", "250", "--model", "ladder",
                 "--levels", "2x7x7,3", "--hidden", "8", "--res-blocks", "0", "--quiet", "--out", str(run)]) == 0
    yield from _served(run)


def _served(run):
    import uvicorn

    from vaelab.serve import Session, listen, make_app

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(make_app(Session.from_run(run, n=1000)), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def changed(driver, element_id: str, before: str, timeout: float = 15) -> str:
    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.ID, element_id).get_attribute("src") != before)
    return driver.find_element(By.ID, element_id).get_attribute("src")


def test_the_page_in_a_browser(server, browser, tmp_path):
    d = browser
    d.get(server)
    WebDriverWait(d, 60).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    assert d.find_element(By.ID, "status").text == ""
    n_test = d.execute_script("return state.info.n_test")
    assert n_test > 100 and int(d.find_element(By.ID, "map").get_attribute("data-points")) == n_test
    assert len(d.find_elements(By.CSS_SELECTOR, "#prior-grid img")) == 16
    assert len(d.find_elements(By.CSS_SELECTOR, "#sliders input")) == d.execute_script("return state.info.latent_dim")
    assert not d.find_element(By.ID, "levels-panel").is_displayed()  # only a model with levels has the panel

    # click two points of the latent map: the decoded image follows
    decoded = d.find_element(By.ID, "decoded").get_attribute("src")
    map_canvas = d.find_element(By.ID, "map")
    ActionChains(d).move_to_element_with_offset(map_canvas, -150, -120).click().perform()
    first = changed(d, "decoded", decoded)
    ActionChains(d).move_to_element_with_offset(map_canvas, 160, 140).click().perform()
    second = changed(d, "decoded", first)
    assert first.startswith("data:image/png;base64,") and second != first

    # move a slider with the keyboard, as a person would: the kept code changes and is decoded
    slider = d.find_element(By.ID, "slider-0")
    value = slider.get_attribute("value")
    slider.click()
    slider.send_keys("\ue014" * 40)  # arrow right
    assert slider.get_attribute("value") != value
    changed(d, "decoded", second)

    # encode a test image from the gallery: input, reconstruction and a posterior sample appear
    d.find_elements(By.CSS_SELECTOR, "#gallery img")[3].click()
    WebDriverWait(d, 15).until(lambda d: d.find_element(By.ID, "enc-recon").get_attribute("src"))
    sample = d.find_element(By.ID, "enc-sample").get_attribute("src")
    d.find_element(By.ID, "resample").click()
    changed(d, "enc-sample", sample)
    WebDriverWait(d, 15).until(lambda d: d.find_element(By.ID, "noise-recon").get_attribute("src"))
    assert "dB" in d.find_element(By.ID, "noise-recon-caption").text
    d.find_element(By.ID, "set-a").click()

    # draw on the canvas: the drawing is encoded, then slide between it and the test image
    canvas = d.find_element(By.ID, "draw")
    recon = d.find_element(By.ID, "enc-recon").get_attribute("src")
    ActionChains(d).move_to_element_with_offset(canvas, -20, -60).click_and_hold().move_by_offset(10, 40) \
        .move_by_offset(10, 40).move_by_offset(0, 30).release().perform()
    changed(d, "enc-recon", recon)
    d.find_element(By.ID, "set-b").click()
    WebDriverWait(d, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#interp-strip img")) == 9)
    interp = d.find_element(By.ID, "interp-img").get_attribute("src")
    t = d.find_element(By.ID, "interp-t")
    t.click()
    t.send_keys("\ue012" * 30)  # arrow left
    changed(d, "interp-img", interp)

    if d.execute_script("return state.info.class_selector"):  # the kept code under every class
        n = len(d.execute_script("return state.info.classes"))
        WebDriverWait(d, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#classes-strip img")) == n)
    assert d.find_element(By.ID, "status").text == ""

    shot = os.environ.get("VAELAB_SCREENSHOT") or str(tmp_path / "serve.png")
    d.execute_script("window.scrollTo(0, 0)")
    assert d.save_screenshot(shot)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size[0] >= 1000 and len(im.convert("L").getcolors(256) or range(256)) > 50  # a page, not a blank


def test_typical_and_unusual_images_in_a_browser(server, browser):
    from selenium.webdriver.support.ui import Select

    d = browser
    d.get(server)
    WebDriverWait(d, 60).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    default = d.execute_script("return state.info.default_score")
    # the first ranking scores every test image: allow it time
    WebDriverWait(d, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rank-typical img, #rank-unusual img"))
                               == 24)
    assert d.find_element(By.ID, "rank-panel").get_attribute("data-score") == default
    WebDriverWait(d, 15).until(lambda d: d.find_element(By.ID, "enc-score").text.startswith("test image 0: "))

    # another score: other images, and the current image's score under it
    Select(d.find_element(By.ID, "rank-score")).select_by_value("mse")
    WebDriverWait(d, 15).until(lambda d: d.find_element(By.ID, "rank-panel").get_attribute("data-score") == "mse")
    WebDriverWait(d, 15).until(lambda d: "MSE = " in d.find_element(By.ID, "enc-score").text)
    captions = [f.text for f in d.find_elements(By.CSS_SELECTOR, "#rank-typical figcaption")]
    values = [float(c) for c in captions]
    assert values == sorted(values)  # an error: the smallest are the most typical

    # click an unusual image: it is encoded, its reconstruction and score shown
    thumb = next(t for t in d.find_elements(By.CSS_SELECTOR, "#rank-unusual img") if t.get_attribute("data-index") != "0")
    index = thumb.get_attribute("data-index")
    recon = d.find_element(By.ID, "enc-recon").get_attribute("src")
    thumb.click()
    new = changed(d, "enc-recon", recon)
    WebDriverWait(d, 15).until(lambda d: d.find_element(By.ID, "rank-recon").get_attribute("src") == new)
    WebDriverWait(d, 15).until(lambda d: d.find_element(By.ID, "rank-current").text.startswith(f"test image {index}: "))
    assert "higher than" in d.find_element(By.ID, "rank-current").text
    assert "chosen" in thumb.get_attribute("class")
    assert d.find_element(By.ID, "status").text == ""


def test_resample_levels_in_a_browser(ladder_server, browser):
    d = browser
    d.get(ladder_server)
    WebDriverWait(d, 60).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    panel = d.find_element(By.ID, "levels-panel")
    assert panel.is_displayed()
    # the first test image is encoded at start: its level 1 redrawn six times, level 2 kept
    WebDriverWait(d, 30).until(lambda d: panel.get_attribute("data-shown") == "1,below")
    assert len(d.find_elements(By.CSS_SELECTOR, "#levels-strip img")) == 6
    assert "redrawn from the prior: 1 (2x7x7)" in d.find_element(By.ID, "levels-text").text
    k = d.find_element(By.ID, "levels-k")
    k.send_keys("\ue014" * 3)  # arrow right, to k = 2: every level redrawn
    WebDriverWait(d, 15).until(lambda d: panel.get_attribute("data-shown") == "2,below")
    assert "kept: none" in d.find_element(By.ID, "levels-text").text
    # read in one script call: the strip is rebuilt when new draws arrive, which can come
    # between finding an element and reading it
    src = lambda d: d.execute_script("const im = document.querySelector('#levels-strip img'); return im && im.src")  # noqa: E731
    first = src(d)
    d.find_element(By.ID, "levels-again").click()
    WebDriverWait(d, 15).until(lambda d: src(d) not in (None, first))
    assert d.find_element(By.ID, "status").text == ""


def test_prior_samples_at_a_temperature_in_a_browser(ladder_server, browser):
    d = browser
    d.get(ladder_server)
    WebDriverWait(d, 60).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    panel, slider = d.find_element(By.ID, "prior-panel"), d.find_element(By.ID, "prior-t")
    assert slider.is_displayed() and panel.get_attribute("data-shown") == "0,1"
    srcs = lambda: d.execute_script(  # noqa: E731 (one script call: the grid is rebuilt as draws arrive)
        "return Array.from(document.querySelectorAll('#prior-grid img'), im => im.src)")
    assert len(srcs()) == 16 and len(set(srcs())) > 1
    slider.send_keys("\ue011")  # Home: temperature 0, the same draws at the prior's mean
    WebDriverWait(d, 15).until(lambda d: panel.get_attribute("data-shown") == "0,0")
    assert len(srcs()) == 16 and len(set(srcs())) == 1
    assert d.find_element(By.ID, "prior-t-text").text == "0.00" and "times 0.00" in d.find_element(By.ID, "prior-text").text
    d.find_element(By.ID, "prior-button").click()  # new draws keep the temperature
    WebDriverWait(d, 15).until(lambda d: panel.get_attribute("data-shown") == "1,0")
    assert d.find_element(By.ID, "status").text == ""

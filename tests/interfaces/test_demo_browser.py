"""The demo page driven in a real headless browser (Debian's chromium + chromedriver, through Selenium).

Runs where gradio, gradio_image_annotation, selenium, ``chromium`` and ``chromedriver`` are installed
(``scripts/install.sh`` installs them; CI runs it), else skips. The page is served by ``build_demo``
around a tiny random pipeline on a free local port (loopback only).
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import socket
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

NEEDS = ("gradio", "gradio_image_annotation", "selenium")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in NEEDS) or not (CHROMIUM and CHROMEDRIVER),
                       reason="needs gradio, gradio_image_annotation, selenium, chromium and chromedriver "
                              "(scripts/install.sh)"),
]
WAIT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo-browser")
    picture = Image.new("RGB", (160, 120), (200, 200, 200))
    ImageDraw.Draw(picture).ellipse((30, 30, 70, 80), fill=(30, 120, 200))
    picture.save(folder / "example.png")
    (folder / "not_an_image.jpg").write_text("this is text, not a picture")
    return folder


@pytest.fixture(scope="module")
def page_url(files):
    from chatrex.interfaces.demo import build_demo
    from chatrex.interfaces.pipeline import ChatRexPipeline
    from chatrex.upn.config import resolve_config
    from chatrex.upn.model import build_upn
    from chatrex.upn.wrapper import UPNWrapper
    from tests.mllm.conftest import build_tiny_tokenizer, make_model, make_processor

    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = resolve_config("upn_tiny")
    upn = UPNWrapper.from_model(build_upn(cfg).eval(), cfg, resize=64, max_size=96)
    # min_score 0: the random UPN's proposals all reach the page (and are drawn)
    pipe = ChatRexPipeline(upn, make_model(tok), make_processor(tok), min_score=0.0)
    app = build_demo(pipe, model_name="tiny", examples=[files / "example.png"], use_annotator=True,
                     model_card="A tiny random model for tests.")
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _open(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chatrex-image input[type=file]"))


def _css(browser, selector):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector)


def _upload_and_ask(browser, path, text=None, prompt=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _css(browser, "#chatrex-image input[type=file]").send_keys(str(path))
    # the upload is done once the annotator holds a picture (it then offers to remove it)
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '#chatrex-image button[aria-label="Remove Image"]'))
    if text is not None:
        _css(browser, "#chatrex-text textarea").send_keys(text)
    if prompt is not None:  # wait for the page to fill the prompt from the task, then replace it
        box = _css(browser, "#chatrex-prompt textarea")
        WebDriverWait(browser, WAIT_S).until(lambda d: box.get_attribute("value"))
        box.clear()
        box.send_keys(prompt)
    _css(browser, "#chatrex-run").click()


def _toast(browser) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def text(d):  # the toast's text, once it is rendered
        return " ".join(t.text for t in d.find_elements(By.CSS_SELECTOR, ".toast-body")).strip()

    WebDriverWait(browser, WAIT_S).until(text)
    return text(browser)


def test_upload_detect_and_see_the_boxes_drawn(browser, page_url, files):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, page_url)
    assert "A tiny random model for tests." in _css(browser, "body").text  # the model card line
    _upload_and_ask(browser, files / "example.png", text="fish")
    WebDriverWait(browser, WAIT_S).until(lambda d: "boxes from UPN" in _css(d, "#chatrex-summary").text)
    summary = _css(browser, "#chatrex-summary").text
    assert summary.split()[0].isdigit() and int(summary.split()[0]) > 0
    images = browser.find_elements(By.CSS_SELECTOR, "#chatrex-output-image img")
    assert images
    with urllib.request.urlopen(images[0].get_attribute("src"), timeout=30) as response:  # from 127.0.0.1
        drawn = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")).astype(int)
    original = np.asarray(Image.open(files / "example.png").convert("RGB")).astype(int)
    assert drawn.shape == original.shape
    changed = np.abs(drawn - original).sum(-1) > 0
    assert changed.mean() > 0.005  # the proposals' outlines are drawn onto the picture
    assert not changed.all()


def test_an_error_naming_a_box_shows_the_whole_message(browser, page_url, files):
    _open(browser, page_url)
    _upload_and_ask(browser, files / "example.png", text="fish", prompt="What is <obj99> holding?")
    message = _toast(browser)
    assert "the question refers to <obj99> but the image has only" in message


def test_an_unreadable_upload_gets_the_loaders_message(browser, page_url, files):
    _open(browser, page_url)
    _upload_and_ask(browser, files / "not_an_image.jpg", text="fish")
    message = _toast(browser)
    assert "could not be decoded" in message and "not_an_image" in message

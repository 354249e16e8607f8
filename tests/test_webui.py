"""The Gradio web UI in real headless Chromium: upload an image, set greedy sampling, ask, read the
streamed answer, ask a follow-up, clear. Answers are compared with the engine's for the same input."""

from __future__ import annotations

import os
import re
import shutil
import socket

import pytest

pytest.importorskip("gradio", reason="the web UI needs gradio (pip install gradio)")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the browser test needs playwright (pip install playwright)")

CHROMIUM = os.environ.get("VISUALRWKV_CHROMIUM", "/usr/bin/chromium")
if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VISUALRWKV_CHROMIUM)",
                allow_module_level=True)

from PIL import Image  # noqa: E402

from visualrwkv.engine.engine import Engine, ImageInput  # noqa: E402
from visualrwkv.engine.sampling import SamplingParams  # noqa: E402
from visualrwkv.serve.webui import launch  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000
# gradio's queue uses pandas options that pandas 3 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(tiny_vlm):
    engine = Engine(tiny_vlm, max_new_tokens=64)
    # temperature stays at its default (1.0) here: the test sets greedy through the UI's slider
    defaults = SamplingParams(presence_penalty=0.0, frequency_penalty=0.0, max_tokens=16)
    port = free_port()
    demo = launch(engine, port=port, block=False, defaults=defaults)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
    engine.close()


@pytest.fixture(scope="module")
def page(demo_url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(demo_url)
        yield page
        browser.close()


def expected_answer(model, image_bytes: bytes, question: str, history=()) -> str:
    params = SamplingParams(temperature=0.0, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=16)
    with Engine(model, cache_bytes=0) as engine:
        return engine.ask(question, ImageInput.from_bytes(image_bytes), history, params).result().text


def set_slider(page, elem_id: str, value: str) -> None:
    """Drag-free slider input. The accordion mounts its sliders lazily and the first render can
    overwrite an early value, so set it until the slider's number box shows it."""
    for _ in range(20):
        page.locator(f"#{elem_id} input[type=range]").fill(value)
        try:
            sync_api.expect(page.locator(f"#{elem_id} input[type=number]")).to_have_value(value, timeout=500)
            return
        except AssertionError:
            continue
    raise AssertionError(f"could not set the {elem_id} slider to {value}")


def ask(page, question: str) -> None:
    page.fill("#question textarea", question)
    page.click("#send")


def test_upload_ask_follow_up_and_clear(tiny_vlm, page, tmp_path):
    image_path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image_path)
    image_bytes = image_path.read_bytes()
    expect = sync_api.expect

    page.set_input_files("#image input[type=file]", str(image_path))
    page.wait_for_selector("#image img")
    page.get_by_text("Sampling").click()  # open the accordion
    page.locator("#temperature input[type=number]").wait_for(state="visible")
    page.wait_for_timeout(500)  # let the accordion's first render settle: it can reset an early value
    set_slider(page, "temperature", "0")

    first = expected_answer(tiny_vlm, image_bytes, "What is on the left?")
    assert first, "pick a question whose greedy answer is not empty"
    expect(page.locator("#temperature input[type=number]")).to_have_value("0")  # still greedy when we ask
    ask(page, "What is on the left?")
    bot = page.locator('#chatbot [data-testid="bot"]')
    expect(bot).to_have_count(1)
    expect(bot.nth(0)).to_have_text(first)

    second = expected_answer(tiny_vlm, image_bytes, "And then?", [("What is on the left?", first)])
    ask(page, "And then?")
    expect(bot).to_have_count(2)
    expect(bot.nth(1)).to_have_text(second or "(empty answer)")
    expect(page.locator('#chatbot [data-testid="user"]')).to_have_text(["What is on the left?", "And then?"])

    page.click("#clear")
    expect(bot).to_have_count(0)
    # after clearing, the same question starts a new conversation and gets the first answer again
    ask(page, "What is on the left?")
    expect(bot).to_have_count(1)
    expect(bot.nth(0)).to_have_text(first)

    # a question about another image starts a new conversation about it
    green_path = tmp_path / "green.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(green_path)
    page.set_input_files("#image input[type=file]", str(green_path))
    expect(page.locator("#image img")).to_have_attribute("src", re.compile("green|[0-9a-f]{20}"))
    ask(page, "What color is it?")
    expect(page.locator('#chatbot [data-testid="user"]')).to_have_text(["What color is it?"])
    expect(bot.nth(0)).to_have_text(expected_answer(tiny_vlm, green_path.read_bytes(), "What color is it?"))


def test_a_bad_upload_is_a_readable_message(page, tmp_path):
    """A file that is no image (or a broken one) gets a message naming the file and what is wrong,
    not a bare "Error"; the image box is emptied and the chat goes on."""
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not really a PNG" * 20)
    page.set_input_files("#image input[type=file]", str(bad))
    toast = page.locator(".toast-body")
    sync_api.expect(toast.first).to_contain_text("holiday.png", timeout=TIMEOUT_MS)
    sync_api.expect(toast.first).to_contain_text("cannot identify image")
    ask(page, "Is anyone there?")
    sync_api.expect(page.locator('#chatbot [data-testid="bot"]').last).not_to_have_text("", timeout=TIMEOUT_MS)

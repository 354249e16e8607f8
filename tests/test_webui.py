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


QUESTION_BUBBLES = '#chatbot [data-testid="user"]:not(:has(img))'


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


def ask_until_taken(page, question: str, bot, answers: int) -> None:
    """Ask, and ask again if the question was not taken: typed right as the previous answer ends, it
    is cleared by that event's last update (the question box is emptied) or its click is dropped
    while that event is still pending (gradio's trigger_mode "once"); a one-word answer ends within
    milliseconds of showing, so a quick test hits that window. Never asks twice: a taken question is
    seen as its answer's bubble before the next try."""
    for _ in range(10):
        ask(page, question)
        try:
            sync_api.expect(bot).to_have_count(answers, timeout=2000)
            return
        except AssertionError:
            continue
    sync_api.expect(bot).to_have_count(answers)


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
    # the questions, after the conversation's image (shown once, in a bubble of its own before the first)
    expect(page.locator(QUESTION_BUBBLES)).to_have_text(["What is on the left?", "And then?"])
    expect(page.locator('#chatbot [data-testid="user"] img')).to_have_count(1)

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
    expect(page.locator(QUESTION_BUBBLES)).to_have_text(["What color is it?"])
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


def test_the_first_question_shows_its_image(tiny_vlm, page, tmp_path):
    """The images a conversation starts with are shown before its first question (one bubble each, in
    order), not again before follow-ups. (The page is still greedy from the first test, as is the next.)"""
    paths = [tmp_path / "blue.png"]
    Image.new("RGB", (40, 30), (20, 40, 220)).save(paths[0])
    page.click("#clear")
    page.set_input_files("#image input[type=file]", str(paths[0]))
    page.wait_for_selector("#image img")
    ask(page, "What color is it?")
    user = page.locator('#chatbot [data-testid="user"]')
    sync_api.expect(user).to_have_count(2)
    sync_api.expect(user.nth(0).locator("img")).to_have_count(1)
    sync_api.expect(user.nth(1)).to_have_text("What color is it?")
    answer = expected_answer(tiny_vlm, paths[0].read_bytes(), "What color is it?")
    sync_api.expect(page.locator('#chatbot [data-testid="bot"]').nth(0)).to_have_text(answer or "(empty answer)")
    ask(page, "Are you sure?")
    sync_api.expect(user).to_have_count(3)
    sync_api.expect(page.locator('#chatbot [data-testid="user"] img')).to_have_count(1)
    sync_api.expect(user.nth(2)).to_have_text("Are you sure?")


def test_an_example_fills_the_image_and_the_question(tiny_vlm, page):
    """Clicking a bundled example puts its image and question in place; asking answers about that image."""
    from visualrwkv.demo import EXAMPLES_DIR, load_examples

    example = load_examples()[0]
    page.click("#clear")
    for _ in range(10):  # the examples table may still be mounting: click until the question is in place
        page.locator("#examples").get_by_text(example["question"].splitlines()[0]).first.click()
        try:
            sync_api.expect(page.locator("#question textarea")).to_have_value(example["question"], timeout=2000)
            break
        except AssertionError:
            continue
    sync_api.expect(page.locator("#question textarea")).to_have_value(example["question"])
    page.wait_for_selector("#image img")
    page.click("#send")
    expected = expected_answer(tiny_vlm, (EXAMPLES_DIR / example["image"]).read_bytes(), example["question"])
    bot = page.locator('#chatbot [data-testid="bot"]')
    sync_api.expect(bot).to_have_count(1)
    sync_api.expect(bot.nth(0)).to_have_text(expected or "(empty answer)")


def test_api_key_puts_a_login_page_in_front(tiny_vlm, page):
    """--api-key: the UI is behind a login that takes the key as the password; a wrong key stays out."""
    engine = Engine(tiny_vlm, max_new_tokens=8)
    port = free_port()
    demo = launch(engine, port=port, block=False, api_key="s3cret-key")
    context = page.context.browser.new_context()  # a browser of its own: no cookie shared with `page`
    try:
        login = context.new_page()
        login.set_default_timeout(TIMEOUT_MS)
        login.goto(f"http://127.0.0.1:{port}/")
        sync_api.expect(login.get_by_text("API key as the password")).to_be_visible()
        assert login.locator("#question").count() == 0
        for password, gets_in in (("wrong", False), ("s3cret-key", True)):
            login.get_by_label("username").fill("anyone")
            login.get_by_label("password").fill(password)
            login.get_by_role("button", name="Login").click()
            if gets_in:
                login.wait_for_selector("#question textarea")
            else:
                sync_api.expect(login.get_by_text("Incorrect Credentials")).to_be_visible()
    finally:
        context.close()
        demo.close()
        engine.close()


def test_greedy_by_default_for_a_short_answer_model(tiny_vlm_dir, tmp_path):
    """The shipped model (trained on short VQA answers) gets temperature 0 and a note saying why; another
    model keeps temperature 1; --temperature wins either way and is validated."""
    import json

    from visualrwkv.serve.cli import SHORT_ANSWER_NOTE, webui_defaults

    params, note = webui_defaults(None, None)  # the shipped model
    assert (params.temperature, note) == (0.0, SHORT_ANSWER_NOTE)
    params, note = webui_defaults(str(tiny_vlm_dir), None)  # no train_config.json
    assert (params.temperature, note) == (1.0, None)
    trained = tmp_path / "run"
    trained.mkdir()
    (trained / "train_config.json").write_text(json.dumps({"prepare": "shapes"}))
    assert webui_defaults(str(trained), None)[0].temperature == 0.0
    (trained / "train_config.json").write_text(json.dumps({"prepare": ""}))
    assert webui_defaults(str(trained), None)[0].temperature == 1.0
    assert webui_defaults(None, 0.7) == (webui_defaults(str(trained), 0.7)[0], None)
    assert webui_defaults(None, 0.7)[0].temperature == 0.7
    with pytest.raises(ValueError, match="temperature"):
        webui_defaults(None, -1.0)


def test_the_bundled_questions_as_follow_ups_get_the_single_turn_answers(shipped_vlm, example_conversations, page):
    """The shipped model in the web UI with the defaults `visualrwkv webui` gives it: each example image's
    questions asked one after the other in one conversation (the second and third are follow-ups) get
    the answers each gets asked alone, which are the examples' expected answers."""
    import dataclasses

    from visualrwkv.serve.cli import webui_defaults

    defaults, note = webui_defaults("tiny", None)
    engine = Engine(shipped_vlm, max_new_tokens=16)
    params = dataclasses.replace(defaults, max_tokens=min(defaults.max_tokens, 16))  # the UI's slider limit
    port = free_port()
    demo = launch(engine, port=port, block=False, defaults=defaults, note=note)
    context = page.context.browser.new_context()
    try:
        ui = context.new_page()
        ui.set_default_timeout(TIMEOUT_MS)
        ui.goto(f"http://127.0.0.1:{port}/")
        bot = ui.locator('#chatbot [data-testid="bot"]')
        preview = ui.locator("#image img")
        for image_path, questions in example_conversations:
            image = ImageInput.from_path(image_path)
            single_turn = [engine.ask(q["question"], image, [], params).result().text for q in questions]
            assert [a.lower() for a in single_turn] == [q["expected"].lower() for q in questions], image_path.name
            ui.click("#clear")
            sync_api.expect(bot).to_have_count(0)
            before = preview.get_attribute("src") if preview.count() else None
            ui.set_input_files("#image input[type=file]", str(image_path))
            if before is not None:  # wait for this image's preview, not the previous one's
                sync_api.expect(preview).not_to_have_attribute("src", before)
            preview.wait_for()
            for k, (q, expected) in enumerate(zip(questions, single_turn)):
                ask_until_taken(ui, q["question"], bot, k + 1)
                sync_api.expect(bot.nth(k)).to_have_text(expected)
            sync_api.expect(ui.locator(QUESTION_BUBBLES)).to_have_count(len(questions))
            sync_api.expect(ui.locator('#chatbot [data-testid="user"] img')).to_have_count(1)  # one conversation
    finally:
        context.close()
        demo.close()
        engine.close()

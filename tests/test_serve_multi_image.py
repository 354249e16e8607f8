"""Several images per request through the OpenAI server (real uvicorn on 127.0.0.1, the `openai` client):
a v7-format model answers as `ask` and the Python API do; the per-request image limit and a v6 model's
one-image rule are 400s with one clear line."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from test_serve import ServerThread, data_uri, png_bytes  # noqa: E402

from visualrwkv.cli import main  # noqa: E402
from visualrwkv.engine.engine import Engine, ImageInput  # noqa: E402
from visualrwkv.engine.sampling import SamplingParams  # noqa: E402
from visualrwkv.serve.app import ServerSettings, create_app  # noqa: E402
from visualrwkv.serve.requests import Limits  # noqa: E402

MODEL = "tiny-v7"
COLORS = [(200, 30, 30), (10, 200, 30), (30, 40, 220), (230, 200, 20)]
GREEDY = dict(temperature=0, presence_penalty=0, frequency_penalty=0)


def message(text: str, images: list[bytes]) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": data_uri(image)}} for image in images]
    return {"role": "user", "content": [{"type": "text", "text": text}, *parts]}


@pytest.fixture(scope="module")
def server(tiny_v7_vlm):
    engine = Engine(tiny_v7_vlm, model_id=MODEL, max_prompt_tokens=400, max_new_tokens=64)
    settings = ServerSettings(MODEL, limits=Limits(max_images=3))
    with ServerThread(create_app(engine, settings)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_three_images_equal_ask_and_the_python_api(tiny_v7_vlm, tiny_v7_vlm_dir, client, tmp_path, capsys):
    images = [png_bytes(c) for c in COLORS[:3]]
    question = "What is in the images?"
    r = client.chat.completions.create(model=MODEL, messages=[message(question, images)], max_tokens=12, **GREEDY)
    served = r.choices[0].message.content
    paths = []
    for k, data in enumerate(images):
        paths.append(tmp_path / f"{k}.png")
        paths[-1].write_bytes(data)
    flags = [x for p in paths for x in ("--image", str(p))]
    assert main(["ask", "--model", str(tiny_v7_vlm_dir), *flags, "--temperature", "0", "--presence-penalty", "0",
                 "--frequency-penalty", "0", "--max-tokens", "12", question]) == 0
    assert capsys.readouterr().out == served + "\n"
    params = SamplingParams(max_tokens=12, temperature=0, presence_penalty=0, frequency_penalty=0)
    with Engine(tiny_v7_vlm, cache_bytes=0) as engine:
        assert engine.ask(question, [ImageInput.from_bytes(b) for b in images], params=params).result().text == served
    n = tiny_v7_vlm.vit.num_tokens
    assert r.usage.prompt_tokens > 3 * n
    # the same images in another order are another request
    other = client.chat.completions.create(model=MODEL, messages=[message(question, images[::-1])], max_tokens=12,
                                           **GREEDY)
    assert other.usage.prompt_tokens_details.cached_tokens == 0


def post(server, body):
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)


def test_over_the_per_request_limit_is_a_400(server):
    r = post(server, {"model": MODEL, "messages": [message("Q?", [png_bytes(c) for c in COLORS])]})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "4 images in the request, above this server's limit of 3 per request"


def test_images_after_the_first_user_message_are_a_400(server):
    messages = [message("Q?", [png_bytes(COLORS[0])]), {"role": "assistant", "content": "A."},
                message("And this?", [png_bytes(COLORS[1])])]
    r = post(server, {"model": MODEL, "messages": messages})
    assert r.status_code == 400 and "messages[2]: images go in the first user message" in r.json()["error"]["message"]


def test_a_v6_model_refuses_two_images_with_a_400(tiny_vlm):
    engine = Engine(tiny_vlm, model_id="tiny-v6", max_new_tokens=8)
    with ServerThread(create_app(engine, ServerSettings("tiny-v6"))) as s:
        r = httpx.post(s.url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny-v6", "messages": [message("Q?", [png_bytes(COLORS[0]), png_bytes(COLORS[1])])]})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "this model takes one image per conversation, got 2"
        one = httpx.post(s.url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny-v6", "messages": [message("Q?", [png_bytes(COLORS[0])])], "max_tokens": 4})
        assert one.status_code == 200


def test_the_command_line_default_is_the_servers():
    from visualrwkv.serve import cli, requests

    assert cli.DEFAULT_MAX_IMAGES == requests.DEFAULT_MAX_IMAGES == Limits().max_images

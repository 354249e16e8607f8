"""The OpenAI-compatible server, on a real uvicorn on 127.0.0.1, driven by the official `openai` client
(and raw httpx for malformed requests)."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import threading
import time
import zlib

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402

from visualrwkv.engine.engine import Engine  # noqa: E402
from visualrwkv.engine.stream import truncate_at_stop  # noqa: E402
from visualrwkv.prompts import build_inference_prompt  # noqa: E402
from visualrwkv.serve.app import ServerSettings, create_app  # noqa: E402
from visualrwkv.serve.requests import Limits  # noqa: E402

MODEL = "tiny-vlm"
KEY = "test-key-123"
GREEDY = dict(temperature=0, presence_penalty=0, frequency_penalty=0)


class ServerThread:
    """uvicorn serving `app` from a background thread, on a socket bound before it starts (no port race)."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=20)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def png_bytes(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def huge_png(width=20000, height=20000) -> bytes:
    """A valid 1-bit PNG of width×height black pixels: ~50 KB on the wire, 400 Mpx decoded."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def user(text: str, image: bytes | None = None) -> dict:
    parts = [{"type": "text", "text": text}]
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": data_uri(image)}})
    return {"role": "user", "content": parts}


def reference(model, question: str, image: bytes | None, max_tokens: int) -> str:
    """The sequential greedy answer from the model itself (no engine)."""
    from visualrwkv.vision.image import load_image

    ids = build_inference_prompt(question, model.config.image_position, has_image=image is not None,
                                 tokenizer=model.tokenizer)
    images = [load_image(image)] if image is not None else []
    tokens = model.generate_greedy(ids, images, max_new_tokens=max_tokens)
    return truncate_at_stop(model.tokenizer.decode(tokens), ["\n\n"]).strip()


@pytest.fixture(scope="module")
def engine(tiny_vlm):
    e = Engine(tiny_vlm, model_id=MODEL, max_prompt_tokens=200, max_new_tokens=64)
    yield e
    e.close()


@pytest.fixture(scope="module")
def server(engine):
    settings = ServerSettings(MODEL, api_key=KEY, max_body_bytes=2 * 1024 * 1024,
                              limits=Limits(max_image_bytes=1024 * 1024, max_image_pixels=1000 * 1000))
    with ServerThread(create_app(engine, settings, close_engine_on_shutdown=False)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_non_streaming_answer_and_usage(tiny_vlm, client):
    image = png_bytes()
    r = client.chat.completions.create(model=MODEL, messages=[user("What color is it?", image)], max_tokens=16,
                                       **GREEDY)
    assert r.choices[0].message.content == reference(tiny_vlm, "What color is it?", image, 16)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > tiny_vlm.vit.num_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_matches_non_streaming(client, server):
    messages = [{"role": "system", "content": ""}, user("How many shapes?", png_bytes((10, 200, 30)))]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, seed=5, temperature=0.8)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, seed=5,
                                                 temperature=0.8, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # the raw stream is OpenAI SSE and ends with [DONE]
    body = {"model": MODEL, "messages": messages, "max_tokens": 4, "stream": True}
    raw = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                     timeout=60)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_multi_turn_history_from_messages(engine, client):
    image = png_bytes((10, 200, 30))
    first = client.chat.completions.create(model=MODEL, messages=[user("What color is it?", image)],
                                           max_tokens=16, **GREEDY).choices[0].message.content
    messages = [user("What color is it?", image), {"role": "assistant", "content": first}, user("And then?")]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, **GREEDY)
    from visualrwkv.engine.engine import Engine as FreshEngine, ImageInput
    from visualrwkv.engine.sampling import SamplingParams

    with FreshEngine(engine.model, cache_bytes=0) as fresh:
        expected = fresh.ask("And then?", ImageInput.from_bytes(image), [("What color is it?", first)],
                             SamplingParams(max_tokens=16, temperature=0, presence_penalty=0, frequency_penalty=0))
        assert second.choices[0].message.content == expected.result().text
    assert second.usage.prompt_tokens_details.cached_tokens > 0  # resumed from the state after the first answer


def test_32_concurrent_requests_equal_their_sequential_answers(tiny_vlm, engine, server):
    images = [png_bytes((200, 30, 30)), png_bytes((10, 200, 30))]
    questions = [(f"Question {i}: what is shown here?", images[i % 2]) for i in range(32)]
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)

    async def ask(i, question, image):
        kwargs = dict(model=MODEL, messages=[user(question, image)], max_tokens=8, **GREEDY)
        if i % 2:
            stream = await client.chat.completions.create(stream=True, **kwargs)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return (await client.chat.completions.create(**kwargs)).choices[0].message.content

    async def ask_all():
        try:
            return await asyncio.gather(*(ask(i, q, img) for i, (q, img) in enumerate(questions)))
        finally:
            await client.close()

    answers = asyncio.run(ask_all())
    assert engine.stats().peak_batch_size >= 8  # they really were decoded together
    assert answers == [reference(tiny_vlm, q, img, 8) for q, img in questions]


def post(server, body, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (bytes, str)):
        return httpx.post(server.url + "/v1/chat/completions", content=body,
                          headers={**headers, "Content-Type": "application/json"}, timeout=60, **kwargs)
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60, **kwargs)


def with_image_uri(uri: str) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": uri}}]}]}


def truncated_png() -> bytes:
    noise = Image.effect_noise((64, 64), 64).convert("RGB")
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


BAD_REQUESTS = {
    "invalid JSON": (lambda: b'{"model": "tiny-vlm", "messages": [', 400, "not valid JSON"),
    "bad base64": (lambda: with_image_uri("data:image/png;base64,!!!not-base64!!!"), 400, "invalid base64"),
    "not an image": (lambda: with_image_uri(data_uri(b"hello, I am text" * 10)), 400, "cannot identify image"),
    "truncated PNG": (lambda: with_image_uri(data_uri(truncated_png())), 400, "truncated"),
    "20000x20000 image": (lambda: with_image_uri(data_uri(huge_png())), 400, "too large"),
    "remote URL": (lambda: with_image_uri("https://example.com/cat.png"), 400, "does not fetch URLs"),
    "oversized prompt": (lambda: {"model": MODEL, "messages": [user("describe " * 300)]}, 400,
                         "above the limit of 200"),
    "max_tokens over the limit": (lambda: {"model": MODEL, "messages": [user("hi")], "max_tokens": 65}, 400,
                                  "above the limit of 64"),
    "bad temperature": (lambda: {"model": MODEL, "messages": [user("hi")], "temperature": "hot"}, 400, "temperature"),
    "unknown model": (lambda: {"model": "gpt-4o", "messages": [user("hi")]}, 404, "'gpt-4o' does not exist"),
    "no messages": (lambda: {"model": MODEL, "messages": []}, 400, "non-empty list"),
    "ends with assistant": (lambda: {"model": MODEL, "messages": [user("hi"), {"role": "assistant", "content": "yo"}]},
                            400, "last message must be a user message"),
    "two images": (lambda: {"model": MODEL, "messages": [user("a", png_bytes()), {"role": "assistant", "content": "b"},
                                                         user("c", png_bytes())]}, 400, "one image per conversation"),
    "oversized body": (lambda: {"model": MODEL, "messages": [user("x" * 3_000_000)]}, 413, "above the limit"),
    "system message": (lambda: {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, user("hi")]},
                       400, "messages[0]: system messages are not supported: this model was trained without"),
    "developer message": (lambda: {"model": MODEL, "messages": [user("hi"), {"role": "assistant", "content": "yo"},
                                                                {"role": "developer", "content": "x"}, user("a")]},
                          400, "messages[2]: developer messages are not supported"),
    "json mode": (lambda: {"model": MODEL, "messages": [user("hi")], "response_format": {"type": "json_object"}},
                  400, "'response_format' is not supported (only 'text'), got {'type': 'json_object'}"),
    "logit bias": (lambda: {"model": MODEL, "messages": [user("hi")], "logit_bias": {"5": 10}}, 400,
                   "'logit_bias' is not supported"),
    "tool choice": (lambda: {"model": MODEL, "messages": [user("hi")], "tool_choice": "auto"}, 400,
                    "'tool_choice' is not supported (only 'none')"),
    "missing API key": (lambda: {"model": MODEL, "messages": [user("hi")]}, 401, "missing API key"),
    "wrong API key": (lambda: {"model": MODEL, "messages": [user("hi")]}, 401, "incorrect API key"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_clear_4xx_and_the_server_goes_on(case, server, client):
    make_body, status, message = BAD_REQUESTS[case]
    key = {"missing API key": None, "wrong API key": "nope"}.get(case, KEY)
    start = time.monotonic()
    response = post(server, make_body(), key=key)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"]
    assert time.monotonic() - start < 10  # the bomb is refused from its header, not decoded
    ok = client.chat.completions.create(model=MODEL, messages=[user("hi")], max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_official_client_errors(server, client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=[user("hi")])
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
        bad.chat.completions.create(model=MODEL, messages=[user("hi")])
    with pytest.raises(openai.BadRequestError, match="cannot identify image"):
        client.chat.completions.create(model=MODEL, messages=[user("hi", b"GIF89a nope")])
    assert httpx.get(server.url + "/nowhere").json()["error"]["message"] == "no route /nowhere"


def test_graceful_shutdown_finishes_in_flight_requests(tiny_vlm):
    engine = Engine(tiny_vlm, model_id=MODEL)
    server = ServerThread(create_app(engine, ServerSettings(MODEL)))
    with server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        stream = client.chat.completions.create(model=MODEL, messages=[user("Tell me a story.")], max_tokens=48,
                                                stop=["never happens"], stream=True, **GREEDY)
        chunks = [next(iter(stream))]
        server.server.should_exit = True  # what Ctrl-C does
        chunks += list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert not server.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=2)
    with pytest.raises(Exception, match="shutting down"):
        engine.ask("hi")  # the app's shutdown closed the engine


def test_serve_command_starts_answers_and_stops_on_ctrl_c(tiny_vlm_dir):
    import os
    import signal
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VISUALRWKV_API_KEY": KEY}
    process = subprocess.Popen([sys.executable, "-m", "visualrwkv.cli", "serve", "--model", str(tiny_vlm_dir),
                                "--port", str(port), "--max-new-tokens", "32"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not inherited ignored
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()  # so that reading its output cannot block
                pytest.fail(f"the server did not come up: {process.communicate()[0]}")
            time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        name = tiny_vlm_dir.name
        assert [m.id for m in client.models.list().data] == [name]
        r = client.chat.completions.create(model=name, messages=[user("hi", png_bytes())], max_tokens=4)
        assert r.usage.completion_tokens <= 4
        assert httpx.get(url + "/v1/models", timeout=5).status_code == 401  # the key from the environment
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert f"serving {tiny_vlm_dir.name}" in output


def test_plain_completions_with_the_official_client(tiny_vlm, engine, client):
    from visualrwkv.engine.engine import ChatPrompt
    from visualrwkv.engine.sampling import SamplingParams

    prompt = "User: What color is the sky?\n\nAssistant:"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, **GREEDY)
    expected = engine.submit(ChatPrompt(tiny_vlm.tokenizer.encode(prompt), None, []),
                             SamplingParams(max_tokens=12, **GREEDY)).result()
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == expected.text and r.choices[0].finish_reason == expected.finish_reason
    # a plain text is a text-only sequence: the v6.0 text-only slot's positions come before it
    assert r.usage.prompt_tokens == tiny_vlm.text_only_positions + len(tiny_vlm.tokenizer.encode(prompt))
    chunks = list(client.completions.create(model=MODEL, prompt=[prompt], max_tokens=12, stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason
    with pytest.raises(openai.BadRequestError, match="'prompt' must be a non-empty string"):
        client.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="'echo' is not supported"):
        client.completions.create(model=MODEL, prompt="a", echo=True, max_tokens=2)
    # response_format "text" is what every answer is: accepted
    ok = client.chat.completions.create(model=MODEL, messages=[user("hi")], max_tokens=2,
                                        response_format={"type": "text"})
    assert ok.choices[0].finish_reason in ("stop", "length")


def scrape(server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_in_the_prometheus_format_and_one_access_line_per_request(server, client, caplog):
    import logging

    before = scrape(server)
    with caplog.at_level(logging.INFO, logger="visualrwkv.access"):
        r = client.chat.completions.create(model=MODEL, messages=[user("hi", png_bytes())], max_tokens=3)
        list(client.chat.completions.create(model=MODEL, messages=[user("hi")], max_tokens=3, stream=True))
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=[user("hi")], logit_bias={"1": 1})
    after = scrape(server)

    def grew(name, labels=()):
        key = (name, tuple(sorted(labels)))
        return after.get(key, 0) - before.get(key, 0)

    route = ("route", "/v1/chat/completions")
    assert grew("visualrwkv_requests_total", [route, ("status", "200")]) == 2
    assert grew("visualrwkv_requests_total", [route, ("status", "400")]) == 1
    assert grew("visualrwkv_completion_tokens_total") >= r.usage.completion_tokens + 1
    assert grew("visualrwkv_prompt_tokens_total") >= r.usage.prompt_tokens
    assert grew("visualrwkv_request_latency_seconds_count", [route]) == 2
    assert grew("visualrwkv_time_to_first_token_seconds_count", [route]) == 1  # the streamed one
    assert after[("visualrwkv_waiting", ())] == 0 and ("visualrwkv_cache_hits_total", ()) in after
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "visualrwkv.access"]
    assert len(lines) == 3
    assert lines[0].startswith(f"/v1/chat/completions 200 prompt_tokens={r.usage.prompt_tokens} ")
    assert f"completion_tokens={r.usage.completion_tokens} " in lines[0] and "latency=" in lines[0]
    assert lines[2].startswith("/v1/chat/completions 400 error=")


def test_the_bundled_questions_as_follow_ups_get_the_single_turn_answers(shipped_vlm, example_conversations):
    """The shipped model behind the server: each example image's questions in one conversation (the
    client sends the image with the first question, then the model's own earlier answers) get the
    answers each gets asked alone, which are the examples' expected answers."""
    with Engine(shipped_vlm, model_id="tiny", max_new_tokens=16) as shipped, \
            ServerThread(create_app(shipped, ServerSettings("tiny"), close_engine_on_shutdown=False)) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def ask(messages) -> str:
            r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, **GREEDY)
            return r.choices[0].message.content

        for image_path, questions in example_conversations:
            image = image_path.read_bytes()
            single_turn = [ask([user(q["question"], image)]) for q in questions]
            assert [a.lower() for a in single_turn] == [q["expected"].lower() for q in questions], image_path.name
            messages, follow_ups = [], []
            for q in questions:
                messages.append(user(q["question"], image if not messages else None))
                follow_ups.append(ask(messages))
                messages.append({"role": "assistant", "content": follow_ups[-1]})
            assert follow_ups == single_turn, image_path.name

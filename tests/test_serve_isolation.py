"""One bad request never touches another, through a real uvicorn on 127.0.0.1: a tiny temperature
beside four streams, bodies that once gave a 500, and a non-streaming client that goes away."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import torch  # noqa: E402
from conftest import _build_tiny_vlm  # noqa: E402
from test_serve import GREEDY, ServerThread, user  # noqa: E402

from visualrwkv.engine.engine import Engine  # noqa: E402
from visualrwkv.engine.sampling import SamplingParams  # noqa: E402
from visualrwkv.serve.app import ServerSettings, create_app  # noqa: E402

MODEL = "tiny-vlm"
MAX_NEW = 2000  # the endless model's answers take this many steps unless cancelled


@pytest.fixture(scope="module")
def endless_vlm():
    """The tiny test model with end-of-text and every token that holds a newline pushed far down: its
    answers never meet the "\\n\\n" turn terminator and run to max_tokens."""
    model = _build_tiny_vlm(seed=1)
    tokens = [0] + [i for i in range(1, 65536) if b"\n" in model.tokenizer.token_bytes(i)]
    with torch.no_grad():
        model.rwkv.head.weight[tokens] = 0.0  # logit 0, far below the largest of 65000 random logits
    return model


@pytest.fixture(scope="module")
def engine(endless_vlm):
    e = Engine(endless_vlm, model_id=MODEL, max_prompt_tokens=4096, max_new_tokens=MAX_NEW)
    yield e
    e.close()


@pytest.fixture(scope="module")
def server(engine):
    with ServerThread(create_app(engine, ServerSettings(MODEL), close_engine_on_shutdown=False)) as s:
        yield s


def greedy_alone(engine, questions: list[str], max_tokens: int) -> list[tuple[str, str]]:
    """(text, finish reason) of each greedy answer from a fresh engine, one request at a time, with
    the server's stop strings."""
    params = SamplingParams(temperature=0, presence_penalty=0, frequency_penalty=0, max_tokens=max_tokens,
                            stop=["never happens", "\n\n"])
    with Engine(engine.model, cache_bytes=0) as alone:
        results = [alone.ask(q, params=params).result() for q in questions]
    return [(r.text, r.finish_reason) for r in results]


def test_tiny_temperatures_beside_four_streams(engine, server):
    """1e-50 and 5e-324 are 0 in float32: they act as greedy, and the four streams decoding beside
    them (once all failed with a 500) finish with their own answers."""
    questions = [f"Stream {i}: tell me about the shapes." for i in range(4)]
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    async def stream(question, started):
        chunks = await client.chat.completions.create(model=MODEL, messages=[user(question)], max_tokens=24,
                                                      stop=["never happens"], stream=True, **GREEDY)
        text, reasons = "", []
        async for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                reasons.append(chunk.choices[0].finish_reason)
                started.set()
        return text, reasons[-1]

    async def tiny(temperature):
        r = await client.chat.completions.create(model=MODEL, messages=[user("Tiny temperature?")], max_tokens=8,
                                                 temperature=temperature, presence_penalty=0, frequency_penalty=0,
                                                 stop=["never happens"])
        return r.choices[0].message.content, r.choices[0].finish_reason

    async def run():
        try:
            started = [asyncio.Event() for _ in questions]
            streams = [asyncio.ensure_future(stream(q, e)) for q, e in zip(questions, started)]
            await asyncio.gather(*(e.wait() for e in started))  # all four are decoding now
            tiny_answers = await asyncio.gather(tiny(1e-50), tiny(5e-324))
            return await asyncio.gather(*streams), tiny_answers
        finally:
            await client.close()

    streams, tiny_answers = asyncio.run(run())
    assert streams == greedy_alone(engine, questions, 24)
    assert tiny_answers == greedy_alone(engine, ["Tiny temperature?"], 8) * 2


def test_a_failing_row_fails_alone(engine, monkeypatch):
    """Whatever goes wrong in one row's sampling, that request gets the error and the others go on."""
    sample = engine._sampler.sample

    def failing_for_seed_13(logits, rows, **kwargs):
        if any(row.params.seed == 13 for row in rows):
            raise RuntimeError("this row is broken")
        return sample(logits, rows, **kwargs)

    monkeypatch.setattr(engine._sampler, "sample", failing_for_seed_13)
    params = dict(temperature=0, presence_penalty=0, frequency_penalty=0, max_tokens=12,
                  stop=["never happens", "\n\n"])
    good = [engine.ask(f"question {i}", params=SamplingParams(**params)) for i in range(3)]
    bad = engine.ask("question bad", params=SamplingParams(seed=13, **params))
    with pytest.raises(RuntimeError, match="this row is broken"):
        bad.result(timeout=60)
    answers = [(r.text, r.finish_reason) for r in (h.result(timeout=60) for h in good)]
    assert answers == greedy_alone(engine, [f"question {i}" for i in range(3)], 12)


def post_raw(server, body: bytes) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", content=body,
                      headers={"Content-Type": "application/json"}, timeout=60)


def body(**fields) -> bytes:
    return json.dumps({"model": MODEL, "messages": [user("hi")], **fields}).encode()


BODIES = {
    "nested 100000 deep": (b"[" * 100_000 + b"]" * 100_000, "nests deeper than"),
    "nested 500 deep": (b'{"model": "tiny-vlm", "messages": ' + b"[" * 500 + b"]" * 500 + b"}", "nests deeper than"),
    "5000-digit max_tokens": (body()[:-1] + b', "max_tokens": ' + b"9" * 5000 + b"}", "integer of 5000 digits"),
    "400-digit temperature": (body()[:-1] + b', "temperature": ' + b"9" * 400 + b"}", "integer of 400 digits"),
    "seed of 40 digits": (body(seed=10**39), "integer of 40 digits"),
    "stop [[]]": (body(stop=[[]]), "'stop' must be a string or a list"),
    "stop [{}]": (body(stop=[{}]), "'stop' must be a string or a list"),
    "temperature as a list": (body(temperature=[1]), "temperature must be a number"),
}


@pytest.mark.parametrize("case", list(BODIES))
def test_bodies_that_gave_500_give_400(case, server):
    raw, message = BODIES[case]
    response = post_raw(server, raw)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    ok = post_raw(server, body(max_tokens=2))
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


def test_a_non_streaming_client_that_goes_away_frees_its_row(engine, server):
    """The answer would take MAX_NEW decode steps; the client closes its connection once it decodes,
    and the row is gone long before (counted in decode steps, not seconds)."""
    assert engine.stats().running == 0
    steps_before = engine.stats().decode_steps
    request = body(max_tokens=MAX_NEW, stop=["never happens"], **GREEDY)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(request)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + request)
        deadline = time.monotonic() + 30
        while engine.stats().running == 0:  # wait until it decodes
            assert time.monotonic() < deadline
            time.sleep(0.005)
    deadline = time.monotonic() + 120
    while engine.stats().running:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    steps = engine.stats().decode_steps - steps_before
    assert steps < MAX_NEW // 4, f"{steps} decode steps after the client left"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
fields = st.sampled_from(["model", "messages", "temperature", "top_p", "top_k", "max_tokens", "seed", "stop", "n",
                          "stream", "stream_options", "presence_penalty", "frequency_penalty", "penalty_decay",
                          "max_completion_tokens", "logprobs", "tools"])
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]) | json_values,
                                 "content": st.text(max_size=8) | json_values})


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.dictionaries(fields, json_values, max_size=6), st.lists(message, max_size=3), st.booleans())
def test_any_body_is_a_request_or_a_4xx(fields_, messages, with_messages):
    """Whatever JSON a client sends, validation answers with a ChatRequest or a 4xx, never a crash."""
    from visualrwkv.serve.errors import APIError
    from visualrwkv.serve.requests import Limits, parse_chat_request

    body = {"model": MODEL, **({"messages": messages} if with_messages else {}), **fields_}
    try:
        parse_chat_request(body, MODEL, Limits())
    except APIError as e:
        assert 400 <= e.status < 500 and e.message

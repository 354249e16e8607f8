"""The inference engine: one background thread owns the model and decodes all requests together.

- Continuous batching: a new request is prefilled on its own (rows of different lengths cannot
  share a parallel prefill without changing the state) and joins the running decode batch at the
  next step; finished rows leave it. Each row keeps its own state (`RWKVState.cat` / `select`) and
  its own sampling generator, so a request gets the same tokens alone or beside others.
- Prefix-state cache: the state (and last logits) after a prompt prefix is stored, keyed by the
  image digest and the prefix ids. Repeated questions skip the prefill; a follow-up turn resumes
  from the state after the previous answer when the history matches what this engine generated.
- Submission is thread-safe; a `RequestHandle` streams text deltas to a plain thread (`for d in h`)
  or to asyncio (`async for d in h`), then gives the `GenerationResult`.

Multi-turn prompts (SPEC §9.2): the conversation is rendered the way it unfolded, so the state after
an answer can be resumed: the first turn is the usual inference prompt (with the sandwich layout it
lists only the first question), each answer is `" {answer}\\n\\n"` and each later question
`"User: {q}\\n\\nAssistant:"`. (`prompts.build_inference_prompt` with a history, the training
rendering, lists every question in the first turn instead, and so could never reuse a state.)
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import os
import threading
from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor

from visualrwkv.constants import IMAGE_TOKEN_INDEX, STOP_TOKEN_INDEX
from visualrwkv.engine.cache import CacheStats, PrefixStateCache, make_key, make_prefix_keys
from visualrwkv.engine.sampling import Sampler, SamplingParams, SamplingRow
from visualrwkv.engine.stream import TextStream
from visualrwkv.prompts import build_inference_prompt, normalize_value
from visualrwkv.rwkv.model import RWKVState
from visualrwkv.vision.image import DEFAULT_MAX_PIXELS, ImageError, load_image

DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
DEFAULT_PREFILL_CHUNK = 512


class EngineClosedError(RuntimeError):
    """The engine is shutting down or stopped; the request was not (or not fully) served."""


class EngineBusyError(RuntimeError):
    """Too many requests are waiting; try again later."""


@dataclass(frozen=True)
class ImageInput:
    """A validated RGB image and the sha256 of its encoded bytes, which names it in the prefix cache."""

    image: Image.Image
    digest: bytes

    @classmethod
    def from_bytes(cls, data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   name: str | None = None) -> "ImageInput":
        # load_image refuses bombs from the header and raises ImageError (a ValueError) on bad data
        return cls(load_image(bytes(data), max_pixels=max_pixels, name=name), hashlib.sha256(data).digest())

    @classmethod
    def from_path(cls, path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> "ImageInput":
        path = os.fspath(path)
        if not os.path.isfile(path):
            load_image(path)  # raises the ImageError that says what is wrong with the path
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageError(f"cannot read image {path!r}: {e}") from e
        return cls.from_bytes(data, max_pixels, name=repr(path))  # errors name the file, not "<N bytes>"


@dataclass
class ChatPrompt:
    ids: list[int]  # with IMAGE_TOKEN_INDEX where the image goes
    image: ImageInput | None
    checkpoints: list[int]  # prefix lengths whose states are looked up in / stored into the cache


def build_chat_prompt(question: str, history: Sequence[tuple[str, str]] = (), image: ImageInput | None = None, *,
                      tokenizer, image_position: str = "middle") -> ChatPrompt:
    """The prompt for `question` after the (question, answer) pairs of `history`; see the module doc."""
    for i, pair in enumerate(history):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"history item {i}: expected a (question, answer) pair of strings")
        if not pair[1].strip():
            raise ValueError(f"history item {i}: the answer is empty")
    if not isinstance(question, str):
        raise ValueError(f"question must be a string, got {type(question).__name__}")
    turns = [q for q, _ in history] + [question]
    ids = build_inference_prompt(turns[0], image_position, has_image=image is not None, tokenizer=tokenizer)
    checkpoints = []
    if image is not None and image_position == "first" and IMAGE_TOKEN_INDEX in ids:
        checkpoints.append(ids.index(IMAGE_TOKEN_INDEX) + 1)  # "User: <image>": reusable for any question
    for (_, answer), next_question in zip(history, turns[1:]):
        checkpoints.append(len(ids))
        answer_ids = tokenizer.encode(" " + normalize_value(answer) + "\n\n")
        ids += answer_ids
        if answer_ids[-1] == STOP_TOKEN_INDEX:
            checkpoints.append(len(ids) - 1)  # where the engine stores the state after an answer
        ids += build_inference_prompt(next_question, has_image=False, tokenizer=tokenizer)
    n_sentinels = ids.count(IMAGE_TOKEN_INDEX)
    if n_sentinels != (image is not None):
        raise ValueError(f"the prompt holds {n_sentinels} '<image>' tag(s) but {int(image is not None)} image(s) "
                         "were given; one image per conversation, attached to the first question")
    return ChatPrompt(ids, image, sorted(set(checkpoints)))


@dataclass
class GenerationResult:
    text: str  # the answer: cut at the first stop string, surrounding whitespace stripped
    token_ids: list[int]  # generated tokens, without the stop token
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int  # prompt positions: text tokens plus image vectors
    completion_tokens: int  # sampled tokens, a stop token included
    cached_tokens: int  # prompt positions resumed from the prefix cache


class RequestHandle:
    """One submitted request: iterate it (sync or async) for text deltas, then call `result()`."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._deltas: collections.deque[str] = collections.deque()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._done = False
        self._cancelled = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    # ---- engine side ------------------------------------------------------------------------
    def _push(self, delta: str | None = None, result: GenerationResult | None = None,
              error: BaseException | None = None) -> None:
        with self._lock:
            if self._done:
                return
            if delta:
                self._deltas.append(delta)
            if result is not None or error is not None:
                self._result, self._error, self._done = result, error, True
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
                pass

    # ---- consumer side ----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop generating at the next step (e.g. the client went away); the result says "cancelled"."""
        self._cancelled = True

    def _next(self):
        """(delta, None) | (None, final) where final is the result or the error; caller holds the lock."""
        if self._deltas:
            return self._deltas.popleft(), None
        if self._done:
            return None, (self._error or self._result)
        return None, None

    def __iter__(self):
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._deltas or self._done)
                delta, final = self._next()
            if delta is not None:
                yield delta
            elif isinstance(final, BaseException):
                raise final
            else:
                return

    async def __aiter__(self):
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                delta, final = self._next()
                future = None
                if delta is None and final is None:
                    future = loop.create_future()
                    self._waiters.append((loop, future))
            if future is not None:
                await future
            elif delta is not None:
                yield delta
            elif isinstance(final, BaseException):
                raise final
            else:
                return

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Block until the request is done; raises its error. Deltas not iterated are skipped, not lost:
        the result holds the whole text."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"request {self.id} not done after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    async def aresult(self) -> GenerationResult:
        async for _ in self:
            pass
        return self.result(timeout=0)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class _Trim:
    """Drops leading whitespace and holds trailing whitespace back, so the deltas add up to text.strip()."""

    def __init__(self) -> None:
        self.started = False
        self.held = ""

    def push(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        body = text.rstrip()
        if not body:
            self.held += text
            return ""
        out, self.held = self.held + body, text[len(body):]
        return out


@dataclass
class _PrefixEntry:
    """What the cache holds for a prefix: the state after it and the logits of its last position."""

    state: RWKVState
    logits: Tensor

    @property
    def nbytes(self) -> int:
        return self.state.nbytes + self.logits.numel() * self.logits.element_size()

    def clone(self) -> "_PrefixEntry":
        return _PrefixEntry(self.state.clone(), self.logits.clone())


@dataclass
class _Request:
    prompt: ChatPrompt
    params: SamplingParams
    handle: RequestHandle


@dataclass
class _Prefill:
    """A request whose prompt is being run into a state, chunk by chunk across engine steps."""

    request: _Request
    chunks: collections.deque[tuple[int, int]]  # [start, end) spans of the prompt ids still to run
    keys: dict[int, str]  # prefix length → cache key, for the checkpoints (and the end) of the prompt
    remaining: int  # positions still to run
    cached: int  # positions resumed from the cache
    state: RWKVState | None = None
    logits: Tensor | None = None


@dataclass
class _Row:
    request: _Request
    sampling: SamplingRow
    stream: TextStream
    prompt_tokens: int
    cached_tokens: int
    trim: _Trim = field(default_factory=_Trim)
    generated: list[int] = field(default_factory=list)
    sampled: int = 0


@dataclass(frozen=True)
class EngineStats:
    running: int  # rows in the decode batch
    waiting: int  # submitted, not yet prefilled
    completed: int
    decode_steps: int
    peak_batch_size: int
    cache: CacheStats


class Engine:
    """`handle = engine.submit(engine.build_prompt(question, image), SamplingParams(...))`."""

    def __init__(self, model, *, model_id: str = "visualrwkv", max_batch_size: int = 32, max_waiting: int = 1024,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, max_prompt_tokens: int | None = None,
                 max_new_tokens: int | None = None, row_multiple: int = 8,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        """`row_multiple`: decode batches are padded to a multiple of this many rows. CPU matmul kernels
        (MKL) compute each row bit-identically whenever the row count is a multiple of their block
        (4 here), so a seeded request samples the same tokens alone or batched. Set it to
        `max_batch_size` for one fixed shape where kernels are picked per shape (GPUs).

        `prefill_chunk`: prompts are run in chunks of at most this many positions (an image is never
        cut: its chunk holds all its vectors), and one engine step runs prompt chunks only until
        this many positions are spent, then decodes the running rows; so a huge prompt delays the
        others' next token by about one chunk's work, not by its whole prefill."""
        for name, value in (("max_batch_size", max_batch_size), ("max_waiting", max_waiting),
                            ("row_multiple", row_multiple), ("prefill_chunk", prefill_chunk)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, value in (("max_prompt_tokens", max_prompt_tokens), ("max_new_tokens", max_new_tokens)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.model_id = model_id
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.row_multiple = row_multiple
        self.prefill_chunk = prefill_chunk
        self._sampler = Sampler(self.tokenizer.token_bytes)
        self._cache = PrefixStateCache(cache_bytes)
        self._cv = threading.Condition()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._prefilling: list[_Prefill] = []
        self._rows: list[_Row] = []
        self._state: RWKVState | None = None  # the batch: row i of the state and logits is self._rows[i]
        self._logits: Tensor | None = None
        self._closing = False
        self._abort = False
        self._thread: threading.Thread | None = None
        self._completed = 0
        self._steps = 0
        self._peak = 0

    # ---- public API (any thread) ----------------------------------------------------------
    def build_prompt(self, question: str, image: ImageInput | None = None,
                     history: Sequence[tuple[str, str]] = ()) -> ChatPrompt:
        return build_chat_prompt(question, history, image, tokenizer=self.tokenizer,
                                 image_position=self.model.config.image_position)

    def count_prompt_tokens(self, prompt: ChatPrompt) -> int:
        """Positions the prompt occupies: text tokens plus the image vectors (or the text-only image slot)."""
        return self._prompt_positions(prompt, len(prompt.ids))

    def _prompt_positions(self, prompt: ChatPrompt, n_ids: int) -> int:
        """Positions of the first n_ids ids; a text-only prompt begins with the model's text-only slot."""
        if not n_ids:
            return 0
        slot = self.model.text_only_positions if prompt.image is None else 0
        return slot + _positions(prompt.ids[:n_ids], self.model.vit.num_tokens)

    def submit(self, prompt: ChatPrompt, params: SamplingParams | None = None) -> RequestHandle:
        params = SamplingParams() if params is None else params
        if not isinstance(prompt, ChatPrompt):
            raise TypeError(f"prompt must be a ChatPrompt (see Engine.build_prompt), got {type(prompt).__name__}")
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        n = self.count_prompt_tokens(prompt)
        if self.max_prompt_tokens is not None and n > self.max_prompt_tokens:
            raise ValueError(f"the prompt is {n} tokens (text plus image vectors), above the limit of "
                             f"{self.max_prompt_tokens}")
        if self.max_new_tokens is not None and params.max_tokens > self.max_new_tokens:
            raise ValueError(f"max_tokens {params.max_tokens} is above the limit of {self.max_new_tokens}")
        handle = RequestHandle()
        with self._cv:
            if self._closing:
                raise EngineClosedError("the engine is shutting down and accepts no new requests")
            if len(self._waiting) >= self.max_waiting:
                raise EngineBusyError(f"{len(self._waiting)} requests are already waiting; try again later")
            self._waiting.append(_Request(prompt, params, handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="visualrwkv-engine", daemon=True)
                self._thread.start()
            self._cv.notify_all()
        return handle

    def ask(self, question: str, image: ImageInput | None = None, history: Sequence[tuple[str, str]] = (),
            params: SamplingParams | None = None) -> RequestHandle:
        return self.submit(self.build_prompt(question, image, history), params)

    def generate(self, prompt: ChatPrompt, params: SamplingParams | None = None) -> GenerationResult:
        return self.submit(prompt, params).result()

    def close(self, timeout: float | None = 30.0, drain: bool = True) -> None:
        """Accept nothing new; with `drain`, finish what was submitted (up to `timeout` seconds), then
        fail whatever is left with EngineClosedError."""
        with self._cv:
            self._closing = True
            self._abort = self._abort or not drain
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                with self._cv:
                    self._abort = True
                    self._cv.notify_all()
                thread.join()
        self._fail_everything(EngineClosedError("the engine stopped before this request finished"))

    def stats(self) -> EngineStats:
        with self._cv:
            return EngineStats(len(self._rows), len(self._waiting) + len(self._prefilling), self._completed, self._steps, self._peak,
                               self._cache.stats())

    def clear_cache(self) -> None:
        self._cache.clear()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(drain=exc_type is None)  # leaving on an error (Ctrl-C included): nobody waits for answers

    # ---- the loop (engine thread only) ----------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.no_grad():
                while True:
                    with self._cv:
                        self._cv.wait_for(lambda: self._waiting or self._prefilling or self._rows or self._closing)
                        if self._abort or (self._closing and not (self._waiting or self._prefilling or self._rows)):
                            break
                        admitted = []
                        busy = len(self._rows) + len(self._prefilling)
                        while self._waiting and busy + len(admitted) < self.max_batch_size:
                            admitted.append(self._waiting.popleft())
                    for request in admitted:
                        self._admit(request)
                    self._prefill_step()
                    if self._rows:
                        self._step()
        finally:
            with self._cv:
                self._closing = True  # a loop that ended (even by a bug) must not take new work
            self._fail_everything(EngineClosedError("the engine stopped before this request finished"))

    def _cache_id(self) -> str:
        """The model as the cache keys name it: its id, and its merged adapter and initial state if any
        (`VisualRWKV.cache_tag`), so that states from two state files are never mixed up."""
        return self.model_id + getattr(self.model, "cache_tag", "")

    def _admit(self, request: _Request) -> None:
        """Resume the prompt from the longest cached checkpoint and plan the chunks of the rest."""
        prompt = request.prompt
        try:
            digest = prompt.image.digest if prompt.image is not None else None
            ids = prompt.ids
            points = [c for c in prompt.checkpoints if 0 < c < len(ids)] + [len(ids)]
            keys = dict(zip(points, make_prefix_keys(digest, ids, points, self._cache_id())))
            job = _Prefill(request, collections.deque(), keys, 0, 0)
            for b in reversed(points):
                entry = self._cache.get(keys[b])
                if entry is not None:
                    job.state, job.logits = entry.state, entry.logits
                    job.cached = self._prompt_positions(prompt, b)
                    job.chunks.extend(plan_chunks(ids, b, points, self.model.vit.num_tokens, self.prefill_chunk))
                    break
            else:
                job.chunks.extend(plan_chunks(ids, 0, points, self.model.vit.num_tokens, self.prefill_chunk))
            job.remaining = self.count_prompt_tokens(prompt) - job.cached
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the others
            request.handle._push(error=e)
            return
        with self._cv:
            self._prefilling.append(job)

    def _prefill_step(self) -> None:
        """Run prompt chunks, the least remaining work first, until `prefill_chunk` positions are spent."""
        spent = 0
        for job in sorted(self._prefilling, key=lambda j: j.remaining):
            if spent >= self.prefill_chunk:
                break
            handle = job.request.handle
            try:
                if handle.cancelled:
                    n = self.count_prompt_tokens(job.request.prompt)
                    handle._push(result=GenerationResult("", [], "cancelled", n, 0, job.cached))
                elif job.chunks:
                    spent += self._run_chunk(job)
                    if job.chunks:
                        continue
                    self._join(job)
                else:  # the whole prompt came from the cache
                    self._join(job)
            except Exception as e:  # noqa: BLE001 - one bad request must not stop the others
                handle._push(error=e)
            with self._cv:
                self._prefilling.remove(job)

    def _run_chunk(self, job: _Prefill) -> int:
        """Run the job's next chunk from its state; store the state where a checkpoint ends. Positions run."""
        prompt = job.request.prompt
        start, end = job.chunks.popleft()
        segment = prompt.ids[start:end]
        images = [prompt.image.image] if IMAGE_TOKEN_INDEX in segment else []
        # only a text-only prompt's first chunk begins with the text-only slot (not the text before an image)
        job.logits, job.state = self.model.prefill(segment, images, job.state,
                                                   continuation=job.state is not None or prompt.image is not None)
        if end in job.keys:
            self._cache.put(job.keys[end], _PrefixEntry(job.state, job.logits))
        n = self._prompt_positions(prompt, end) - self._prompt_positions(prompt, start)
        job.remaining -= n
        return n

    def _join(self, job: _Prefill) -> None:
        """The prompt is in: the request joins the decode batch."""
        request, params = job.request, job.request.params
        row = _Row(request, self._sampler.new_row(params), TextStream(self.tokenizer.token_bytes, params.stop),
                   self.count_prompt_tokens(request.prompt), job.cached)
        with self._cv:
            self._rows.append(row)
            self._peak = max(self._peak, len(self._rows))
        self._state = job.state if self._state is None else RWKVState.cat([self._state, job.state])
        logits = job.logits[None]
        self._logits = logits if self._logits is None else torch.cat([self._logits, logits])

    def _step(self) -> None:
        """Sample a token for every row, finish the rows that are done, decode the rest one step.

        A failure that belongs to one row (its sampling, its text, its decode) fails that request
        alone; the other rows go on."""
        rows = self._rows
        try:
            tokens = self._sample(rows)
            keep = []
            for i, (row, token) in enumerate(zip(rows, tokens)):
                try:
                    if isinstance(token, Exception):
                        raise token
                    reason = self._advance(row, token)
                    if reason is None:
                        keep.append(i)
                    else:
                        self._finish(row, reason, i)
                except Exception as e:  # noqa: BLE001 - this row's failure, not the batch's
                    row.request.handle._push(error=e)
            if keep:
                state = self._state if len(keep) == len(rows) else self._state.select(keep)
                keep, self._logits, self._state = self._decode_rows(keep, [tokens[i] for i in keep], state,
                                                                   [rows[i] for i in keep])
            else:
                self._state = self._logits = None
            with self._cv:
                self._rows = [rows[i] for i in keep]
                self._steps += 1
        except Exception as e:  # noqa: BLE001 - a failure of the batch itself: fail it, keep serving
            for row in rows:
                row.request.handle._push(error=e)
            with self._cv:
                self._rows = []
            self._state = self._logits = None

    def _sample(self, rows: list[_Row]) -> list[int | Exception]:
        """The next token of every row; where sampling the batch fails, each row is sampled alone and
        a row that fails alone gets its error in place of a token. (A failed `sample` call has not
        drawn from any generator, so the retried rows draw what they would have drawn.)"""
        try:
            return self._sampler.sample(self._logits, [r.sampling for r in rows])
        except Exception:  # noqa: BLE001
            out: list[int | Exception] = []
            for i, row in enumerate(rows):
                try:
                    out += self._sampler.sample(self._logits[i:i + 1], [row.sampling])
                except Exception as e:  # noqa: BLE001
                    out.append(e)
            return out

    def _decode_rows(self, keep: list[int], tokens: list[int], state: RWKVState, rows: list[_Row]):
        """`_decode` of the batch; if that fails, of each row alone, failing only the rows that fail
        alone (a row computes the same bits alone as batched, see row_multiple). Returns the rows
        still decoding (indices into the step's rows), their logits and state."""
        try:
            return (keep, *self._decode(tokens, state))
        except Exception:  # noqa: BLE001
            pass
        kept, logits, states = [], [], []
        for j, (index, token, row) in enumerate(zip(keep, tokens, rows)):
            try:
                row_logits, row_state = self._decode([token], state.select([j]))
            except Exception as e:  # noqa: BLE001
                row.request.handle._push(error=e)
                continue
            kept.append(index)
            logits.append(row_logits)
            states.append(row_state)
        if not kept:
            return [], None, None
        return kept, torch.cat(logits), RWKVState.cat(states)

    def _decode(self, tokens: list[int], state: RWKVState) -> tuple[Tensor, RWKVState]:
        """One recurrent step for every row, on a batch padded with copies of row 0 (see row_multiple)."""
        n = len(tokens)
        pad = -n % self.row_multiple
        if pad:
            state = RWKVState.cat([state, state.select([0] * pad)])
        feed = torch.tensor([[t] for t in tokens + tokens[:1] * pad], device=self.model.device)
        logits, state = self.model.rwkv(feed, state, logits="last")
        if pad:
            logits, state = logits[:n], state.select(list(range(n)))
        return logits, state

    def _advance(self, row: _Row, token: int) -> str | None:
        """Take the sampled token into the row; the finish reason, or None to keep decoding."""
        params, handle = row.request.params, row.request.handle
        if handle.cancelled:
            return "cancelled"
        row.sampled += 1
        if token in params.stop_token_ids:
            return "stop_token"
        row.generated.append(token)
        delta = row.trim.push(row.stream.push(token))
        if delta:
            handle._push(delta)
        if row.stream.stopped:
            return "stop"
        if row.sampled >= params.max_tokens:
            return "length"
        return None

    def _finish(self, row: _Row, reason: str, index: int) -> None:
        handle = row.request.handle
        if reason != "cancelled":
            delta = row.trim.push(row.stream.finish())
            if delta:
                handle._push(delta)
        text = row.stream.text.strip()
        if reason == "stop_token" and text:
            self._remember_answer(row, text, index)
        result = GenerationResult(text, list(row.generated), "stop" if reason == "stop_token" else reason,
                                  row.prompt_tokens, row.sampled, row.cached_tokens)
        with self._cv:
            self._completed += 1
        handle._push(result=result)

    def _remember_answer(self, row: _Row, text: str, index: int) -> None:
        """Cache the state after prompt + answer, for a follow-up question about the same conversation.

        Stored only when re-tokenizing the answer text (as `build_chat_prompt` does for the history)
        gives back exactly the generated tokens; otherwise no follow-up could ever find it."""
        if self.tokenizer.encode(" " + normalize_value(text) + "\n\n") != row.generated + [STOP_TOKEN_INDEX]:
            return
        prompt = row.request.prompt
        digest = prompt.image.digest if prompt.image is not None else None
        key = make_key(digest, prompt.ids + row.generated, self._cache_id())
        # the batch state of this row has consumed every generated token (the stop token is never fed)
        self._cache.put(key, _PrefixEntry(self._state.select(index), self._logits[index]))

    def _fail_everything(self, error: BaseException) -> None:
        with self._cv:
            pending = [r.handle for r in self._waiting] + [job.request.handle for job in self._prefilling] + \
                [row.request.handle for row in self._rows]
            self._waiting.clear()
            self._prefilling = []
            self._rows = []
        self._state = self._logits = None
        for handle in pending:
            handle._push(error=error)


def _positions(ids: Sequence[int], image_tokens: int) -> int:
    n_images = sum(1 for t in ids if t == IMAGE_TOKEN_INDEX)
    return len(ids) - n_images + n_images * image_tokens


def plan_chunks(ids: Sequence[int], start: int, checkpoints: Sequence[int], image_tokens: int,
                limit: int) -> list[tuple[int, int]]:
    """[a, b) spans that cover ids[start:], each of at most `limit` positions (text tokens plus image
    vectors), never cutting the image. A span ends right after the image (that state serves any
    question about the image), else at the furthest checkpoint within reach, so that the state
    there can be cached, else wherever the limit falls. (Ending at every checkpoint would cost a
    model call per turn of a long conversation.) The spans depend only on the prompt and `start`,
    so a request computes the same state whatever else the engine is doing."""
    spans, a, n = [], start, len(ids)
    stops = sorted(c for c in checkpoints if start < c <= n)
    while a < n:
        b, size = a, 0
        while b < n:  # grow the span token by token while it fits
            width = image_tokens if ids[b] == IMAGE_TOKEN_INDEX else 1
            if size + width > limit and b > a:
                break
            b, size = b + 1, size + width
            if ids[b - 1] == IMAGE_TOKEN_INDEX and b in stops:
                break
        reachable = [c for c in stops if a < c <= b]
        if b < n and reachable:
            b = reachable[-1]
        spans.append((a, b))
        a = b
    return spans

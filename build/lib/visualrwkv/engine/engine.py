"""The inference engine: one background thread owns the model and decodes all requests together.

- Continuous batching: a new request is prefilled on its own (rows of different lengths cannot
  share a parallel prefill without changing the state) and joins the running decode batch at the
  next step; finished rows leave it. Each row keeps its own state (`RWKVState.cat` / `select`) and
  its own sampling generator, so a request gets the same tokens alone or beside others.
- Prefix-state cache: the state (and last logits) after a prompt prefix is stored, keyed by the
  digests of all the prompt's images, in order, and the prefix ids. Repeated questions skip the prefill; a follow-up turn resumes
  from the state after the previous answer when the history matches what this engine generated.
- Submission is thread-safe; a `RequestHandle` streams text deltas to a plain thread (`for d in h`)
  or to asyncio (`async for d in h`), then gives the `GenerationResult` (handles.py).

The pieces: inputs.py (images, chat prompts), prefill.py (cache lookup, chunk planning, running a
prompt into a state), handles.py (handles, results); this module schedules them and decodes.
Everything a caller needs is importable from here.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from visualrwkv.constants import STOP_TOKEN_INDEX
from visualrwkv.engine.cache import CacheStats, PrefixStateCache, make_key
# the public names of the engine package, importable from here as before the split
from visualrwkv.engine.handles import EngineBusyError, EngineClosedError, GenerationResult, RequestHandle  # noqa: F401
from visualrwkv.engine.inputs import ChatPrompt, ImageInput, build_chat_prompt  # noqa: F401
from visualrwkv.engine.prefill import PendingRequest, Prefiller, PrefillJob, PrefixEntry, plan_chunks  # noqa: F401
from visualrwkv.engine.sampling import Sampler, SamplingParams, SamplingRow
from visualrwkv.engine.stream import TextStream
from visualrwkv.prompts import normalize_value
from visualrwkv.rwkv.model import RWKVState

DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
DEFAULT_PREFILL_CHUNK = 512


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
class _Row:
    request: PendingRequest
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
        self._prefiller = Prefiller(self.model, self._cache, model_id, prefill_chunk)
        self._cv = threading.Condition()
        self._waiting: collections.deque[PendingRequest] = collections.deque()
        self._prefilling: list[PrefillJob] = []
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
    def build_prompt(self, question: str, image: ImageInput | Sequence[ImageInput] | None = None,
                     history: Sequence[tuple[str, str]] = ()) -> ChatPrompt:
        """The prompt in the model's format; `image`: one ImageInput or several, in order (a ValueError
        names the limit when the model takes fewer)."""
        config = self.model.config
        return build_chat_prompt(question, history, image, tokenizer=self.tokenizer,
                                 image_position=config.image_position, prompt_format=config.prompt_format,
                                 max_images=config.max_images, image_every_turn=config.image_every_turn)

    def count_prompt_tokens(self, prompt: ChatPrompt) -> int:
        """Positions the prompt occupies: text tokens plus the image vectors (or the text-only image slot)."""
        return self._prefiller.count_prompt_tokens(prompt)

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
            self._waiting.append(PendingRequest(prompt, params, handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="visualrwkv-engine", daemon=True)
                self._thread.start()
            self._cv.notify_all()
        return handle

    def ask(self, question: str, image: ImageInput | Sequence[ImageInput] | None = None, history: Sequence[tuple[str, str]] = (),
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

    def _admit(self, request: PendingRequest) -> None:
        try:
            job = self._prefiller.plan(request)
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

    def _run_chunk(self, job: PrefillJob) -> int:
        return self._prefiller.run_chunk(job)

    def _join(self, job: PrefillJob) -> None:
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
        key = make_key(prompt.digests, prompt.ids + row.generated, self._prefiller.cache_id())
        # the batch state of this row has consumed every generated token (the stop token is never fed)
        self._cache.put(key, PrefixEntry(self._state.select(index), self._logits[index]))

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



"""One interface over the two models, so the measurement code never branches on which side it runs.

A side turns (text before the image, text after it) into that model's token ids, encodes an image,
prefills a context in chunks of at most `chunk` positions (0: in one call), decodes one token, and
generates greedily with its library's own generation call. The "memory" a side decodes from is
VisualRWKV's RWKVState or LLaVA's KV cache (a DynamicCache that holds every position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..constants import IMAGE_TOKEN_INDEX


@dataclass
class PrefillResult:
    logits: Tensor  # [V], the last position's
    memory: object
    chunks: int


def _split(n: int, size: int) -> list[tuple[int, int]]:
    size = size or max(n, 1)
    return [(a, min(n, a + size)) for a in range(0, n, size)]


class VisualRWKVSide:
    name = "visualrwkv"

    def __init__(self, model):
        self.model = model
        self.image_tokens = model.vit.num_tokens

    def pixels(self, generator: torch.Generator) -> Tensor:
        return torch.randn((1, *self.model.vit.pixel_shape), generator=generator).to(self.model.device)

    def prompt_ids(self, before: list[int], after: list[int]) -> list[int]:
        return list(before) + [IMAGE_TOKEN_INDEX] + list(after)

    def context_ids(self, before: list[int], filler: list[int], length: int) -> list[int]:
        """Ids that fill exactly `length` positions: before, the image, then filler text."""
        n_after = length - len(before) - self.image_tokens
        return self.prompt_ids(before, filler[:n_after])

    def positions(self, ids: list[int]) -> int:
        return len(ids) - 1 + self.image_tokens  # the sentinel stands for the whole image

    def chat_prompt(self, question: str, tokenizer) -> list[int]:
        from ..prompts import build_inference_prompt

        return build_inference_prompt(question, self.model.config.image_position, tokenizer=tokenizer)

    def encode_image(self, pixels: Tensor) -> Tensor:
        return self.model.encode_images(pixels)

    def warm_up(self, ids: list[int]) -> None:
        """A short text-only prefill and two steps: first-call costs stay out of the timings."""
        _, state = self.model.rwkv(torch.tensor([ids], device=self.model.device), logits="last")
        for _ in range(2):
            _, state = self.step(ids[-1], state)

    def prefill(self, ids: list[int], pixels: Tensor, chunk: int = 0) -> PrefillResult:
        # The first call holds the text before the image, the whole image and as much text after it
        # as fits in `chunk` positions; the rest continues from the recurrent state.
        image_at = ids.index(IMAGE_TOKEN_INDEX)
        first_end = len(ids) if not chunk else max(image_at + 1, chunk - self.image_tokens + 1)
        logits, state = self.model.prefill(ids[:first_end], pixels)
        chunks = 1
        rest = ids[first_end:]
        for a, b in _split(len(rest), chunk):
            logits, state = self.model.prefill(rest[a:b], (), state)
            chunks += 1
        return PrefillResult(logits, state, chunks)

    def step(self, token: int, state):
        logits, state = self.model.rwkv(torch.tensor([[token]], device=self.model.device), state, logits="last")
        return logits[0], state

    def memory_bytes(self, state) -> int:
        return state.nbytes

    def generate(self, ids: list[int], pixels: Tensor, new_tokens: int) -> int:
        out = self.model.generate_greedy(ids, pixels, max_new_tokens=new_tokens, stop_ids=())
        return len(out)


class LlavaSide:
    name = "llava"

    def __init__(self, model):
        self.model = model
        config = model.config
        self.image_token_id = config.image_token_index
        self.image_tokens = config.image_seq_length
        vision = config.vision_config
        self.pixel_shape = (3, vision.image_size, vision.image_size)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    def pixels(self, generator: torch.Generator) -> Tensor:
        return torch.randn((1, *self.pixel_shape), generator=generator).to(self.device, self.dtype)

    def prompt_ids(self, before: list[int], after: list[int]) -> list[int]:
        return list(before) + [self.image_token_id] * self.image_tokens + list(after)

    def context_ids(self, before: list[int], filler: list[int], length: int) -> list[int]:
        n_after = length - len(before) - self.image_tokens
        return self.prompt_ids(before, filler[:n_after])

    def positions(self, ids: list[int]) -> int:
        return len(ids)

    def chat_prompt(self, question: str, tokenizer) -> list[int]:
        # the LLaVA-1.5 conversation template, written with the same (World) tokenizer as the other side
        return self.prompt_ids(tokenizer.encode("USER: "), tokenizer.encode("\n" + question + " ASSISTANT:"))

    def encode_image(self, pixels: Tensor) -> Tensor:
        return self.model.get_image_features(pixel_values=pixels).pooler_output

    def warm_up(self, ids: list[int]) -> None:
        from transformers import DynamicCache

        _, cache = self._forward(ids, DynamicCache(config=self.model.config))
        for _ in range(2):
            _, cache = self.step(ids[-1], cache)

    def _forward(self, ids: list[int], cache, pixels: Tensor | None = None):
        out = self.model(input_ids=torch.tensor([ids], device=self.device), pixel_values=pixels,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.past_key_values

    def prefill(self, ids: list[int], pixels: Tensor, chunk: int = 0) -> PrefillResult:
        from transformers import DynamicCache

        # HF LLaVA splices the image features into the chunk that holds all its placeholders; later
        # chunks append to the KV cache and attend to everything before them.
        last_image = len(ids) - ids[::-1].index(self.image_token_id)
        first_end = len(ids) if not chunk else max(last_image, chunk)
        logits, cache = self._forward(ids[:first_end], DynamicCache(config=self.model.config), pixels)
        chunks = 1
        rest = ids[first_end:]
        for a, b in _split(len(rest), chunk):
            logits, cache = self._forward(rest[a:b], cache)
            chunks += 1
        return PrefillResult(logits, cache, chunks)

    def step(self, token: int, cache):
        return self._forward([token], cache)

    def memory_bytes(self, cache) -> int:
        total = 0
        for layer in cache.layers:
            for t in (layer.keys, layer.values):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    def generate(self, ids: list[int], pixels: Tensor, new_tokens: int) -> int:
        input_ids = torch.tensor([ids], device=self.device)
        out = self.model.generate(input_ids=input_ids, pixel_values=pixels, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False)
        return out.shape[1] - input_ids.shape[1]


def make_side(name: str, config):
    from .vlm_models import build_llava, build_visualrwkv

    if name == "visualrwkv":
        return VisualRWKVSide(build_visualrwkv(config))
    if name == "llava":
        return LlavaSide(build_llava(config))
    raise ValueError(f"unknown side {name!r}: expected visualrwkv or llava")

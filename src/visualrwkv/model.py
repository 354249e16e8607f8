"""VisualRWKV: frozen vision encoder → projector → image vectors spliced into the token embeddings
→ RWKV-6 with 2D scanning (SPEC §1, §5, §6).

One layer-wise forward (`forward_embeds`) serves training and inference: training runs whole
spliced sequences through it; inference runs the prefix (text, image, text) through it, keeps the
state, and decodes recurrently from there, which is exact because every generated token comes after
the image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from . import hub
from .constants import END_OF_TEXT, IGNORE_INDEX, IMAGE_TOKEN_INDEX, STOP_TOKEN_INDEX
from .rwkv.checkpoint import CheckpointError, read_state_dict, read_tensor_shapes, strip_prefix
from .rwkv import precision
from .rwkv.model import RWKV, RWKVConfig, RWKVState
from .rwkv.tokenizer import Tokenizer
from .scanning import SCANNING_MODES, ImageSpan, inverse, layer_order, permute, prefill_segments, scan_permutation
from .utils import atomic_save_file, atomic_write
from .vision.encoders import VisionConfig, build_encoder
from .prompts import PROMPT_FORMATS
from .vision.projector import build_projector

CONFIG_NAME, WEIGHTS_NAME = hub.CONFIG_NAME, hub.WEIGHTS_NAME
IMAGE_POSITIONS = ("first", "last", "middle")
# How a sequence without an image is laid out (SPEC §5.4 step 5):
# - "image-slot": the official v6.0 layout, which the released v6.0 models were fine-tuned with: the
#   image's place holds the encoder's num_tokens zero vectors (the official code zeroes the projected
#   features; block 0's ln0 maps them to its bias), scanned like an image (its patch span reversed on
#   odd layers under bidirectional scanning), then the text;
# - "plain": the text alone (v7.00, whose official code embeds text-only batches plainly).
TEXT_ONLY_LAYOUTS = ("image-slot", "plain")


@dataclass
class VisualRWKVConfig:
    rwkv: RWKVConfig
    vision: VisionConfig
    projector: str = "linear"
    scanning: str = "bidirection"
    image_position: str = "middle"  # the prompt layout for instructions (SPEC §7.3); "middle" = sandwich
    ctx_len: int = 2048
    text_only_layout: str | None = None  # one of TEXT_ONLY_LAYOUTS; None: the format's own ("plain" for v7)
    # the prompt format (prompts.py): "v6" (image_position, one image) or "v7" (images first, one
    # `<image>` line each, several per conversation); None: "v7" with the v7 stack, else "v6"
    prompt_format: str | None = None
    # images per conversation the model takes; None: the format's own (v6: 1, SPEC §5.4 step 5; v7: no limit)
    max_images: int | None = None
    # a chat's later questions lay the conversation's images out again, each with its own sandwich
    # (prompts.MULTI_TURN_RENDERINGS "image-every-turn"): set for a model trained so (the shipped tiny one)
    image_every_turn: bool = False

    def __post_init__(self):
        if isinstance(self.rwkv, dict):
            self.rwkv = RWKVConfig.from_dict(self.rwkv)
        if isinstance(self.vision, dict):
            self.vision = VisionConfig.from_dict(self.vision)
        if self.scanning not in SCANNING_MODES:
            raise ValueError(f"scanning must be one of {SCANNING_MODES}, got {self.scanning!r}")
        if self.image_position not in IMAGE_POSITIONS:
            raise ValueError(f"image_position must be one of {IMAGE_POSITIONS}, got {self.image_position!r}")
        if self.ctx_len <= 0:
            raise ValueError(f"ctx_len must be positive, got {self.ctx_len}")
        if self.prompt_format is None:
            self.prompt_format = "v7" if self.vision.kind == "stack" else "v6"
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")
        if self.text_only_layout is None:  # v7.00's official code embeds text-only batches plainly
            self.text_only_layout = "plain" if self.prompt_format == "v7" else "image-slot"
        if self.text_only_layout not in TEXT_ONLY_LAYOUTS:
            raise ValueError(f"text_only_layout must be one of {TEXT_ONLY_LAYOUTS}, got {self.text_only_layout!r}")
        if self.max_images is None and self.prompt_format == "v6":
            self.max_images = 1
        if self.max_images is not None and (type(self.max_images) is not int or self.max_images < 1):
            raise ValueError(f"max_images must be None or an integer >= 1, got {self.max_images!r}")
        if type(self.image_every_turn) is not bool:
            raise ValueError(f"image_every_turn must be true or false, got {self.image_every_turn!r}")
        if self.prompt_format == "v6" and self.max_images != 1:
            raise ValueError("the v6 prompt format takes one image per conversation (SPEC §5.4): max_images must "
                             f"be 1, got {self.max_images}; several images need prompt_format 'v7'")

    def to_dict(self) -> dict:
        return {"rwkv": self.rwkv.to_dict(), "vision": self.vision.to_dict(), "projector": self.projector,
                "scanning": self.scanning, "image_position": self.image_position, "ctx_len": self.ctx_len,
                "text_only_layout": self.text_only_layout, "prompt_format": self.prompt_format,
                "max_images": self.max_images, "image_every_turn": self.image_every_turn}

    @classmethod
    def from_dict(cls, d: dict) -> "VisualRWKVConfig":
        return cls(**d)


@dataclass
class SplicedBatch:
    """Token embeddings with the image vectors in place, right-padded to the longest row."""

    embeds: Tensor  # [B, T, C]
    labels: Tensor | None  # [B, T], IGNORE_INDEX where nothing is supervised
    spans: list[list[ImageSpan]]  # per row: the patch span of every image, for scanning
    lengths: list[int] = field(default_factory=list)
    unsupervised: list[int] = field(default_factory=list)  # rows with labels but none within ctx_len


def sample_level_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample mean next-token cross-entropy [B] (SPEC §7.6); rows without labels give 0."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                         reduction="none").view(targets.shape)
    valid = (targets != IGNORE_INDEX).sum(dim=1)
    return ce.sum(dim=1) / valid.clamp(min=1)


class VisualRWKV(nn.Module):
    def __init__(self, config: VisualRWKVConfig, vit: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.rwkv = RWKV(config.rwkv)
        self.vit = vit if vit is not None else build_encoder(config.vision)
        self.proj = build_projector(config.projector, self.vit.hidden_size, config.rwkv.n_embd)
        self._tokenizer: Tokenizer | None = None
        # a trained initial state (adapters/state.py) every sequence starts from instead of zeros
        self.state_tuning = None
        self.adapter_tag = ""  # names a LoRA adapter merged at load, for the engine's cache keys

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer()
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return self.rwkv.device

    @property
    def cache_tag(self) -> str:
        """What besides the weights file changes the model's states: a merged adapter, an initial state.
        The engine's prefix-cache keys include it, so two state files never share a cached prefix."""
        state = f"+state:{self.state_tuning.digest}" if self.state_tuning is not None else ""
        return self.adapter_tag + state

    @property
    def text_only_positions(self) -> int:
        """Positions before the text of a sequence that has no image: the image slot, or 0 (plain)."""
        return self.vit.num_tokens if self.config.text_only_layout == "image-slot" else 0

    # ---- images ---------------------------------------------------------------------------
    def preprocess(self, images: Sequence) -> Tensor:
        """Pixel values [N, ...] of images given as paths, bytes, file objects or PIL images; a tensor
        is taken as pixel values already (e.g. `vit.blank_pixels()`, the official stand-in image)."""
        if not images:
            return torch.zeros((0, *self.vit.pixel_shape))
        return torch.stack([image if isinstance(image, Tensor) else self.vit.preprocess(image) for image in images])

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """Projected image vectors [N, num_tokens, C] in the LM's dtype."""
        features = self.vit(pixel_values.to(self.device))
        projected = self.proj(features.to(next(self.proj.parameters()).dtype))
        return projected.to(self.rwkv.dtype)

    # ---- splicing -------------------------------------------------------------------------
    def splice(self, input_ids: Sequence[Sequence[int]], image_embeds: Sequence[Tensor],
               labels: Sequence[Sequence[int]] | None = None, ctx_len: int | None = None,
               continuation: bool = False) -> SplicedBatch:
        """Replace each IMAGE_TOKEN_INDEX sentinel of row b by the next image of image_embeds[b].

        image_embeds[b] is [n_images_b, num_tokens, C]. A row without a sentinel starts with the image
        slot under the "image-slot" text-only layout, unless `continuation` (the rows carry on from a
        state, whose sequence began earlier). With ctx_len, each row keeps its first ctx_len positions,
        shrunk to the nearest image boundary so that no image is cut; a row that had labels but has
        none in that window is kept unsupervised and listed in `unsupervised`. (The official code
        then trains the last ctx_len positions instead: answers without their image, SPEC §5.4 step 6.)
        """
        if len(image_embeds) != len(input_ids) or (labels is not None and len(labels) != len(input_ids)):
            raise ValueError("input_ids, image_embeds and labels must have one entry per sample")
        lo, hi = self.vit.patch_span
        grid = tuple(self.vit.patch_grid)
        rows, row_labels, row_spans, unsupervised = [], [], [], []
        for b, ids in enumerate(input_ids):
            ids = list(ids)
            n_sentinels = sum(1 for t in ids if t == IMAGE_TOKEN_INDEX)
            images = image_embeds[b]
            if n_sentinels != len(images):
                raise ValueError(f"sample {b}: {n_sentinels} image placeholder(s) in the prompt but {len(images)} image(s)")
            lab = list(labels[b]) if labels is not None else [IGNORE_INDEX] * len(ids)
            if len(lab) != len(ids):
                raise ValueError(f"sample {b}: {len(ids)} input ids but {len(lab)} labels")
            if n_sentinels == 0 and self.text_only_positions and not continuation:
                slot = torch.zeros(1, self.vit.num_tokens, self.config.rwkv.n_embd, device=self.device)
                ids, lab, images = [IMAGE_TOKEN_INDEX] + ids, [IGNORE_INDEX] + lab, slot
            pieces, piece_labels, spans, extents, pos, text, text_labels, image_i = [], [], [], [], 0, [], [], 0
            for t, y in zip(ids + [None], lab + [None]):
                if t is None or t == IMAGE_TOKEN_INDEX:
                    if text:
                        pieces.append(self.rwkv.embed(torch.tensor(text, device=self.device)))
                        piece_labels += text_labels
                        pos += len(text)
                        text, text_labels = [], []
                    if t is not None:
                        image = images[image_i]
                        image_i += 1
                        pieces.append(image)
                        piece_labels += [IGNORE_INDEX] * image.shape[0]
                        spans.append(ImageSpan(pos + lo, pos + hi, grid))
                        extents.append((pos, pos + image.shape[0]))
                        pos += image.shape[0]
                else:
                    text.append(t)
                    text_labels.append(y)
            if not pieces:
                raise ValueError(f"sample {b} is empty")
            embeds = torch.cat(pieces).to(self.rwkv.dtype)
            if ctx_len is not None and embeds.shape[0] > ctx_len:
                end = _truncation_end(extents, ctx_len)
                supervised = any(y != IGNORE_INDEX for y in piece_labels)
                embeds, piece_labels = embeds[:end], piece_labels[:end]
                spans = [s for s, (_, z) in zip(spans, extents) if z <= end]
                if supervised and all(y == IGNORE_INDEX for y in piece_labels):
                    unsupervised.append(b)
            rows.append(embeds)
            row_labels.append(piece_labels)
            row_spans.append(spans)
        lengths = [r.shape[0] for r in rows]
        T = max(lengths)
        embeds = torch.stack([F.pad(r, (0, 0, 0, T - r.shape[0])) for r in rows])
        label_tensor = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
        for b, lab in enumerate(row_labels):
            label_tensor[b, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        return SplicedBatch(embeds, label_tensor.to(self.device) if labels is not None else None, row_spans, lengths,
                            unsupervised)

    # ---- the layer-wise forward -------------------------------------------------------------
    def hidden_states(self, x: Tensor, spans: list[list[ImageSpan]], state: RWKVState | None = None,
                      last_only: bool = False):
        """The blocks over spliced embeddings [B, T, C], each layer reading the image spans in its
        scan order; returns (final hidden states [B, T, C], or [B, 1, C] with `last_only`; state).

        Outside autograd a long input goes through all the blocks a segment at a time, carrying the
        state (the recurrence makes that the same computation), so a prompt's activations are those of
        RWKV.segment_length() positions whatever its length; a segment never cuts an image's span, whose
        positions every layer reads in its scan order."""
        if state is None and self.state_tuning is not None:  # a sequence starts from the tuned state
            state = self.state_tuning.initial(x.shape[0], self.rwkv.dtype)
        segment = self.rwkv.segment_length()
        if torch.is_grad_enabled() or x.shape[1] <= segment:
            hidden, state = self._hidden_states(x, spans, state)
            return (hidden[:, -1:] if last_only else hidden), state
        hidden = []
        for start, end in prefill_segments(spans, x.shape[1], segment):
            part = [[span.shifted(-start) for span in row if start <= span.start < end] for row in spans]
            h, state = self._hidden_states(x[:, start:end], part, state)
            hidden = [h[:, -1:]] if last_only else hidden + [h]
        return torch.cat(hidden, 1), state

    def _hidden_states(self, x: Tensor, spans: list[list[ImageSpan]], state: RWKVState | None):
        T = x.shape[1]
        orders: dict[tuple[bool, bool], tuple[Tensor | None, Tensor | None]] = {}
        layers, v_first = [], None  # v_first: RWKV-7's value residual, kept in token order between layers
        for i, block in enumerate(self.rwkv.blocks):
            key = layer_order(self.config.scanning, i)
            if key not in orders:
                index = scan_permutation(spans, T, self.config.scanning, i, device=x.device)
                orders[key] = (index, inverse(index))
            index, undo = orders[key]
            h, layer_state, v_first = self.rwkv.run_block(block, permute(x, index),
                                                          state.layer(i) if state is not None else None,
                                                          permute(v_first, index) if v_first is not None else None)
            x = permute(h, undo)
            v_first = permute(v_first, undo) if v_first is not None else None
            layers.append(layer_state)
        return x, RWKVState.from_layers(layers)

    def forward_embeds(self, x: Tensor, spans: list[list[ImageSpan]], state: RWKVState | None = None,
                       logits: str = "all") -> tuple[Tensor | None, RWKVState]:
        hidden, state = self.hidden_states(x, spans, state, last_only=logits != "all")
        return self.rwkv.project(hidden, logits), state

    def embed_batch(self, input_ids: Sequence[Sequence[int]], pixel_values: Sequence[Tensor],
                    labels: Sequence[Sequence[int]] | None = None, ctx_len: int | None = None) -> SplicedBatch:
        """Encode every sample's images (pixel_values[b] is [n_images_b, ...], n may be 0) and splice them."""
        counts = [len(p) for p in pixel_values]
        if sum(counts):
            per_sample = list(self.encode_images(torch.cat(list(pixel_values))).split(counts))
        else:
            per_sample = [torch.zeros(0, self.vit.num_tokens, self.config.rwkv.n_embd, device=self.device)] * len(counts)
        return self.splice(input_ids, per_sample, labels, ctx_len)

    def forward(self, input_ids: Sequence[Sequence[int]], pixel_values: Sequence[Tensor],
                labels: Sequence[Sequence[int]] | None = None, ctx_len: int | None = None):
        """Training forward over whole sequences. Returns (logits [B, T, V], labels [B, T] or None)."""
        batch = self.embed_batch(input_ids, pixel_values, labels, ctx_len)
        logits, _ = self.forward_embeds(batch.embeds, batch.spans)
        return logits, batch.labels

    # ---- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: Sequence[int], images: Sequence = (), state: RWKVState | None = None,
                continuation: bool | None = None):
        """Run a prompt (ids with sentinels + its images) from `state`; returns (last logits [V], state).

        Without a state the prompt begins a sequence, so a text-only one gets the text-only layout;
        `continuation=True` says it does not (a piece of a longer prompt, e.g. the text before its image)."""
        pixel_values = images if isinstance(images, Tensor) else self.preprocess(list(images))
        embeds = self.encode_images(pixel_values) if len(pixel_values) else \
            torch.zeros(0, self.vit.num_tokens, self.config.rwkv.n_embd, device=self.device)
        continuation = state is not None if continuation is None else continuation
        batch = self.splice([input_ids], [embeds], continuation=continuation)
        logits, state = self.forward_embeds(batch.embeds, batch.spans, state, logits="last")
        return logits[0], state

    @torch.no_grad()
    def generate_greedy(self, input_ids: Sequence[int], images: Sequence = (), max_new_tokens: int = 128,
                        stop_ids: Sequence[int] = (STOP_TOKEN_INDEX, END_OF_TEXT)) -> list[int]:
        logits, state = self.prefill(input_ids, images)
        out = []
        for _ in range(max_new_tokens):
            token = int(logits.argmax())
            if token in stop_ids:
                break
            out.append(token)
            step, state = self.rwkv(torch.tensor([[token]], device=self.device), state, logits="last")
            logits = step[0]
        return out

    @property
    def max_images(self) -> int | None:
        """Images per conversation this model takes (None: any number); see VisualRWKVConfig.max_images."""
        return self.config.max_images

    def prompt_ids(self, question: str | list, num_images: int) -> list[int]:
        """The generation prompt in this model's format, with one sentinel per image; a conversation
        with more images than the model takes is refused with one clear line (a ValueError)."""
        from .prompts import build_inference_prompt, check_image_count

        check_image_count(num_images, self.max_images)
        return build_inference_prompt(question, self.config.image_position, tokenizer=self.tokenizer,
                                      num_images=num_images, prompt_format=self.config.prompt_format)

    def chat(self, image, question: str | list, max_new_tokens: int = 128) -> str:
        """Greedy answer to `question` about `image` (a path, bytes or PIL image; a list of them, in
        order, for several images where the model takes them; None or [] for text only).

        `question` may also be a list of (question, answer) pairs followed by the new question.
        """
        images = [] if image is None else list(image) if isinstance(image, (list, tuple)) else [image]
        ids = self.prompt_ids(question, len(images))
        tokens = self.generate_greedy(ids, images, max_new_tokens)
        return self.tokenizer.decode(tokens).split("\n\n")[0].strip()

    # ---- checkpoints ------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, dtype: str | torch.dtype | None = None,
                        repo_id: str | None = None) -> None:
        """config.json + model.safetensors (everything, the vision tower included), written atomically,
        and a model card (README.md, naming `repo_id` if given): a folder ready for the Hub.
        `dtype` (float): the LM's large matrices and the vision side in it, the rest of the LM fp32
        (rwkv/precision.py); a quantized LM is written as it is (codes and scales)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict()
        config["vision"] = portable_vision_config(self.vit, self.config.vision).to_dict()
        lm = precision.stored_state_dict(self.rwkv, dtype, prefix="rwkv.")
        tensors = {}
        for k, v in self.state_dict().items():
            if k.startswith("state_tuning."):  # a state travels in its own file (adapters/state.py)
                continue
            if k in lm:
                v = lm[k]
            elif dtype is not None and v.is_floating_point():
                v = v.to(precision.float_dtype(dtype))
            tensors[k] = v.detach().contiguous().cpu()
        metadata = {"format": "pt"}
        if precision.current_precision(self.rwkv) in precision.QUANTIZED:
            metadata["quantization"] = json.dumps(precision.quantization_info(self.rwkv))
        atomic_save_file(lambda tmp: save_file(tensors, tmp, metadata=metadata), directory / WEIGHTS_NAME)
        with atomic_write(directory / CONFIG_NAME, "w") as f:
            json.dump(config, f, indent=2)
        hub.write_model_card(directory, config, repo_id)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                    dtype: torch.dtype | None = None, commit_message: str = "Upload VisualRWKV model",
                    token: str | None = None) -> str:
        """Save (as `save_pretrained`, the card naming `repo_id`) and upload to the Hub; returns the commit URL."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, dtype=dtype, repo_id=repo_id)
            return hub.upload_folder(Path(folder), repo_id, private=private, revision=revision,
                                     commit_message=commit_message, token=token)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: str | torch.dtype | None = None,
                        device: str | torch.device = "cpu", *, revision: str | None = None,
                        filename: str | None = None, download: bool = False,
                        adapter: str | os.PathLike | None = None,
                        state: str | os.PathLike | None = None) -> "VisualRWKV":
        """Our directory format, an official full `VisualRWKV-v060-*.pth`, or an exported
        `*_rwkv.pth` (with its `*_visual.pth` beside it); given by path, by a shipped model's name
        ("tiny"), or by Hub id (`org/name[@revision][/file]`, read from the huggingface_hub cache and
        downloaded only with `download=True`; see visualrwkv.hub).

        `dtype`: a torch float dtype or one of `precision.PRECISIONS`: the LM's large matrices in it
        (int8/int4: quantized, from a float file on load), the rest of the LM fp32, the vision tower and
        projector in the float dtype (fp32 for int8/int4); None: float32, or a quantized file's format.

        `adapter`: a LoRA adapter folder (PEFT format), merged into the float weights before `dtype`
        applies; `state`: a state-tuning file, the initial state of every sequence (adapters/)."""
        path = hub.resolve_model(path, revision=revision, filename=filename, download=download)
        lm_sd: dict[str, Tensor] = {}
        if path.is_dir():
            config_path = path / CONFIG_NAME
            if not config_path.is_file():
                from .train.checkpoint import is_step_checkpoint, load_step_model

                if is_step_checkpoint(path):  # a training run's step-N folder
                    model = _with_adapters(load_step_model(path), adapter, state)
                    return model.set_precision(precision.resolve(dtype, {})).to(device=device).eval()
                raise FileNotFoundError(f"{path} has no {CONFIG_NAME}: not a visualrwkv model directory")
            weights = path / WEIGHTS_NAME
            shapes = read_tensor_shapes(weights)  # the header alone
            try:
                config = VisualRWKVConfig.from_dict(json.loads(config_path.read_text()))
                with torch.device("meta"):
                    skeleton = cls(config)
            except (ValueError, TypeError, AttributeError, RecursionError) as e:
                raise ValueError(f"{config_path}: invalid config: {e}") from None
            with torch.device("meta"):  # quantized matrices, where the file holds codes and scales
                precision.prepare_for_state_dict(skeleton.rwkv, strip_prefix(shapes, "rwkv."), str(weights))
            # the config's sizes checked against the file's before any memory is allocated
            expected = {k: v.shape for k, v in skeleton.state_dict().items()}
            _load_strict(skeleton, shapes, f"{weights} (with {CONFIG_NAME})", expected)
            model = cls(config)
            sd = read_state_dict(weights)
            lm_sd = strip_prefix(sd, "rwkv.")
            precision.prepare_for_state_dict(model.rwkv, lm_sd, str(weights))
            _load_strict(model, sd, str(weights), expected)
        else:
            from .official import import_official  # noqa: PLC0415 (it builds this module's classes)

            model = import_official(path)
        model = _with_adapters(model, adapter, state)
        return model.set_precision(precision.resolve(dtype, lm_sd)).to(device=device).eval()

    def set_precision(self, dtype: str | torch.dtype) -> "VisualRWKV":
        """The LM's large matrices in `dtype` (a float dtype, int8 or int4), the rest of the LM fp32, the
        vision tower and projector in the float dtype (fp32 for int8/int4); in place (rwkv/precision.py)."""
        name = precision.precision_name(dtype)
        self.vit.to(precision.float_dtype(name))
        self.proj.to(precision.float_dtype(name))
        precision.set_precision(self.rwkv, name)
        return self


def _with_adapters(model: VisualRWKV, adapter, state) -> VisualRWKV:
    """`model` with a LoRA adapter merged into its weights and/or an initial state attached."""
    if adapter is not None:
        from .adapters.lora import adapter_digest, load_lora, merge_lora

        if precision.current_precision(model.rwkv) in precision.QUANTIZED:
            raise ValueError(f"--adapter {adapter}: the model is stored quantized; merge the adapter into its "
                             "float weights (`visualrwkv merge`), then quantize")
        merge_lora(load_lora(model, adapter))
        model.adapter_tag += f"+adapter:{adapter_digest(adapter)}"
    if state is not None:
        from .adapters.state import load_state

        model.state_tuning = load_state(state, model.config.rwkv)
    return model


def _load_strict(model: nn.Module, sd: dict[str, Tensor], source: str, expected: dict | None = None) -> None:
    """Load `sd` into `model`, or name every key that is missing, unexpected or of the wrong shape.
    `expected`: the model's state-dict shapes where already known (from a meta skeleton: a quantized
    model's state dict rebuilds every matrix's codes from its tiles)."""
    own = expected if expected is not None else {k: v.shape for k, v in model.state_dict().items()}
    optional = {k for k in own if k.endswith("position_ids")}
    missing = sorted(set(own) - set(sd) - optional)
    unexpected = sorted(k for k in set(sd) - set(own) if not k.endswith("position_ids"))
    wrong = [f"{k}: {tuple(sd[k].shape)} in file, expected {tuple(own[k])}"
             for k in own if k in sd and sd[k].shape != own[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{source} does not match the model: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}, wrong shapes {wrong[:8]}")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def _truncation_end(extents: list[tuple[int, int]], ctx_len: int) -> int:
    """The end of the kept head: ctx_len, moved back to the start of an image it would cut in half."""
    for a, z in extents:
        if a < ctx_len < z:
            return a
    return ctx_len


def portable_vision_config(encoder: nn.Module, config: VisionConfig) -> VisionConfig:
    """A vision config that rebuilds `encoder` without its original files (weights come from the checkpoint)."""
    if config.kind == "tiny":
        return VisionConfig("tiny", tiny=encoder.config, dtype=config.dtype)
    if config.kind == "stack":
        parts = {name: portable_vision_config(part, getattr(config, name) or VisionConfig(name, hf_config={}))
                 for name, part in encoder.components()}
        return VisionConfig("stack", dtype=config.dtype, **parts)
    hf_config = {k: v for k, v in encoder.hf_model.config.to_dict().items()
                 if k not in ("transformers_version", "architectures", "_name_or_path", "model_type", "torch_dtype", "dtype")}
    return VisionConfig(config.kind, hf_config=hf_config, image_size=config.image_size, grid_size=config.grid_size,
                        dtype=config.dtype)

"""The RWKV language model: RWKV-6 "Finch" (SPEC §2) and RWKV-7 "Goose" (§3), one set of weights run three ways:

- parallel over a whole sequence (training, prefill) with the chunked WKV,
- recurrently, one token per call (decoding), and
- chunked prefill that continues from a given state.

All three are the same `forward`; `wkv6`/`wkv7` pick the kernel. The two generations are one model with
two kinds of time-mix and channel-mix (RWKV-7's in rwkv/rwkv7.py), chosen by `RWKVConfig.version`.
Parameter names follow the official checkpoints (`blocks.{l}.att.time_maa_x`, `blocks.{l}.att.x_r`, …)
so state dicts load without renaming.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..ops import cpu_kernels
from ..ops.linear import Linear, rows_matmul
from ..ops.quant import QuantizedLinear
from ..ops.wkv6 import wkv6
from .compiled_step import CompiledStep
from .layers import HEAD_SIZE_DIVISOR
from .layers import shifted as _shifted
from .rwkv7 import ChannelMix7, TimeMix7, reset_rwkv7_block

MAX_CONFIG_SIZE = 2**20  # any RWKVConfig size (the largest real one: vocab 65536, C 7168)
MAX_LAYERS = 1024  # the largest real RWKV has 61; building a model is linear in layers
VERSIONS = (6, 7)


def _rank(factor: float, power: float, width: int) -> int:
    """The RWKV-7 trainer's suggested LoRA rank (SPEC §3.2): max(32, round(factor·C^power / 32)·32)."""
    return max(32, int(round(factor * width**power / 32)) * 32)


@dataclass
class RWKVConfig:
    """Sizes of an RWKV-6 (`version` 6) or RWKV-7 (7) model; a 0 means the generation's default.
    Checkpoints set every size from their tensor shapes (rwkv/checkpoint.py), never from these defaults."""

    n_embd: int
    n_layer: int
    vocab_size: int = 65536
    head_size: int = 64
    dim_ffn: int = 0  # 0: RWKV-6 int(3.5·C)//32·32; RWKV-7 4·C
    mix_rank: int = 0  # RWKV-6 ddlerp LoRA; 0: 32, or 64 when C >= 4096
    decay_rank: int = 0  # decay LoRA; 0: RWKV-6 64 (128 when C >= 4096); RWKV-7 max(32, round(1.8·√C/32)·32)
    version: int = 6
    a_rank: int = 0  # RWKV-7 in-context-rate LoRA; 0: as decay_rank's formula
    value_rank: int = 0  # RWKV-7 value-residual LoRA; 0: max(32, round(1.3·√C/32)·32)
    gate_rank: int = 0  # RWKV-7 gate LoRA; 0: max(32, round(0.6·C^0.8/32)·32)
    # RWKV-6 only, for ablations (paper Tab. 4): the decay is `time_decay` alone, the same for every
    # token, instead of time_decay + the LoRA of the token (its matrices stay as zeros, untrained)
    static_decay: bool = False

    def __post_init__(self):
        # a config.json is user input: wrong types and absurd sizes are refused before anything is built
        if type(self.static_decay) is not bool:
            raise ValueError(f"RWKVConfig.static_decay must be true or false, got {self.static_decay!r}")
        if self.static_decay and self.version != 6:
            raise ValueError("static_decay is an RWKV-6 option (RWKV-7's decay is always data-dependent)")
        for f in fields(self):
            if f.name == "static_decay":
                continue
            value = getattr(self, f.name)
            if type(value) is not int or not 0 <= value <= MAX_CONFIG_SIZE:
                raise ValueError(f"RWKVConfig.{f.name} must be an integer in [0, {MAX_CONFIG_SIZE}], got {value!r}")
        if self.version not in VERSIONS:
            raise ValueError(f"RWKVConfig.version must be one of {VERSIONS}, got {self.version!r}")
        if self.n_embd <= 0 or self.n_layer <= 0 or self.vocab_size <= 0 or self.head_size <= 0:
            raise ValueError(f"RWKVConfig needs positive sizes, got {self}")
        if self.n_layer > MAX_LAYERS:
            raise ValueError(f"RWKVConfig.n_layer {self.n_layer} is above {MAX_LAYERS}: not a real model")
        if self.n_embd % self.head_size:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of head_size {self.head_size}")
        C = self.n_embd
        if self.version == 6:
            if self.a_rank or self.value_rank or self.gate_rank:
                raise ValueError("a_rank, value_rank and gate_rank are RWKV-7 sizes; this config is RWKV-6")
            big = C >= 4096
            self.dim_ffn = self.dim_ffn or int(3.5 * C) // 32 * 32
            self.mix_rank = self.mix_rank or (64 if big else 32)
            self.decay_rank = self.decay_rank or (128 if big else 64)
        else:
            if self.mix_rank:
                raise ValueError("mix_rank is an RWKV-6 size (RWKV-7 has no ddlerp); this config is RWKV-7")
            self.dim_ffn = self.dim_ffn or 4 * C
            self.decay_rank = self.decay_rank or _rank(1.8, 0.5, C)
            self.a_rank = self.a_rank or _rank(1.8, 0.5, C)
            self.value_rank = self.value_rank or _rank(1.3, 0.5, C)
            self.gate_rank = self.gate_rank or _rank(0.6, 0.8, C)

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RWKVConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RWKVConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class RWKVState:
    """The recurrent state: per layer the last LN1 output, the WKV matrix and the last LN2 output.

    att_shift, ffn_shift: [L, B, C] (model dtype); wkv: [L, B, H, N, N] fp32, indexed [head, key, value]
    for RWKV-6 and [head, value, key] for RWKV-7 (each as the `rwkv` package holds it).
    Constant size whatever the sequence length. Treated as a value: model calls return new states.
    """

    att_shift: Tensor
    wkv: Tensor
    ffn_shift: Tensor

    @classmethod
    def zeros(cls, config: RWKVConfig, batch_size: int, device=None, dtype=torch.float32) -> "RWKVState":
        L, C, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
        return cls(
            att_shift=torch.zeros(L, batch_size, C, device=device, dtype=dtype),
            wkv=torch.zeros(L, batch_size, H, N, N, device=device, dtype=torch.float32),
            ffn_shift=torch.zeros(L, batch_size, C, device=device, dtype=dtype),
        )

    @classmethod
    def from_layers(cls, layers: list[tuple[Tensor, Tensor, Tensor]]) -> "RWKVState":
        att, wkv, ffn = zip(*layers)
        return cls(torch.stack(att), torch.stack(wkv), torch.stack(ffn))

    def layer(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.att_shift[i], self.wkv[i], self.ffn_shift[i]

    @property
    def batch_size(self) -> int:
        return self.wkv.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.att_shift, self.wkv, self.ffn_shift))

    def clone(self) -> "RWKVState":
        return RWKVState(self.att_shift.clone(), self.wkv.clone(), self.ffn_shift.clone())

    def detach(self) -> "RWKVState":
        return RWKVState(self.att_shift.detach(), self.wkv.detach(), self.ffn_shift.detach())

    def to(self, device=None, dtype=None) -> "RWKVState":
        return RWKVState(self.att_shift.to(device, dtype), self.wkv.to(device), self.ffn_shift.to(device, dtype))

    def select(self, index) -> "RWKVState":
        """The states of some batch rows (an int, a list of ints or a LongTensor)."""
        if isinstance(index, int):
            index = [index]
        index = torch.as_tensor(index, device=self.wkv.device)
        return RWKVState(self.att_shift[:, index], self.wkv[:, index], self.ffn_shift[:, index])

    @staticmethod
    def cat(states: list["RWKVState"]) -> "RWKVState":
        """Stack states along the batch: the rows of a batched decode."""
        return RWKVState(
            torch.cat([s.att_shift for s in states], dim=1),
            torch.cat([s.wkv for s in states], dim=1),
            torch.cat([s.ffn_shift for s in states], dim=1),
        )


class TimeMix(nn.Module):
    """RWKV-6 attention replacement: ddlerp token shift, data-dependent decay, WKV, GroupNorm, SiLU gate."""

    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.n_head, self.head_size = H, N
        for name in ("x", "w", "k", "v", "r", "g"):
            setattr(self, f"time_maa_{name}", nn.Parameter(torch.zeros(1, 1, C)))
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, 5 * cfg.mix_rank))
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, cfg.mix_rank, C))
        self.time_decay = nn.Parameter(torch.zeros(1, 1, C))
        self.static_decay = cfg.static_decay
        if cfg.static_decay:
            # no decay LoRA: zero buffers keep the layout every other path reads (the compiled step,
            # quantization), where a zero LoRA adds exactly nothing; not saved, never trained
            self.register_buffer("time_decay_w1", torch.zeros(C, cfg.decay_rank), persistent=False)
            self.register_buffer("time_decay_w2", torch.zeros(cfg.decay_rank, C), persistent=False)
        else:
            self.time_decay_w1 = nn.Parameter(torch.zeros(C, cfg.decay_rank))
            self.time_decay_w2 = nn.Parameter(torch.zeros(cfg.decay_rank, C))
        self.time_faaaa = nn.Parameter(torch.zeros(H, N))
        self.receptance = Linear(C, C)
        self.key = Linear(C, C)
        self.value = Linear(C, C)
        self.gate = Linear(C, C)
        self.output = Linear(C, C)
        self.ln_x = nn.GroupNorm(H, C, eps=1e-5 * HEAD_SIZE_DIVISOR**2)

    def forward(self, x: Tensor, shift: Tensor | None, wkv_state: Tensor | None):
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        r, k, v, g, log_w = self._projections(x, _shifted(x, shift) - x)

        def heads(t):
            return t.view(B, T, H, N)

        y, wkv_state = wkv6(heads(r), heads(k), heads(v), heads(log_w), self.time_faaaa, wkv_state)
        y = F.group_norm(y.reshape(B * T, C), H, self.ln_x.weight.float(), self.ln_x.bias.float(), self.ln_x.eps)
        out = self.output(y.view(B, T, C).to(x.dtype) * g)
        return out, x[:, -1], wkv_state

    def _projections(self, x: Tensor, dx: Tensor):
        """r, k, v, SiLU(g) and log w from the ddlerp-mixed inputs. Each mixed input is made just
        before its projection and dropped after it, so a long prefill holds one of them at a time."""
        B, T, C = x.shape
        # the five LoRA slots in the order (w, k, v, r, g)
        m = torch.tanh(rows_matmul(x + dx * self.time_maa_x, self.time_maa_w1)).view(B * T, 5, -1).transpose(0, 1)
        m = torch.bmm(m, self.time_maa_w2).view(5, B, T, C)

        def mixed(slot: int, maa: Tensor) -> Tensor:
            return x + dx * (maa + m[slot])

        log_w = self.log_decay(mixed(0, self.time_maa_w))
        k = self.key(mixed(1, self.time_maa_k))
        v = self.value(mixed(2, self.time_maa_v))
        r = self.receptance(mixed(3, self.time_maa_r))
        g = F.silu(self.gate(mixed(4, self.time_maa_g)))
        return r, k, v, g, log_w

    def log_decay(self, xw: Tensor) -> Tensor:
        """log w per token [B, T, C] (fp32): from the token's own input through the decay LoRA, or,
        with `static_decay`, `time_decay` alone, the same for every token."""
        if self.static_decay:
            return (-torch.exp(self.time_decay.float())).expand(*xw.shape[:2], -1)
        w_raw = self.time_decay + rows_matmul(torch.tanh(rows_matmul(xw, self.time_decay_w1)), self.time_decay_w2)
        return -torch.exp(w_raw.float())


class ChannelMix(nn.Module):
    """RWKV-6 feed-forward: token shift, squared ReLU, sigmoid receptance gate."""

    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        C = cfg.n_embd
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = Linear(C, cfg.dim_ffn)
        self.receptance = Linear(C, C)
        self.value = Linear(cfg.dim_ffn, C)

    def forward(self, x: Tensor, shift: Tensor | None):
        dx = _shifted(x, shift) - x
        # the wide [T, dim_ffn] activation is made and squared once (relu_ on the product's own
        # output: nothing saves it for the backward), and dropped before the gate is computed
        value = self.value(torch.relu_(self.key(x + dx * self.time_maa_k)).square())
        return torch.sigmoid(self.receptance(x + dx * self.time_maa_r)) * value, x[:, -1]


class Block(nn.Module):
    """Pre-LN residual block (ln0 first at layer 0) around the time-mix and channel-mix of `cfg.version`."""

    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        self.layer_id = layer_id
        self.version = cfg.version
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMix7(cfg, layer_id) if cfg.version == 7 else TimeMix(cfg)
        self.ffn = ChannelMix7(cfg) if cfg.version == 7 else ChannelMix(cfg)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor, Tensor] | None = None, v_first: Tensor | None = None):
        """x [B,T,C]; state = (att_shift [B,C], wkv [B,H,N,N], ffn_shift [B,C]) or None (zeros); v_first:
        RWKV-7's value residual [B,T,C] from layer 0 (None at layer 0 and for RWKV-6).
        Returns (x, the new layer state, v_first for the next block)."""
        att_shift, wkv_state, ffn_shift = state if state is not None else (None, None, None)
        if self.layer_id == 0:
            x = self.ln0(x)
        if self.version == 7:
            dx, att_shift, wkv_state, v_first = self.att(self.ln1(x), att_shift, wkv_state, v_first)
        else:
            dx, att_shift, wkv_state = self.att(self.ln1(x), att_shift, wkv_state)
        x = x + dx
        dx, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + dx, (att_shift, wkv_state, ffn_shift), v_first


LogitsMode = Literal["all", "last", "none"]


class RWKV(nn.Module):
    """`logits, state = lm(tokens, state=None)` with tokens LongTensor [B, T] (or embeddings [B, T, C])."""

    # Positions a prompt goes through the blocks at a time outside autograd (run_blocks,
    # VisualRWKV.hidden_states): enough that the products stay matrix-bound, few enough that a long
    # prompt's activations stay a few tens of MiB. None picks by the weights (`segment_length`): 512
    # positions over float weights (against 1024 it halved a 4K prefill's memory above the weights,
    # +215 -> +117 MiB at C768, for 2-3% of its speed), 1024 over quantized ones, which every segment
    # dequantizes once more (int4 prefill of 1K prompts measured 18% slower in 512s). An int fixes it.
    prefill_segment: int | None = None

    def __init__(self, config: RWKVConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = Linear(config.n_embd, config.vocab_size)
        self.gradient_checkpointing = False
        self.compiled_step: CompiledStep | None = None  # compile_step()
        self.reset_parameters()

    @property
    def device(self) -> torch.device:
        return self.emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The activations' and the carried shifts' dtype: fp32 unless the whole model was cast
        (large matrices may be stored reduced or quantized, see rwkv/precision.py)."""
        return self.ln_out.weight.dtype

    def embed(self, tokens: Tensor) -> Tensor:
        if tokens.dtype != torch.long:
            raise TypeError(f"token ids must be a LongTensor, got {tokens.dtype}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            bad = tokens[(tokens < 0) | (tokens >= self.config.vocab_size)][0].item()
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        return self.emb(tokens).to(self.dtype)

    def forward(self, inputs: Tensor, state: RWKVState | None = None, *, logits: LogitsMode = "all"):
        """Run the model over `inputs` from `state` (None: a fresh sequence).

        inputs: LongTensor [B, T] of token ids, or a float tensor [B, T, C] of embeddings (image
        vectors spliced into token embeddings). Returns (logits [B, T, V] | [B, V] for "last" | None,
        the state after the last position). `state` itself is never modified.
        """
        x = self.embed(inputs) if not inputs.is_floating_point() else inputs.to(self.dtype)
        if x.dim() != 3 or x.shape[-1] != self.config.n_embd:
            raise ValueError(f"inputs must be [B, T] ids or [B, T, {self.config.n_embd}] embeddings, got {tuple(inputs.shape)}")
        if x.shape[1] == 0:
            raise ValueError("inputs must hold at least one position")
        if state is not None and state.batch_size != x.shape[0]:
            raise ValueError(f"state has batch size {state.batch_size}, inputs have {x.shape[0]}")
        # a decoding step by the compiled C++ step (CPU), else by torch.compile if asked for, else eager;
        # each fast step returns None for what it does not take
        stepped = cpu_kernels.decode_step(self, x, state)
        if stepped is None and self.compiled_step is not None:
            stepped = self.compiled_step(x, state)
        x, new_state = stepped if stepped is not None else self.run_blocks(x, state, last_only=logits != "all")
        return self.project(x.to(self.dtype), logits), new_state  # the C++ step's hidden state is fp32

    def segment_length(self) -> int:
        """Positions a long prompt goes through the blocks at a time (see `prefill_segment`)."""
        if self.prefill_segment is not None:
            return self.prefill_segment
        return 1024 if isinstance(self.head, QuantizedLinear) else 512

    def run_blocks(self, x: Tensor, state: RWKVState | None, last_only: bool = False) -> tuple[Tensor, RWKVState]:
        """Embeddings [B, T, C] through every block: (the last hidden states [B, T, C], or [B, 1, C] with
        `last_only`; the new state). Outside autograd a long input goes `segment_length()` positions at a
        time through all the blocks, carrying the state: the same computation, with the activations of
        one segment whatever the length."""
        segment = self.segment_length()
        if torch.is_grad_enabled() or x.shape[1] <= segment:
            hidden, state = self._run_blocks(x, state)
            return (hidden[:, -1:] if last_only else hidden), state
        hidden = []
        for part in x.split(segment, 1):
            h, state = self._run_blocks(part, state)
            hidden = [h[:, -1:]] if last_only else hidden + [h]
        return torch.cat(hidden, 1), state

    def _run_blocks(self, x: Tensor, state: RWKVState | None) -> tuple[Tensor, RWKVState]:
        layers, v_first = [], None
        for i, block in enumerate(self.blocks):
            x, layer_state, v_first = self.run_block(block, x, state.layer(i) if state is not None else None, v_first)
            layers.append(layer_state)
        return x, RWKVState.from_layers(layers)

    def run_block(self, block: Block, x: Tensor, layer_state, v_first: Tensor | None = None):
        """One block, under gradient checkpointing when training asks for it: (x, layer state, v_first)."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, layer_state, v_first, use_reentrant=False)
        return block(x, layer_state, v_first)

    def project(self, x: Tensor, logits: LogitsMode = "all") -> Tensor | None:
        """ln_out + head over the final hidden states [B, T, C]."""
        if logits == "none":
            return None
        if logits == "last":
            x = x[:, -1]
        elif logits != "all":
            raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
        return self.head(self.ln_out(x))

    def compile_step(self, mode: str | None = None) -> "RWKV":
        """Decode with the PyTorch step under `torch.compile` wherever the compiled CPU step does not
        apply (see rwkv/compiled_step.py); `mode` is torch.compile's. Prompts and training stay eager."""
        self.compiled_step = CompiledStep(self, mode)
        return self

    def new_state(self, batch_size: int = 1) -> RWKVState:
        return RWKVState.zeros(self.config, batch_size, self.device, self.dtype)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The initialisation of the official trainers (RWKV-6: SPEC §2.4), for models trained from scratch."""
        cfg = self.config
        C, L = cfg.n_embd, cfg.n_layer
        if cfg.version == 7:
            for layer_id, block in enumerate(self.blocks):
                reset_rwkv7_block(block.att, block.ffn, layer_id, L)
            return
        ddd = torch.arange(C, dtype=torch.float32) / C
        n = torch.arange(C, dtype=torch.float32)
        for layer_id, block in enumerate(self.blocks):
            ratio0 = layer_id / max(L - 1, 1)
            ratio1 = 1.0 - layer_id / L
            att, ffn = block.att, block.ffn
            for name in ("x", "w", "k"):
                getattr(att, f"time_maa_{name}").copy_((1 - ddd.pow(ratio1)).view(1, 1, C))
            att.time_maa_v.copy_((1 - (ddd.pow(ratio1) + 0.3 * ratio0)).view(1, 1, C))
            att.time_maa_r.copy_((1 - ddd.pow(0.5 * ratio1)).view(1, 1, C))
            att.time_maa_g.copy_((1 - ddd.pow(0.5 * ratio1)).view(1, 1, C))
            att.time_maa_w1.zero_()
            att.time_maa_w2.uniform_(-0.01, 0.01)
            att.time_decay.copy_((-6 + 5 * (n / max(C - 1, 1)).pow(0.7 + 1.3 * ratio0)).view(1, 1, C))
            att.time_decay_w1.zero_()
            att.time_decay_w2.uniform_(-0.01, 0.01)  # drawn either way: the other tensors' draws stay the same
            if cfg.static_decay:
                att.time_decay_w2.zero_()
            u = ratio0 * (1 - n / max(C - 1, 1)) + ((n + 1) % 3 - 1) * 0.1
            att.time_faaaa.copy_(u.view(cfg.n_head, cfg.head_size))
            ffn.time_maa_k.copy_((1 - ddd.pow(ratio1)).view(1, 1, C))
            ffn.time_maa_r.copy_((1 - ddd.pow(ratio1)).view(1, 1, C))

    @torch.no_grad()
    def use_gemv_layout(self) -> "RWKV":
        """Store every projection matrix input-major: the same [out, in] tensors, with [in, out] memory.

        A one-row product (decoding) streams that layout much faster on CPU: the BLAS reads the
        65536-row head at ~20 GB/s instead of ~12, and each thread can stream its own block of input
        rows (a C768/L12 decode step: ~50 ms in [out, in] memory, ~45 with the BLAS on this layout,
        ~33 split across threads by `ops.linear`, ~22 by the compiled step of `ops.cpu_kernels`).
        Values and results are unchanged up to summation order. For inference: FSDP and the fused
        optimizer expect contiguous parameters, so training keeps the default layout.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.is_contiguous() and module.weight.dim() == 2:
                module.weight.data = module.weight.data.t().contiguous().t()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["RWKV", "RWKVConfig", "RWKVState", "Block", "TimeMix", "ChannelMix", "TimeMix7", "ChannelMix7"]

"""llama.cpp as a peer of `visualrwkv bench lm`: the same RWKV-6 weights as GGUF, run through libllama.

Optional: used when `llama_cpp` (llama-cpp-python, built from its source) imports, else skipped with a
note. Nothing here is a dependency of the package; the GGUF is written with `gguf` (the `bench` extra).

- **Weights**: our RWKV-6 (official key names) → a GGUF of architecture "rwkv6", laid out as llama.cpp's
  own converter lays out the HF `Rwkv6ForCausalLM` layout: LoRA matrices transposed to [out, in], the
  five token-shift mixes fused, 1-D tensors squeezed, everything F32. The F16/BF16/Q8_0/Q4_0 files are
  made from it by llama.cpp's own quantizer (`llama_model_quantize`, `pure`: every matrix it quantizes
  gets the one type; it keeps the LoRA, mix and 1-D tensors F32, as its converter does).
- **Vocabulary**: the model is fed token ids, so the file carries placeholder token texts ("<s>",
  "[T1]", …): llama.cpp needs a vocabulary to load, not the World one to run.
- **Runs**: one context per file, 1 sequence, `n_threads` = torch's, through the low-level ctypes API, in
  our process (its OpenMP is the libgomp torch loaded, so both sides share the threads).
- **AMX**: on a CPU with Intel AMX, llama.cpp puts Q4_0/Q8_0 matrices in its AMX buffers, whose product
  crashes the process here (ggml_backend_amx_mul_mat, llama.cpp issue #20824; its Q4_0 results there
  are wrong too, PR #16315). There the models load with `use_extra_bufts` off: its plain CPU kernels,
  and no repacked Q4_0 layout either (`AMX_NOTE`, printed with the results).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

import numpy as np
import torch

LLAMA_TYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int8": "Q8_0", "int4": "Q4_0"}
_FTYPES = {"F16": "LLAMA_FTYPE_MOSTLY_F16", "BF16": "LLAMA_FTYPE_MOSTLY_BF16", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
           "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}


AMX_NOTE = ("llama.cpp's extra buffer types are off: this CPU has AMX, whose llama.cpp product crashes "
            "(issue #20824); its plain CPU kernels ran, without the repacked Q4_0 layout")


def cpu_has_amx() -> bool:
    """Whether llama.cpp's CPU backend (loaded with libllama) would use AMX here."""
    lib_dir = Path(import_llama()[0].__file__).parent / "lib"
    for path in sorted(lib_dir.glob("libggml-cpu*.so*")):
        with contextlib.suppress(OSError, AttributeError):
            return bool(ctypes.CDLL(str(path)).ggml_cpu_has_amx_int8())
    return False


def import_llama():
    """The llama_cpp ctypes module, or None (with the reason) where it does not import."""
    try:
        import llama_cpp.llama_cpp as llama  # noqa: PLC0415
        import gguf  # noqa: F401, PLC0415
    except Exception as error:  # noqa: BLE001 (a broken build raises OSError etc., not only ImportError)
        return None, f"{type(error).__name__}: {error}"
    return llama, None


def _gguf_tensors(sd: dict[str, torch.Tensor], n_layer: int):
    """(gguf name, fp32 numpy array) in llama.cpp's RWKV-6 layout, from official key names."""
    def np32(t):
        return t.detach().float().contiguous().numpy()

    yield "token_embd.weight", np32(sd["emb.weight"])
    yield "token_embd_norm.weight", np32(sd["blocks.0.ln0.weight"])
    yield "token_embd_norm.bias", np32(sd["blocks.0.ln0.bias"])
    yield "output_norm.weight", np32(sd["ln_out.weight"])
    yield "output_norm.bias", np32(sd["ln_out.bias"])
    yield "output.weight", np32(sd["head.weight"])
    same = {"ln1.weight": "attn_norm.weight", "ln1.bias": "attn_norm.bias", "ln2.weight": "attn_norm_2.weight",
            "ln2.bias": "attn_norm_2.bias", "att.time_faaaa": "time_mix_first.weight",
            "att.receptance.weight": "time_mix_receptance.weight", "att.key.weight": "time_mix_key.weight",
            "att.value.weight": "time_mix_value.weight", "att.gate.weight": "time_mix_gate.weight",
            "att.output.weight": "time_mix_output.weight", "att.ln_x.weight": "time_mix_ln.weight",
            "att.ln_x.bias": "time_mix_ln.bias", "ffn.key.weight": "channel_mix_key.weight",
            "ffn.receptance.weight": "channel_mix_receptance.weight", "ffn.value.weight": "channel_mix_value.weight"}
    for i in range(n_layer):
        p, q = f"blocks.{i}.", f"blk.{i}."
        for ours, theirs in same.items():
            yield q + theirs, np32(sd[p + ours])
        yield q + "time_mix_lerp_x.weight", np32(sd[p + "att.time_maa_x"].flatten())
        fused = torch.stack([sd[p + f"att.time_maa_{s}"].reshape(1, 1, -1) for s in "wkvrg"])  # [5, 1, 1, C]
        yield q + "time_mix_lerp_fused.weight", np32(fused)
        yield q + "time_mix_w1.weight", np32(sd[p + "att.time_maa_w1"].t())  # [5R, C]
        yield q + "time_mix_w2.weight", np32(sd[p + "att.time_maa_w2"].permute(0, 2, 1))  # [5, C, R]
        yield q + "time_mix_decay.weight", np32(sd[p + "att.time_decay"].flatten())
        yield q + "time_mix_decay_w1.weight", np32(sd[p + "att.time_decay_w1"].t())  # [D, C]
        yield q + "time_mix_decay_w2.weight", np32(sd[p + "att.time_decay_w2"].t())  # [C, D]
        yield q + "channel_mix_lerp_k.weight", np32(sd[p + "ffn.time_maa_k"].flatten())
        yield q + "channel_mix_lerp_r.weight", np32(sd[p + "ffn.time_maa_r"].flatten())


def write_gguf(model, path: str | os.PathLike) -> None:
    """Our RWKV-6 `model` (any precision; its float values are read) as an F32 GGUF at `path`."""
    import gguf

    from ..rwkv.precision import large_matrices
    from ..ops.quant import QuantizedEmbedding, QuantizedLinear

    cfg = model.config
    sd = dict(model.state_dict())
    for name, m in large_matrices(model):  # quantized matrices: their dequantized values
        if isinstance(m, (QuantizedLinear, QuantizedEmbedding)):
            sd[f"{name}.weight"] = m.dequantize()
    writer = gguf.GGUFWriter(os.fspath(path), "rwkv6")
    writer.add_context_length(1 << 20)  # RWKV has no context limit
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_layer_norm_eps(1e-5)
    writer.add_rescale_every_n_layers(0)
    writer.add_wkv_head_size(cfg.head_size)
    writer.add_time_mix_extra_dim(cfg.mix_rank)
    writer.add_time_decay_extra_dim(cfg.decay_rank)
    writer.add_feed_forward_length(cfg.dim_ffn)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_head_count(0)  # required by llama.cpp, unused by RWKV
    writer.add_tokenizer_model("rwkv")
    writer.add_token_list([b"<s>"] + [f"[T{i}]".encode() for i in range(1, cfg.vocab_size)])
    writer.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (cfg.vocab_size - 1))
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    for name, array in _gguf_tensors(sd, cfg.n_layer):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@contextlib.contextmanager
def _quiet(llama):
    """llama.cpp logs every load at length; keep errors only (the callback must outlive the calls)."""
    @llama.llama_log_callback
    def log(level, text, user_data):  # noqa: ARG001
        if level == 4 and text:  # GGML_LOG_LEVEL_ERROR
            os.write(2, text)

    llama.llama_log_set(log, None)
    try:
        yield
    finally:
        _quiet.keep = log  # the C side may still hold it


def quantize_gguf(llama, src: str | os.PathLike, dst: str | os.PathLike, kind: str) -> None:
    """llama.cpp's own quantizer: every matrix it quantizes in `kind` (F16, BF16, Q8_0, Q4_0)."""
    params = llama.llama_model_quantize_default_params()
    params.ftype = getattr(llama, _FTYPES[kind])
    params.pure = True
    params.nthread = torch.get_num_threads()
    with _quiet(llama):
        failed = llama.llama_model_quantize(os.fspath(src).encode(), os.fspath(dst).encode(), ctypes.byref(params))
    if failed:
        raise RuntimeError(f"llama_model_quantize to {kind} failed")


class LlamaCppModel:
    """One GGUF in one llama.cpp context: `prefill(ids)` from a fresh state, then `step(token)`; both return
    fp32 logits (torch) of the last position, or of every prompt position with `all_logits`."""

    def __init__(self, llama, path: str | os.PathLike, n_ctx: int, n_batch: int, threads: int | None = None):
        self.llama = llama
        threads = threads or torch.get_num_threads()
        with _quiet(llama):
            llama.llama_backend_init()
            mparams = llama.llama_model_default_params()
            mparams.use_extra_bufts = not cpu_has_amx()  # see AMX above
            self.model = llama.llama_model_load_from_file(os.fspath(path).encode(), mparams)
            if not self.model:
                raise RuntimeError(f"llama.cpp could not load {path}")
            cparams = llama.llama_context_default_params()
            cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_seq_max = n_ctx, n_batch, n_batch, 1
            cparams.n_threads = cparams.n_threads_batch = threads
            cparams.no_perf = True
            self.ctx = llama.llama_init_from_model(self.model, cparams)
            if not self.ctx:
                raise RuntimeError("llama.cpp could not create a context")
        self.n_vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(self.model))
        self.batch = llama.llama_batch_init(n_batch, 0, 1)
        self.n_batch, self.pos = n_batch, 0

    def _decode(self, ids: list[int], all_logits: bool) -> torch.Tensor:
        b, n = self.batch, len(ids)
        if not 0 < n <= self.n_batch:
            raise ValueError(f"{n} tokens do not fit a batch of {self.n_batch}")
        for i, token in enumerate(ids):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = token, self.pos + i, 1, 0
            b.logits[i] = 1 if all_logits or i == n - 1 else 0
        b.n_tokens = n
        if self.llama.llama_decode(self.ctx, b):
            raise RuntimeError("llama_decode failed")
        self.pos += n
        rows = n if all_logits else 1
        first = self.llama.llama_get_logits_ith(self.ctx, 0 if all_logits else n - 1)
        values = np.ctypeslib.as_array(first, shape=(rows * self.n_vocab,))
        return torch.from_numpy(values.reshape(rows, self.n_vocab).copy())

    def prefill(self, ids: list[int], all_logits: bool = False) -> torch.Tensor:
        self.llama.llama_memory_clear(self.llama.llama_get_memory(self.ctx), True)
        self.pos = 0
        logits = self._decode(list(ids), all_logits)
        return logits if all_logits else logits[0]

    def step(self, token: int) -> torch.Tensor:
        return self._decode([token], False)[0]

    def close(self) -> None:
        if self.ctx:
            self.llama.llama_batch_free(self.batch)
            self.llama.llama_free(self.ctx)
            self.llama.llama_model_free(self.model)
            self.ctx = self.model = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def build_peers(model, kinds: list[str], folder: str | os.PathLike, n_ctx: int, n_batch: int) -> dict[str, "LlamaCppModel"]:
    """llama.cpp models of `model`'s weights in each of `kinds` (F32, F16, BF16, Q8_0, Q4_0)."""
    llama, _ = import_llama()
    folder = Path(folder)
    f32 = folder / "model-F32.gguf"
    write_gguf(model, f32)
    peers = {}
    for kind in kinds:
        path = f32 if kind == "F32" else folder / f"model-{kind}.gguf"
        if kind != "F32":
            quantize_gguf(llama, f32, path, kind)
        peers[kind] = LlamaCppModel(llama, path, n_ctx, n_batch)
    return peers


def gguf_tensor_types(path: str | os.PathLike) -> dict[str, str]:
    """name → ggml type name of every tensor in a GGUF (to check what a file holds)."""
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(os.fspath(path)).tensors}

"""The two models of `visualrwkv bench vlm`, built in code with random weights and matched sizes.

Both sides get the same CLIP vision tower architecture (an HF `CLIPVisionModel` config), the same
dtype and the same vocabulary; the language models are RWKV-6 (VisualRWKV) and Llama (HF
`LlavaForConditionalGeneration`, LLaVA-1.5 layout: penultimate CLIP layer, CLS dropped, 2-layer
MLP projector). Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..vision.encoders import CLIP_VIT_L14_336, DTYPES

VISION_PRESETS = {
    "L14-336": dict(CLIP_VIT_L14_336),  # the paper's tower: 577 tokens on the VisualRWKV side
    "B16-224": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=224, patch_size=16, projection_dim=512, hidden_act="quick_gelu"),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 image_size=32, patch_size=8, projection_dim=64, hidden_act="quick_gelu"),
}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
BENCH_DTYPES = ("float32", "bfloat16", "int8", "int4")  # int8/int4: our LM only (LLaVA stays float32)
SIDES = ("visualrwkv", "llava")


@dataclass
class VLMBenchConfig:
    vision: str = "L14-336"
    rwkv_n_embd: int = 768
    rwkv_n_layer: int = 12
    llama_hidden: int = 768
    llama_layers: int = 12
    llama_heads: int = 12
    llama_intermediate: int = 2048
    vocab_size: int = 65536
    dtype: str = "float32"
    attn: str = "sdpa"
    device: str = "cpu"
    seed: int = 0
    vision_config: dict = field(init=False)

    def __post_init__(self):
        if self.vision not in VISION_PRESETS:
            raise ValueError(f"vision must be one of {sorted(VISION_PRESETS)}, got {self.vision!r}")
        if self.dtype not in BENCH_DTYPES:
            raise ValueError(f"dtype must be one of {BENCH_DTYPES}, got {self.dtype!r}")
        if self.attn not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn must be one of {ATTN_IMPLEMENTATIONS}, got {self.attn!r}")
        if self.llama_hidden % self.llama_heads:
            raise ValueError(f"llama_hidden {self.llama_hidden} is not a multiple of llama_heads {self.llama_heads}")
        # LLaVA's image placeholder needs a row of the embedding table that text never uses
        # (World text ids end at 65529), so the two sides keep the same vocabulary size.
        if self.vocab_size < 65536:
            raise ValueError(f"vocab_size must be >= 65536 (the World tokenizer's ids), got {self.vocab_size}")
        self.vision_config = dict(VISION_PRESETS[self.vision])

    @property
    def torch_dtype(self) -> torch.dtype:
        """LLaVA's dtype, and our vision side's: the float dtype, float32 for int8/int4 (only our LM is quantized)."""
        return DTYPES.get(self.dtype, torch.float32)

    @property
    def image_token_id(self) -> int:
        return self.vocab_size - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VLMBenchConfig":
        return cls(**{k: v for k, v in d.items() if k != "vision_config"})


def quick_config(**overrides) -> VLMBenchConfig:
    """Tiny sizes for the CI smoke test: seconds per process."""
    sizes = dict(vision="tiny", rwkv_n_embd=128, rwkv_n_layer=2, llama_hidden=128, llama_layers=2, llama_heads=2,
                 llama_intermediate=384)
    return VLMBenchConfig(**(sizes | overrides))


def build_visualrwkv(config: VLMBenchConfig):
    from ..model import VisualRWKV, VisualRWKVConfig
    from ..rwkv.model import RWKVConfig
    from ..testing import random_rwkv6_state_dict
    from ..vision.encoders import VisionConfig

    torch.manual_seed(config.seed)
    model = VisualRWKV(VisualRWKVConfig(
        rwkv=RWKVConfig(n_embd=config.rwkv_n_embd, n_layer=config.rwkv_n_layer, vocab_size=config.vocab_size),
        vision=VisionConfig("clip", hf_config=config.vision_config)))
    model.rwkv.load_state_dict(random_rwkv6_state_dict(config.rwkv_n_embd, config.rwkv_n_layer, config.vocab_size,
                                                       seed=config.seed))
    model = model.set_precision(config.dtype).to(device=config.device).eval()  # rwkv/precision.py
    model.rwkv.use_gemv_layout()
    return model


def llava_config(config: VLMBenchConfig):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    patches = (config.vision_config["image_size"] // config.vision_config["patch_size"]) ** 2
    text = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.llama_hidden,
                       intermediate_size=config.llama_intermediate, num_hidden_layers=config.llama_layers,
                       num_attention_heads=config.llama_heads, num_key_value_heads=config.llama_heads,
                       max_position_embeddings=32768)
    return LlavaConfig(vision_config=CLIPVisionConfig(**config.vision_config).to_dict(), text_config=text.to_dict(),
                       image_token_index=config.image_token_id, image_seq_length=patches,
                       vision_feature_select_strategy="default", vision_feature_layer=-2)


def build_llava(config: VLMBenchConfig):
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(config.seed)
    model = LlavaForConditionalGeneration(llava_config(config))
    model.set_attn_implementation(config.attn)
    # random weights and no tokenizer: nothing may end a generation early or pad it
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.to(device=config.device, dtype=config.torch_dtype).eval()


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(config: VLMBenchConfig) -> dict[str, dict[str, int]]:
    """Parameters per side and part, counted on the meta device (no memory, no init time)."""
    from transformers import LlavaForConditionalGeneration

    from ..model import VisualRWKV, VisualRWKVConfig
    from ..rwkv.model import RWKVConfig
    from ..vision.encoders import VisionConfig

    with torch.device("meta"):
        ours = VisualRWKV(VisualRWKVConfig(
            rwkv=RWKVConfig(n_embd=config.rwkv_n_embd, n_layer=config.rwkv_n_layer, vocab_size=config.vocab_size),
            vision=VisionConfig("clip", hf_config=config.vision_config)))
        llava = LlavaForConditionalGeneration(llava_config(config))
    return {
        "visualrwkv": {"total": _count(ours), "language_model": _count(ours.rwkv), "vision": _count(ours.vit),
                       "projector": _count(ours.proj)},
        "llava": {"total": _count(llava),
                  "language_model": _count(llava.model.language_model) + _count(llava.lm_head),
                  "vision": _count(llava.model.vision_tower), "projector": _count(llava.model.multi_modal_projector)},
    }

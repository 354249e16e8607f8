"""VisualRWKV: a visual language model on RWKV — exact, tested, fast on any device.

    from visualrwkv import VisualRWKV, load_rwkv, Tokenizer
    model = VisualRWKV.from_pretrained("tiny")        # the shipped model; or a path, an official .pth,
                                                      # or a Hub id: "org/name[@revision][/file.pth]"
    answer = model.chat("photo.jpg", "What is in the picture?")
    lm = load_rwkv("RWKV-x060-World-1B6-v2.1.pth")    # the language model alone
    logits, state = lm(tokens)                        # tokens: LongTensor [B, T]
    logits, state = lm(next_tokens, state)
"""

from importlib import import_module

__version__ = "0.1.0"

# Exports are imported on first use, so that `visualrwkv --help` and light tools do not pay for torch.
_EXPORTS = {
    "VisualRWKV": "visualrwkv.model",
    "VisualRWKVConfig": "visualrwkv.model",
    "load_rwkv": "visualrwkv.rwkv.checkpoint",
    "save_rwkv": "visualrwkv.rwkv.checkpoint",
    "RWKV": "visualrwkv.rwkv.model",
    "RWKVConfig": "visualrwkv.rwkv.model",
    "RWKVState": "visualrwkv.rwkv.model",
    "Tokenizer": "visualrwkv.rwkv.tokenizer",
    "TINY_MODEL": "visualrwkv.hub",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'visualrwkv' has no attribute {name!r}")

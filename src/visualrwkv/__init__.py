"""VisualRWKV: a visual language model on RWKV — exact, tested, fast on any device.

    from visualrwkv import load_rwkv, Tokenizer
    lm = load_rwkv("RWKV-x060-World-1B6-v2.1.pth")
    logits, state = lm(tokens)            # tokens: LongTensor [B, T]
    logits, state = lm(next_tokens, state)
"""

from .rwkv.checkpoint import load_rwkv, save_rwkv
from .rwkv.model import RWKV, RWKVConfig, RWKVState
from .rwkv.tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = ["load_rwkv", "save_rwkv", "RWKV", "RWKVConfig", "RWKVState", "Tokenizer", "__version__"]

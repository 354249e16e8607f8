"""VisualRWKV: a visual language model on RWKV."""

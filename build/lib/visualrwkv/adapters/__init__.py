"""Parameter-efficient fine-tuning: LoRA adapters through the `peft` library (lora.py) and RWKV
state tuning, a trained initial recurrent state (state.py). Both train with the base model frozen
and are saved alone, small, beside it; `visualrwkv merge` (cli.py) folds an adapter into a model."""

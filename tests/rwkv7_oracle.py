"""Run the `rwkv` package's RWKV-7 ("cpu fp32") on a prompt and greedy steps; a subprocess of
test_rwkv7_oracle.py, because the package picks its model class at import time (RWKV_V7_ON).

    python rwkv7_oracle.py MODEL.pth PROMPT.pt STEPS OUT.pt
"""

import os
import sys

os.environ["RWKV_V7_ON"] = "1"
os.environ.setdefault("RWKV_JIT_ON", "1")

import torch  # noqa: E402
from rwkv.model import RWKV  # noqa: E402


def main(model_path: str, prompt_path: str, steps: str, out_path: str) -> None:
    torch.set_num_threads(1)
    model = RWKV(model=model_path[: -len(".pth")], strategy="cpu fp32")
    prompt = torch.load(prompt_path).tolist()
    prompt_logits, state = model.forward(prompt, None, full_output=True)
    token, tokens, step_logits = int(prompt_logits[-1].argmax()), [], []
    for _ in range(int(steps)):
        tokens.append(token)
        logits, state = model.forward([token], state)
        step_logits.append(logits.clone())
        token = int(logits.argmax())
    torch.save({"prompt_logits": prompt_logits, "tokens": torch.tensor(tokens), "step_logits": torch.stack(step_logits),
                "state": [s.clone() for s in state]}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])

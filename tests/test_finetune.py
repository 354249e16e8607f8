"""The finetune preset: what it fits to the data and the model, epochs as true passes, and a real
fine-tune of the shipped model on 16 hand-made rows through `visualrwkv train --config finetune`."""

import json
import math
from itertools import islice
from types import SimpleNamespace

import pytest
from PIL import Image, ImageDraw

from visualrwkv.cli import main
from visualrwkv.data.shapes import generate_shapes_dataset
from visualrwkv.hub import TINY_MODEL
from visualrwkv.model import VisualRWKV
from visualrwkv.train.config import FITTED, TrainConfig, fit, resolve
from visualrwkv.train.trainer import Trainer

WARM = ("red", "orange", "yellow", "pink")
COOL = ("blue", "green", "cyan", "purple")


def warm_or_cool_dataset(folder):
    """16 rows a person could write by hand: a colour tile with a white shape, "warm or cool?"."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for color in WARM + COOL:
        for shape in ("circle", "square"):
            image = Image.new("RGB", (64, 64), color)
            draw = ImageDraw.Draw(image)
            (draw.ellipse if shape == "circle" else draw.rectangle)((20, 20, 44, 44), fill="white")
            image.save(folder / "images" / f"{color}_{shape}.png")
            rows.append({"id": f"{color}_{shape}", "image": f"images/{color}_{shape}.png", "conversations": [
                {"from": "human", "value": "<image>\nIs this picture warm or cool?"},
                {"from": "gpt", "value": "warm" if color in WARM else "cool"}]})
    (folder / "data.json").write_text(json.dumps(rows, indent=1))
    return folder / "data.json", rows


def model_config(n_embd=128, ctx_len=256, image_position="middle"):
    return SimpleNamespace(rwkv=SimpleNamespace(n_embd=n_embd), ctx_len=ctx_len, image_position=image_position)


@pytest.mark.parametrize("rows, world, expected", [
    (16, 1, dict(micro_batch_size=8, grad_accum=1, epochs=20.0, warmup_steps=4)),
    (100, 1, dict(micro_batch_size=8, grad_accum=4, epochs=4.0, warmup_steps=1)),
    (10_000, 1, dict(micro_batch_size=8, grad_accum=8, epochs=3.0, warmup_steps=10)),
    (10_000, 4, dict(micro_batch_size=8, grad_accum=2, epochs=3.0, warmup_steps=10)),
    (1, 1, dict(micro_batch_size=1, grad_accum=1, epochs=100.0, warmup_steps=10)),
])
def test_fit_sizes_batch_and_passes_to_the_data(rows, world, expected):
    cfg = TrainConfig(fit_to_data=list(FITTED))
    values = fit(cfg, model_config(), rows, world)
    assert {k: values[k] for k in expected} == expected
    assert values["lr"] == 0.0019531 and values["lr_final"] == 0.00019531  # 0.25 / width 128
    assert values["ctx_len"] == 256 and values["image_position"] == "middle"
    assert cfg.micro_batch_size == expected["micro_batch_size"]  # set on the config too
    assert fit(TrainConfig(fit_to_data=["lr"]), model_config(n_embd=2048)) == {"lr": 0.0001221}


@pytest.mark.parametrize("width", [128, 2048])
def test_adapters_learning_rates(width):
    """LoRA: 5x the fine-tune's 0.25 / width; state tuning: 1.0 falling to 0.01 at any width (the
    width-scaled 0.1 taught the shapes experiment's new question to 10%, 1.0 to 54%)."""
    lora = fit(TrainConfig(adapter="lora", fit_to_data=["lr", "lr_final"]), model_config(n_embd=width))
    assert lora == {"lr": round(1.25 / width, 7), "lr_final": round(round(1.25 / width, 7) / 10, 8)}
    state = fit(TrainConfig(adapter="state", fit_to_data=["lr", "lr_final"]), model_config(n_embd=width))
    assert state == {"lr": 1.0, "lr_final": 0.01}
    assert fit(TrainConfig(adapter="state", lr=0.3, fit_to_data=["lr_final"]), model_config()) == {"lr_final": 0.003}


def test_finetune_preset_fits_only_what_you_did_not_set(tmp_path):
    [cfg] = resolve("finetune", {"data": "mine.json", "lr": "1e-4", "epochs": "2"}, runs_dir=str(tmp_path))
    assert cfg.init == "tiny" and cfg.lr == 1e-4 and cfg.epochs == 2.0
    assert set(cfg.fit_to_data) == set(FITTED) - {"lr", "epochs"}
    [cfg] = resolve("finetune", {"data": "mine.json", "model": "org/name"}, runs_dir=str(tmp_path))
    assert cfg.init == "org/name"  # --model names the model to start from, as in every other command
    with pytest.raises(ValueError, match="--init or --model, not both"):
        resolve("finetune", {"data": "d.json", "model": "a", "init": "b"})
    with pytest.raises(ValueError, match="set --data"):
        resolve("finetune", {})
    with pytest.raises(ValueError, match="cannot be fitted"):
        TrainConfig(fit_to_data=["beta1"])
    with pytest.raises(ValueError, match="--epochs: expected float, got 'many'"):
        resolve("finetune", {"data": "d.json", "epochs": "many"})


def test_an_epoch_is_one_pass_and_a_step_never_spans_two(tmp_path):
    data = tmp_path / "shapes"
    generate_shapes_dataset(data, num_train_images=4, num_test_images=1, image_size=32, seed=3)
    model = {"rwkv": {"n_embd": 64, "n_layer": 1, "vocab_size": 65536},
             "vision": {"kind": "tiny", "tiny": {"image_size": 32, "patch_size": 16, "hidden_size": 32,
                                                 "num_layers": 1, "num_heads": 2}}, "ctx_len": 128}
    cfg = TrainConfig(data=str(data / "stage2.json"), model=model, micro_batch_size=5, grad_accum=2, epochs=2,
                      ctx_len=128, progress=False, length_grouping=False, out_dir=str(tmp_path / "run"))
    trainer = Trainer(cfg)
    n = len(trainer.dataset)
    per_epoch = math.ceil(n / 10)
    assert n % 10 and trainer.total_steps == 2 * per_epoch  # a short last step in each epoch
    steps = list(islice(trainer._steps(), 2 * per_epoch))
    for epoch in (0, 1):
        mine = [s for s in steps if s[1] == epoch]
        assert len(mine) == per_epoch and mine[-1][2] == n
        ids = [i for micro, _, _ in mine for batch in micro for i in batch["ids"]]
        assert sorted(ids) == sorted(r.sample_id for r in trainer.dataset.records)  # every row once


def test_finetune_the_shipped_model_on_16_rows_then_it_answers_them(tmp_path, capsys):
    data, rows = warm_or_cool_dataset(tmp_path / "mine")
    shipped = VisualRWKV.from_pretrained("tiny")
    question = "Is this picture warm or cool?"
    before = [shipped.chat(str(tmp_path / "mine" / r["image"]), question) for r in rows]
    assert sum(a == r["conversations"][1]["value"] for a, r in zip(before, rows)) <= 10  # not known already
    assert main(["train", "--config", "finetune", "--data", str(data), "--out_dir", str(tmp_path / "run"),
                 "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert "fitted to 16 samples and the model: ctx_len 256, image_position middle, lr 0.0019531" in out
    assert "step 40/40" in out and f"model written to {tmp_path / 'run' / 'final'}" in out
    tuned = VisualRWKV.from_pretrained(tmp_path / "run" / "final")
    after = [tuned.chat(str(tmp_path / "mine" / r["image"]), question) for r in rows]
    assert after == [r["conversations"][1]["value"] for r in rows]
    assert TINY_MODEL.is_dir()

"""Training: freezing per stage, learning, DDP equivalence, crash-resume, bad rows."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visualrwkv.data.shapes import generate_shapes_dataset
from visualrwkv.model import VisualRWKV, VisualRWKVConfig
from visualrwkv.train.config import TrainConfig, presets, resolve
from visualrwkv.train.trainer import Trainer, apply_freezing, lr_at

MODEL = {
    "rwkv": {"n_embd": 64, "n_layer": 2, "vocab_size": 65536},
    "vision": {"kind": "tiny", "tiny": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 1,
                                         "num_heads": 2}},
    "ctx_len": 128,
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(out, num_train_images=12, num_test_images=2, image_size=32, seed=1)
    return out


def config(shapes, out_dir, **kw) -> TrainConfig:
    base = dict(data=str(shapes / "stage2.json"), model=MODEL, ctx_len=128, micro_batch_size=4, max_steps=4,
                lr=3e-3, lr_final=3e-3, l2wrap=True, progress=False, length_grouping=False, out_dir=str(out_dir),
                trainable=["rwkv.blocks.*", "rwkv.ln_out.*", "rwkv.head.*", "proj.*", "vit.*"])
    base.update(kw)
    return TrainConfig.from_dict(base)


def final_params(out_dir) -> dict:
    return load_file(str(Path(out_dir) / "final" / "model.safetensors"))


def test_stage_presets_freeze_exactly_what_the_recipe_says():
    model = VisualRWKV(VisualRWKVConfig.from_dict(MODEL))
    stage1, stage2 = presets()["stage1"][0], presets()["stage2"][0]
    trained = apply_freezing(model, stage1["trainable"])
    assert trained == ["proj.weight"]
    assert not model.vit.trainable
    trained = set(apply_freezing(model, stage2["trainable"]))
    names = {n for n, _ in model.named_parameters()}
    frozen = names - trained
    assert frozen == {n for n in names if n.startswith("vit.") or n == "rwkv.emb.weight"}
    assert {"rwkv.head.weight", "rwkv.ln_out.weight", "proj.weight", "rwkv.blocks.1.att.key.weight"} <= trained
    with pytest.raises(ValueError, match="match no parameter"):
        apply_freezing(model, ["nothing.*"])


def test_presets_resolve_and_overrides_are_typed(tmp_path):
    stages = resolve("tiny", {"lr": "1e-3", "trainable": "proj.*,vit.*", "l2wrap": "true"}, runs_dir=str(tmp_path))
    assert [s.task for s in stages] == ["vision_shapes", "vlm", "vlm", "vlm"]
    assert [s.multi_turn for s in stages[1:]] == ["official", "official", "image-every-turn"]
    assert stages[1].lr == 1e-3 and stages[2].trainable == ["proj.*", "vit.*"] and stages[2].l2wrap
    assert stages[1].image_position == "first" and stages[2].image_position == "middle"
    stages = resolve("tiny", {"out_dir": str(tmp_path / "x")})
    assert len({s.out_dir for s in stages}) == 4
    with pytest.raises(ValueError, match="unknown training option --learning_rate;"):
        resolve("tiny", {"learning_rate": "1"})
    with pytest.raises(ValueError, match=r"--micro_batch \(did you mean --micro_batch_size\?\)"):
        resolve("tiny", {"micro_batch": "1"})
    with pytest.raises(ValueError, match="neither a preset"):
        resolve("no-such-preset", {})


def test_lr_schedule_warmup_cosine():
    cfg = TrainConfig(lr=1e-3, lr_final=1e-5, warmup_steps=10)
    assert lr_at(0, 110, cfg) == pytest.approx(1e-4)
    assert lr_at(10, 110, cfg) == pytest.approx(1e-3)
    assert lr_at(60, 110, cfg) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(110, 110, cfg) == pytest.approx(1e-5)


def test_loss_falls_when_overfitting(shapes, tmp_path):
    cfg = config(shapes, tmp_path, max_steps=25, micro_batch_size=4, lr=3e-3, lr_final=3e-3, warmup_steps=0)
    # a fixed tiny dataset: the first 4 rows only
    rows = json.loads((shapes / "stage2.json").read_text())[:4]
    (tmp_path / "four.json").write_text(json.dumps(rows))
    cfg.data, cfg.image_root, cfg.log_every = str(tmp_path / "four.json"), str(shapes), 1
    Trainer(cfg).train()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.3 * losses[0]
    model = VisualRWKV.from_pretrained(tmp_path / "final")  # the result loads with from_pretrained
    assert model.config.rwkv.n_embd == 64


def _ddp_worker(rank, world_size, port, cfg_dict):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    Trainer(TrainConfig.from_dict(cfg_dict)).train()
    torch.distributed.destroy_process_group()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Adam divides by sqrt(v) + eps: a parameter whose true gradient is 0 (e.g. an attention key bias)
# gets float noise of ~1e-12 as gradient and, with eps = 1e-8, an update of ±lr·noise/noise. A
# larger eps keeps such noise from being amplified, so equal gradients give equal parameters.
EXACT = dict(adam_eps=1e-6)


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_on_the_combined_batch(engine, shapes, tmp_path):
    torch.set_num_threads(1)
    one = config(shapes, tmp_path / "one", micro_batch_size=4, max_steps=3, seed=3, **EXACT)
    trainer = Trainer(one)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    two = config(shapes, tmp_path / "two", micro_batch_size=2, max_steps=3, seed=3, distributed=engine, **EXACT)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), two.to_dict()), nprocs=2, join=True)
    a, b = final_params(tmp_path / "one"), final_params(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    # and training did move the model's own weights (compared with themselves before the first step), the
    # trainable ones only: the embedding is frozen in this config
    assert not torch.allclose(before["rwkv.head.weight"], a["rwkv.head.weight"])
    assert not torch.allclose(before["proj.weight"], a["proj.weight"])
    assert torch.equal(before["rwkv.emb.weight"], a["rwkv.emb.weight"])


def test_accumulation_equals_a_bigger_micro_batch(shapes, tmp_path):
    Trainer(config(shapes, tmp_path / "big", micro_batch_size=4, max_steps=2, **EXACT)).train()
    Trainer(config(shapes, tmp_path / "acc", micro_batch_size=2, grad_accum=2, max_steps=2, **EXACT)).train()
    a, b = final_params(tmp_path / "big"), final_params(tmp_path / "acc")
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k


def test_kill_9_then_resume_equals_an_uninterrupted_run(shapes, tmp_path):
    cfg = config(shapes, tmp_path / "killed", max_steps=8, save_every=2, keep_last=2, **EXACT)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "visualrwkv.cli", "train", "--config", str(path)]
    # every run in a subprocess with the same thread count, so that the float reductions agree
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "step-00000004").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before its checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout + done.stderr
    straight = subprocess.run(cmd + ["--out_dir", str(tmp_path / "straight")], env=env, capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    a, b = final_params(tmp_path / "killed"), final_params(tmp_path / "straight")
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    assert len([p for p in (tmp_path / "killed").iterdir() if p.name.startswith("step-")]) <= 2  # keep_last


def test_bad_rows_error_or_are_skipped_and_counted(shapes, tmp_path):
    rows = json.loads((shapes / "stage2.json").read_text())[:6]
    rows[2]["image"] = "images/train/missing.png"
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    cfg = config(shapes, tmp_path / "out", max_steps=1)
    cfg.data, cfg.image_root = str(tmp_path / "bad.json"), str(shapes)
    with pytest.raises(ValueError, match=r"bad.json\[2\].*missing"):
        Trainer(cfg)
    cfg.skip_bad_rows = True
    messages = []
    trainer = Trainer(cfg, log=messages.append)
    assert len(trainer.dataset) == 5
    trainer.train()
    assert any("1" in m and "missing_image" in m for m in messages)


def test_patch_labels_give_each_covered_patch_its_objects_attributes():
    from visualrwkv.data.shapes import Scene, Shape
    from visualrwkv.train.vision_pretrain import POSITION_BINS, patch_labels

    # a red square filling the top-left quarter exactly, a blue circle well inside the bottom-right one
    scene = Scene((Shape("square", "red", 0.25, 0.25, 0.25), Shape("circle", "blue", 0.8, 0.8, 0.12)), (240,) * 3)
    labels = patch_labels(scene, grid=4, image_size=64).reshape(4, 4, 4)
    red = [1 + ["red", "green", "blue", "yellow", "purple", "orange"].index("red"), 1 + 1, 1 + 2, 1 + 2]
    assert (labels[:2, :2] == torch.tensor(red).numpy()).all()  # colour, kind (square), x bin 2, y bin 2
    blue_bin = 1 + int(0.8 * POSITION_BINS)
    assert labels[3, 3].tolist() == [3, 1, blue_bin, blue_bin]  # blue, circle, centre bins of the whole circle
    assert (labels[:2, 2:] == 0).all() and (labels[2:, :2] == 0).all()  # background


def test_vision_pretraining_learns_and_saves_a_loadable_model(shapes, tmp_path):
    from visualrwkv.train.vision_pretrain import pretrain_tiny_vision

    cfg = TrainConfig(task="vision_shapes", data=str(shapes / "stage1.json"), model=MODEL, lr=2e-3,
                      micro_batch_size=16, max_steps=80, log_every=20, out_dir=str(tmp_path / "s0"))
    lines = []
    final = pretrain_tiny_vision(cfg, log=lines.append)
    losses = [float(line.split("loss ")[1].split()[0]) for line in lines if "loss" in line]
    assert len(losses) == 4 and losses[-1] < 0.6 * losses[0], losses
    assert any(line.startswith("held-out probe accuracy: colour") for line in lines)
    torch.manual_seed(cfg.seed)  # the same initial model as inside pretrain_tiny_vision
    before = VisualRWKV(VisualRWKVConfig.from_dict(MODEL))
    after = VisualRWKV.from_pretrained(final)
    assert not torch.equal(after.vit.stem[0].weight, before.vit.stem[0].weight)  # the encoder trained
    torch.testing.assert_close(after.rwkv.head.weight, before.rwkv.head.weight)  # the LM did not


def test_samples_without_a_label_in_ctx_len_are_skipped_and_logged(shapes, tmp_path):
    rows = json.loads((shapes / "stage2.json").read_text())[:6]
    long_question = "<image>\n" + "Describe it in great detail please. " * 40
    rows.insert(0, {"id": "too-long", "image": rows[0]["image"],
                    "conversations": [{"from": "human", "value": long_question}, {"from": "gpt", "value": "Red"}]})
    data = tmp_path / "data.json"
    data.write_text(json.dumps(rows))
    cfg = config(shapes, tmp_path / "run", data=str(data), image_root=str(shapes), max_steps=2, micro_batch_size=4,
                 log_every=1)
    trainer = Trainer(cfg, log=lambda *a, **k: None)
    assert trainer.dataset.text_only_positions == trainer.model.text_only_positions == trainer.model.vit.num_tokens
    with pytest.warns(UserWarning, match="no_label_in_ctx_len"):
        trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert sum(line["skipped"] for line in lines) == 1
    assert trainer.dataset.skipped == {"no_label_in_ctx_len": 1}


def test_several_data_files_train_together_each_with_its_own_image_folder(shapes, tmp_path):
    """`data` may name several files, comma-separated: their rows form one dataset, and without
    image_root each file's image paths start from its own folder (as with one file)."""
    import shutil

    from visualrwkv.train.cli import check_data

    mine = tmp_path / "mine"
    (mine / "pics").mkdir(parents=True)
    shutil.copy(shapes / "images" / "train" / "000000.png", mine / "pics" / "a.png")
    rows = [{"id": f"m{i}", "image": "pics/a.png",
             "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "Shapes"}]}
            for i in range(2)]
    (mine / "mine.json").write_text(json.dumps(rows))
    first = shapes / "stage2.json"
    cfg = config(shapes, tmp_path / "out", data=f"{first}, {mine / 'mine.json'}", max_steps=1)
    assert cfg.data_files == [str(first), str(mine / "mine.json")]
    check_data(cfg)
    trainer = Trainer(cfg)
    count = len(json.loads(first.read_text()))
    assert len(trainer.dataset) == count + 2
    assert trainer.dataset.records[0].image_paths[0].startswith(str(shapes))
    assert [r.image_paths for r in trainer.dataset.records[count:]] == [(str(mine / "pics" / "a.png"),)] * 2
    trainer.train()
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()
    cfg.data = f"{first},{tmp_path / 'nowhere.json'}"
    with pytest.raises(ValueError, match=r"--data .*nowhere\.json"):
        check_data(cfg)

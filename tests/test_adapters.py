"""Parameter-efficient fine-tuning: LoRA through peft (merge, PEFT format, reload, serve, DDP, resume)
and RWKV state tuning (file round trip, initial state, prefix-cache separation)."""

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

from visualrwkv.adapters.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, add_lora, load_lora, lora_config, merge_lora,
                                      save_lora, LORA_TARGETS)
from visualrwkv.adapters.state import StateTuning, load_state, save_state
from visualrwkv.data.shapes import generate_shapes_dataset
from visualrwkv.engine.engine import Engine
from visualrwkv.engine.params import SamplingParams
from visualrwkv.model import VisualRWKV, VisualRWKVConfig
from visualrwkv.train.config import TrainConfig, resolve
from visualrwkv.train.trainer import Trainer

MODEL = {
    "rwkv": {"n_embd": 64, "n_layer": 2, "vocab_size": 65536},
    "vision": {"kind": "tiny", "tiny": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 1,
                                         "num_heads": 2}},
    "ctx_len": 128,
}
GREEDY = dict(temperature=0.0, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=8)
EXACT = dict(adam_eps=1e-6)  # see tests/test_train.py: equal gradients give equal parameters


def new_model(version: int = 6, seed: int = 0) -> VisualRWKV:
    torch.manual_seed(seed)
    config = json.loads(json.dumps(MODEL))
    config["rwkv"]["version"] = version
    return VisualRWKV(VisualRWKVConfig.from_dict(config)).eval()


def randomize_lora(model, seed=1):
    """LoRA's B starts at zero (the model unchanged): give it values so that the adapter does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def inputs(model):
    ids = [[1, 2, 3, -200, 40, 50, 60, 70]]
    pixels = [torch.rand(1, *model.vit.pixel_shape, generator=torch.Generator().manual_seed(3))]
    return ids, pixels


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(out, num_train_images=12, num_test_images=2, image_size=32, seed=1)
    return out


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    new_model().save_pretrained(out)
    return out


def config(shapes, out_dir, **kw) -> TrainConfig:
    base = dict(data=str(shapes / "stage2.json"), model=MODEL, ctx_len=128, micro_batch_size=4, max_steps=3,
                lr=1e-2, lr_final=1e-2, progress=False, length_grouping=False, out_dir=str(out_dir), adapter="lora",
                lora_rank=4)
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.mark.parametrize("version", [6, 7])
def test_merged_model_logits_equal_base_plus_adapter(version):
    model = new_model(version)
    ids, pixels = inputs(model)
    with torch.no_grad():
        base, _ = model(ids, pixels)
    trained = add_lora(model, lora_config(model, LORA_TARGETS, 4, 8.0, 0.0))
    # every projection of both generations and the projector, nothing else
    names = {n.split(".lora_")[0] for n in trained}
    expected = {"proj", "rwkv.blocks.1.att.key", "rwkv.blocks.0.ffn.value", "rwkv.blocks.1.att.output"}
    assert expected <= names
    assert ("rwkv.blocks.0.att.gate" in names) == (version == 6)
    assert not any("emb" in n or "head" in n or "vit." in n for n in names)
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)
    randomize_lora(model)
    with torch.no_grad():
        adapted, _ = model(ids, pixels)
        merge_lora(model)
        merged, _ = model(ids, pixels)
    assert not any(".lora_" in n for n, _ in model.named_parameters())  # plain layers again
    assert type(model.rwkv.blocks[0].att.key).__name__ == "Linear"
    assert (adapted - base).abs().max() > 1e-3  # the adapter changes the answer
    assert torch.allclose(merged, adapted, atol=1e-5, rtol=0)


def test_adapter_saved_reloaded_and_served_gives_the_same_greedy_answers(base_dir, tmp_path):
    model = VisualRWKV.from_pretrained(base_dir)
    trained = add_lora(model, lora_config(model, LORA_TARGETS, 4, 8.0, 0.0, base=str(base_dir)))
    randomize_lora(model)
    params = dict(model.named_parameters())
    save_lora(tmp_path / "adapter", model.peft_config["default"], {n: params[n] for n in trained})
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
    keys = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    assert "base_model.model.rwkv.blocks.0.att.key.lora_A.weight" in keys  # PEFT's own key names

    ids = [1, 2, 3, -200, 40, 50]
    image = [torch.rand(*model.vit.pixel_shape, generator=torch.Generator().manual_seed(5))]
    with torch.no_grad():
        want = model.generate_greedy(ids, image, max_new_tokens=8)
    reloaded = VisualRWKV.from_pretrained(base_dir, adapter=tmp_path / "adapter")
    assert reloaded.generate_greedy(ids, image, max_new_tokens=8) == want
    plain = VisualRWKV.from_pretrained(base_dir)
    assert plain.generate_greedy(ids, image, max_new_tokens=8) != want  # the adapter is what answers

    # served: the engine (compiled CPU decode step, GEMV layout) on the merged model answers as the model does
    from visualrwkv.engine.defaults import load_model

    served = load_model(base_dir, adapter=tmp_path / "adapter")
    with Engine(served) as engine:
        prompt = engine.build_prompt("What color is it?")
        result = engine.generate(prompt, SamplingParams(**GREEDY))
    expected = reloaded.generate_greedy(prompt.ids, [], max_new_tokens=8, stop_ids=(0, 261))
    assert result.token_ids[:len(expected)] == expected[:len(result.token_ids)]
    assert served.cache_tag.startswith("+adapter:")


def test_our_adapter_is_peft_format_and_loads_with_peft_itself(base_dir, tmp_path):
    from peft import PeftModel

    model = VisualRWKV.from_pretrained(base_dir)
    trained = add_lora(model, lora_config(model, LORA_TARGETS, 4, 8.0, 0.0, base=str(base_dir)))
    randomize_lora(model)
    params = dict(model.named_parameters())
    save_lora(tmp_path / "a", model.peft_config["default"], {n: params[n] for n in trained})
    ids, pixels = inputs(model)
    with torch.no_grad():
        ours, _ = model(ids, pixels)
        peft_model = PeftModel.from_pretrained(VisualRWKV.from_pretrained(base_dir), str(tmp_path / "a")).eval()
        theirs, _ = peft_model.base_model.model(ids, pixels)
        merged = peft_model.merge_and_unload()
        theirs_merged, _ = merged(ids, pixels)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    assert torch.allclose(ours, theirs_merged, atol=1e-5, rtol=0)
    # and peft's own save_pretrained writes what our loader reads
    peft_model2 = PeftModel.from_pretrained(VisualRWKV.from_pretrained(base_dir), str(tmp_path / "a"))
    peft_model2.save_pretrained(str(tmp_path / "b"))
    again = VisualRWKV.from_pretrained(base_dir, adapter=tmp_path / "b")
    with torch.no_grad():
        assert torch.allclose(again(ids, pixels)[0], ours, atol=1e-5, rtol=0)


def test_bad_adapters_get_one_clear_error(base_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        VisualRWKV.from_pretrained(base_dir, adapter=tmp_path)
    deeper = json.loads(json.dumps(MODEL))
    deeper["rwkv"]["n_layer"] = 3
    other = VisualRWKV(VisualRWKVConfig.from_dict(deeper))
    trained = add_lora(other, lora_config(other, ["rwkv.blocks.2.att.key"], 2, 2.0, 0.0))
    params = dict(other.named_parameters())
    save_lora(tmp_path / "x", other.peft_config["default"], {n: params[n] for n in trained})
    with pytest.raises(ValueError, match="made for another model: no layer rwkv.blocks.2.att.key"):
        VisualRWKV.from_pretrained(base_dir, adapter=tmp_path / "x")
    with pytest.raises(ValueError, match="match no linear layer"):
        lora_config(new_model(), ["nothing.*"], 2, 2.0, 0.0)


def test_an_adapter_of_twenty_or_more_layers_reloads(tmp_path):
    # peft saves a target list of 20 or more full names as the shortest suffixes that pick the same layers
    # ("key", "gate", ...): what the shipped model's adapters (4 layers, 33 targets) hold
    deeper = json.loads(json.dumps(MODEL))
    deeper["rwkv"]["n_layer"] = 3
    torch.manual_seed(0)
    VisualRWKV(VisualRWKVConfig.from_dict(deeper)).save_pretrained(tmp_path / "base")
    model = VisualRWKV.from_pretrained(tmp_path / "base")
    trained = add_lora(model, lora_config(model, LORA_TARGETS, 4, 8.0, 0.0))
    assert len({n.split(".lora_")[0] for n in trained}) == 3 * 8 + 1
    randomize_lora(model)
    params = dict(model.named_parameters())
    save_lora(tmp_path / "a", model.peft_config["default"], {n: params[n] for n in trained})
    saved = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())["target_modules"]
    assert "key" in saved and not any(t.startswith("rwkv.blocks.") for t in saved)
    ids, pixels = inputs(model)
    with torch.no_grad():
        want, _ = model(ids, pixels)
        got, _ = VisualRWKV.from_pretrained(tmp_path / "base", adapter=tmp_path / "a")(ids, pixels)
        plain, _ = VisualRWKV.from_pretrained(tmp_path / "base")(ids, pixels)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert (plain - want).abs().max() > 1e-3


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


def adapter_tensors(out_dir) -> dict:
    return load_file(str(Path(out_dir) / "final" / ADAPTER_WEIGHTS))


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_process_lora_equals_one_process_on_the_combined_batch(engine, shapes, tmp_path):
    torch.set_num_threads(1)
    Trainer(config(shapes, tmp_path / "one", micro_batch_size=4, seed=3, grad_checkpointing=True, **EXACT)).train()
    two = config(shapes, tmp_path / "two", micro_batch_size=2, seed=3, distributed=engine, **EXACT)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), two.to_dict()), nprocs=2, join=True)
    a, b = adapter_tensors(tmp_path / "one"), adapter_tensors(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 2 * 17  # A and B of 8 projections × 2 layers + the projector
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in a.items())  # it trained
    # a run's result is the adapter alone, loadable onto its init
    assert not (tmp_path / "one" / "final" / "model.safetensors").exists()


def test_kill_9_then_resume_ends_with_the_same_adapter(shapes, tmp_path):
    cfg = config(shapes, tmp_path / "killed", max_steps=8, save_every=2, keep_last=2, lora_dropout=0.1,
                 precision="bf16", **EXACT)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "visualrwkv.cli", "train", "--config", str(path)]
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
    a, b = adapter_tensors(tmp_path / "killed"), adapter_tensors(tmp_path / "straight")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a step folder is a model too: its init with the adapter merged
    step = sorted((tmp_path / "killed").glob("step-*"))[-1]
    assert not any(".lora_" in n for n, _ in VisualRWKV.from_pretrained(step).named_parameters())


def test_state_file_round_trip_and_wrong_model(tmp_path):
    model = new_model()
    state = StateTuning(model.config.rwkv, shifts=True)
    with torch.no_grad():
        for p in state.parameters():
            p.normal_()
    save_state(tmp_path / "s.safetensors", state.sizes, state.tensors())
    back = load_state(tmp_path / "s.safetensors", model.config.rwkv)
    for k, v in state.tensors().items():
        assert torch.equal(back.tensors()[k], v)
    assert back.digest == state.digest
    with pytest.raises(ValueError, match="made for a model of"):
        load_state(tmp_path / "s.safetensors", new_model(7).config.rwkv)
    (tmp_path / "junk").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_state(tmp_path / "junk", model.config.rwkv)


def test_the_tuned_state_starts_every_prompt_and_zero_is_the_base_model(base_dir, tmp_path):
    model = VisualRWKV.from_pretrained(base_dir)
    ids = [1, 2, 3, -200, 40, 50]
    image = [torch.rand(*model.vit.pixel_shape, generator=torch.Generator().manual_seed(5))]
    base_logits, _ = model.prefill(ids, image)
    model.state_tuning = StateTuning(model.config.rwkv)
    assert torch.allclose(model.prefill(ids, image)[0], base_logits, atol=1e-6)  # zero state = no state
    with torch.no_grad():
        model.state_tuning.wkv.normal_(0, 0.5)
    tuned, _ = model.prefill(ids, image)
    assert (tuned - base_logits).abs().max() > 1e-3
    # the same as feeding the tuned state explicitly
    explicit, _ = VisualRWKV.from_pretrained(base_dir).prefill(ids, image, model.state_tuning.initial(1, torch.float32),
                                                               continuation=False)
    assert torch.allclose(tuned, explicit, atol=1e-6)
    save_state(tmp_path / "s.safetensors", model.state_tuning.sizes, model.state_tuning.tensors())
    loaded = VisualRWKV.from_pretrained(base_dir, state=tmp_path / "s.safetensors")
    assert torch.allclose(loaded.prefill(ids, image)[0], tuned, atol=1e-6)
    saved = tmp_path / "m"
    loaded.save_pretrained(saved)  # the state is not part of a model folder
    assert torch.allclose(VisualRWKV.from_pretrained(saved).prefill(ids, image)[0], base_logits, atol=1e-6)


def test_two_state_files_never_share_a_cached_prefix(base_dir):
    model = VisualRWKV.from_pretrained(base_dir)
    a, b = StateTuning(model.config.rwkv), StateTuning(model.config.rwkv)
    with torch.no_grad():
        a.wkv.normal_(0, 0.5)
        b.wkv.normal_(0, 0.5)
    params = SamplingParams(**GREEDY)
    results = {}
    with Engine(model) as engine:
        prompt = engine.build_prompt("What color is it?")
        for name, state in (("a", a), ("b", b), ("a again", a)):
            model.state_tuning = state
            results[name] = engine.generate(prompt, params)
    assert results["a"].cached_tokens == 0
    assert results["b"].cached_tokens == 0  # another state: the cached prefix of "a" is not reused
    assert results["a again"].cached_tokens > 0 and results["a again"].token_ids == results["a"].token_ids
    for name, state in (("a", a), ("b", b)):  # each answer is its own state's
        fresh = VisualRWKV.from_pretrained(base_dir)
        fresh.state_tuning = state
        with Engine(fresh) as engine:
            assert engine.generate(prompt, params).token_ids == results[name].token_ids


def test_state_tuning_trains_only_the_state_and_writes_a_small_file(shapes, tmp_path):
    cfg = config(shapes, tmp_path / "st", adapter="state", lr=0.05, lr_final=0.05, max_steps=4, log_every=1)
    final = Trainer(cfg).train()
    assert {p.name for p in final.iterdir()} == {"state.safetensors", "train_config.json"}
    tensors = load_file(str(final / "state.safetensors"))
    assert set(tensors) == {"wkv"} and tensors["wkv"].shape == (2, 1, 64, 64) and tensors["wkv"].abs().max() > 0
    losses = [json.loads(line)["loss"] for line in (tmp_path / "st" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]


def test_lora_and_state_presets_resolve(tmp_path):
    lora, = resolve("finetune-lora", {"data": "x.json"}, runs_dir=str(tmp_path))
    state, = resolve("finetune-state", {"data": "x.json", "state_shifts": "true"}, runs_dir=str(tmp_path))
    assert lora.adapter == "lora" and state.adapter == "state" and state.state_shifts
    assert "lr" in lora.fit_to_data
    with pytest.raises(ValueError, match="adapter must be"):
        TrainConfig(adapter="qlora")

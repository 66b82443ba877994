"""trainer/device.py on a machine without a GPU: `device: auto` is the CPU, `cuda` is an error
naming the field, the CPU step has no scaler and no CUDA state, and `cpu` and `auto` train the
same run bit for bit. The CUDA side is tests/test_gpu.py (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

from tests.run_configs import MFCC_MLP, RESNET_TINY, changed, run_config
from trainer import device
from trainer.config import ConfigError
from trainer.engine import Trainer
from trainer.history import read_history

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")


@no_gpu
def test_auto_is_the_cpu_without_a_gpu():
    assert device.resolve("auto") == torch.device("cpu")
    assert device.resolve("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_is_an_error_naming_the_field(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        device.resolve("cuda", "/runs/a/config.yaml")
    assert info.value.source == "/runs/a/config.yaml"
    (key, problem), = info.value.problems
    assert key == "device" and "no CUDA GPU" in problem and "device: auto or cpu" in problem
    with pytest.raises(ConfigError, match="device"):
        device.resolve("tpu")


def test_auto_picks_cuda_when_torch_sees_a_gpu_and_sets_cublas_first(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert device.resolve("auto") == torch.device("cuda")
    import os
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == device.CUBLAS_WORKSPACE
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    assert device.resolve("cpu") == torch.device("cpu")  # an explicit CPU run leaves CUDA alone
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_fp16_on_the_cpu_is_an_error_naming_optim_amp(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        device.Placement(run_config(RESNET_TINY, **{"optim.amp": "fp16"}), "cfg.yaml")
    assert info.value.problems[0][0] == "optim.amp" and "fp16 needs CUDA" in info.value.problems[0][1]


def test_the_cpu_placement_passes_everything_through():
    placement = device.Placement(run_config(RESNET_TINY, device="cpu"))
    assert isinstance(placement.scaler, device.NoScaler) and not placement.pin_memory
    x, y = torch.randn(2, 3), torch.ones(2)
    moved = placement.to(x, y)
    assert moved[0] is x and moved[1] is y and placement.to(x) is x and placement.to(None) is None
    assert placement.state_dict() == {}  # a CPU checkpoint holds no scaler
    with placement.autocast():
        assert not torch.is_autocast_enabled("cpu")
    bf16 = device.Placement(run_config(RESNET_TINY, device="cpu", **{"optim.bf16": True}))
    with bf16.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert torch.matmul(x, x.T).dtype == torch.float32  # nothing leaks out of the context


def test_the_no_op_scaler_steps_exactly_like_plain_pytorch():
    def trained(use_placement: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        placement = device.Placement(run_config(RESNET_TINY, device="cpu"))
        for _ in range(3):
            loss = model(torch.ones(5, 4)).square().mean()
            if use_placement:
                placement.backward(loss)
                assert placement.clip(opt, model, 0.05) > 0.05  # the norm before the clip
                placement.step(opt)
                placement.end_step(opt)
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(model.parameters()), 0.05)
                opt.step()
                opt.zero_grad()
        return model.weight.detach().clone()

    assert torch.equal(trained(True), trained(False))
    assert not torch.equal(trained(True), torch.nn.Linear(4, 2).weight)


def test_no_cuda_rng_in_a_cpu_process():
    if torch.cuda.is_initialized():
        pytest.skip("CUDA is in use in this process")
    assert device.cuda_rng_state() == {} and not device.pin_memory()
    device.set_cuda_rng_state({"torch": torch.get_rng_state()})  # a CPU checkpoint: nothing to restore


@no_gpu
def test_trainer_with_device_cuda_fails_at_set_up_naming_the_field(tmp_path):
    cfg = run_config(changed(RESNET_TINY, **MFCC_MLP), device="cuda", max_steps=2)
    with pytest.raises(ConfigError) as info:
        Trainer(cfg, tmp_path).run()
    assert info.value.problems[0][0] == "device" and str(tmp_path) in info.value.source


@no_gpu
def test_device_cpu_and_auto_train_the_same_run_bit_for_bit(tmp_path):
    raw = changed(RESNET_TINY, **MFCC_MLP)
    results = {}
    for name in ("cpu", "auto"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        assert Trainer(run_config(raw, device=name, max_steps=8), run_dir).run() == "finished"
        losses = [(r["step"], r["train_loss"]) for r in read_history(run_dir / "history.msgpack") if r["kind"] == "train"]
        last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]
        results[name] = losses, last
    (cpu_losses, cpu_w), (auto_losses, auto_w) = results["cpu"], results["auto"]
    assert len(cpu_losses) == 8 and cpu_losses == auto_losses
    assert cpu_w.keys() == auto_w.keys() and all(torch.equal(cpu_w[k], auto_w[k]) for k in cpu_w)


def test_the_engine_drives_an_enabled_scaler_and_resumes_its_state(tmp_path, monkeypatch):
    """fp16's sequence (scaled backward, unscale before the clip, step, update, the state in each
    checkpoint and back on resume) checked here with torch's GradScaler on the CPU, as CUDA's
    would be (tests/test_gpu.py runs the real one)."""
    made = []

    def cpu_scaler(where, precision):
        made.append(torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3))
        return made[-1]

    monkeypatch.setattr(device, "make_scaler", cpu_scaler)
    raw = changed(RESNET_TINY, **MFCC_MLP)
    cfg = run_config(raw, device="cpu", max_steps=7)
    first = Trainer(cfg, tmp_path)
    assert first.run() == "finished"
    scale = made[0].get_scale()
    assert scale == 2.0 ** 12  # two growth intervals of 3 finite steps: the scaler was stepped and updated
    ckpt = first.checkpoints.store.load_latest()[0]
    assert ckpt["scaler"]["scale"] == scale and ckpt["scaler"]["_growth_tracker"] == 1
    losses = [r["train_loss"] for r in read_history(tmp_path / "history.msgpack") if r["kind"] == "train"]
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.undo()
    assert Trainer(cfg, plain).run() == "finished"  # unscaled gradients: the same training
    assert losses == [r["train_loss"] for r in read_history(plain / "history.msgpack") if r["kind"] == "train"]
    monkeypatch.setattr(device, "make_scaler", cpu_scaler)
    second = Trainer(run_config(raw, device="cpu", max_steps=7), tmp_path)
    second.setup()  # resumes from the final checkpoint: the scaler's state comes back
    assert second.resumed and made[-1].get_scale() == scale and made[-1]._get_growth_tracker() == 1

"""Training on CUDA (trainer/device.py): exact resume on one GPU, fp16 with the loss scaler,
checkpoints in host memory, the system sample's GPUs. Every test skips without a GPU.

Runnable on its own as the GPU check of a machine with one (the machine's report first):
    python tests/test_gpu.py
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from tests.run_configs import MFCC_MLP, RESNET_TINY, changed, run_config  # noqa: E402
from trainer.engine import NullPublisher, Trainer  # noqa: E402
from trainer.history import read_history  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class StopAt(NullPublisher):
    """Asks the trainer to stop (as the daemon would) once it has published step `step`."""

    def __init__(self, controls: queue.SimpleQueue, step: int):
        self.controls, self.step, self.sent = controls, step, False

    def progress(self, body: dict) -> None:
        if not self.sent and body["step"] >= self.step:
            self.sent = True
            self.controls.put((99, "stop"))


def losses(run_dir: Path) -> dict:
    return {r["step"]: r["train_loss"] for r in read_history(run_dir / "history.msgpack") if r["kind"] == "train"}


def last_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]


def assert_same_run(reference: Path, resumed: Path) -> None:
    assert losses(resumed) == losses(reference)
    ref, got = last_weights(reference), last_weights(resumed)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), f"{key} differs after the resume"


def gpu_run(amp: str, **changes):
    """RESNET_TINY (mixup, SpecAugment, dropout, EMA, two phases) on CUDA; fp16 trains the MLP."""
    raw = changed(RESNET_TINY, **MFCC_MLP) if amp == "fp16" else RESNET_TINY
    return run_config(raw, device="cuda", **{"optim.amp": amp, "checkpoint.interval_seconds": 3600}, **changes)


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_stopped_and_resumed_on_one_gpu_equals_an_uninterrupted_run(tmp_path, amp):
    cfg = gpu_run(amp)
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    for d in (reference, victim):
        d.mkdir()
    assert Trainer(cfg, reference).run() == "finished"
    controls: queue.SimpleQueue = queue.SimpleQueue()
    first = Trainer(cfg, victim, StopAt(controls, 5), controls)  # mid-phase, mid-epoch
    assert first.run() == "stopped" and 5 <= first.state.step < first.plan.total_steps
    ckpt = first.checkpoints.store.load_latest()[0]
    assert "cuda" in ckpt["rng"] and all(not t.is_cuda for t in ckpt["model"].values())
    assert ("scaler" in ckpt) == (amp == "fp16")
    second = Trainer(cfg, victim)
    assert second.run() == "finished" and second.resumed
    assert next(second.model.parameters()).is_cuda
    assert_same_run(reference, victim)


def test_sigkilled_and_resumed_on_one_gpu_equals_an_uninterrupted_run(tmp_path):
    """The CPU test's kill (tests/test_engine.py) on CUDA, once: a real process killed mid-run."""
    raw = changed(RESNET_TINY, **MFCC_MLP, device="cuda")
    raw["data"]["synthetic"].update(train_per_class=48, val_per_class=8)
    raw["phases"] = [{"name": "head", "epochs": 10, "trainable": 0.0}, {"name": "full", "epochs": 10}]
    raw["checkpoint"]["interval_seconds"] = 0.2
    config = tmp_path / "gpu.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def train(run_dir: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "trainer.cli", "train", str(config), "--run-dir", str(run_dir),
                                 "--quiet"], env=env, cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    reference, victim = tmp_path / "reference", tmp_path / "victim"
    assert train(reference).wait(timeout=600) == 0
    proc = train(victim)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((victim / "ckpt").glob("step-*")):
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "the run ended before it could be killed; lengthen it"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = train(victim)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-3000:]
    assert_same_run(reference, victim)


def test_fp16_with_the_loss_scaler_trains_finite_losses(tmp_path):
    cfg = gpu_run("fp16", max_steps=12)
    trainer = Trainer(cfg, tmp_path)
    assert trainer.run() == "finished"
    assert isinstance(trainer.placement.scaler, torch.amp.GradScaler) and trainer.placement.scaler.is_enabled()
    found = losses(tmp_path)
    assert len(found) == 12 and all(v == v and abs(v) < 1e6 for v in found.values()), found
    assert trainer.placement.scaler.get_scale() > 0
    assert torch.backends.cudnn.deterministic and torch.are_deterministic_algorithms_enabled()
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"


def test_checkpoint_snapshot_copies_gpu_tensors_to_host_memory():
    from trainer.checkpoint.capture import Snapshotter, snapshot

    state = {"w": torch.arange(6.0, device="cuda").reshape(2, 3), "step": torch.tensor(3)}
    snap = snapshot(state)
    assert not snap["w"].is_cuda and torch.equal(snap["w"], state["w"].cpu())
    state["w"].add_(1)
    assert snap["w"][0, 0].item() == 0.0  # a copy, not a view of the GPU tensor
    taker = Snapshotter()
    first, later = taker.take(state, stable=[state["w"]])
    later.run()
    assert not first["w"].is_cuda and torch.equal(first["w"], state["w"].cpu())


def test_system_sample_lists_the_gpu_with_nvidias_library(tmp_path):
    pytest.importorskip("pynvml", reason="the gpu extra (nvidia-ml-py) is not installed")
    from trainer import protocol
    from trainer.sysmon import SystemSampler

    sample = SystemSampler(tmp_path, lambda: os.getpid()).sample()
    assert len(sample["gpus"]) == torch.cuda.device_count()
    assert sample["gpus"][0]["mem_total"] > 0 and sample["gpus"][0]["name"]
    protocol.system(**sample)


if __name__ == "__main__":
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}",
          *(f"  cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())), sep="\n")
    sys.exit(pytest.main([__file__, "-v", "-rs", "-p", "no:cacheprovider"]))

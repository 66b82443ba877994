"""Where a run computes: the device (`device: auto|cpu|cuda`), the training step's autocast
(`optim.amp`/`optim.bf16`), the loss scaler, CUDA's deterministic set-up, batches moved to the
device, and the CUDA RNG in a checkpoint.

The CPU path is the one the engine always had: autocast only with bf16, no scaler (`NoScaler`
passes everything through), batches used where they are, no CUDA call that would initialise it.
On CUDA, `Placement.prepare` makes the run deterministic (`torch.use_deterministic_algorithms`,
cuBLAS's fixed workspace, no cudnn autotuning), so a run resumed from a checkpoint equals an
uninterrupted one on the same GPU model; fp16 needs `torch.amp.GradScaler`, whose state each
checkpoint keeps (`Placement.scaler.state_dict()`).
"""
from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch

from trainer.config import ConfigError

CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS's workspace setting for deterministic results (CUDA's docs); read when its first
handle is made, so it is set before any CUDA work."""
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(name: str, source: str = "config") -> torch.device:
    """The torch device of `device: name`: auto is cuda when torch sees a GPU, else cpu. cuda
    without one is a ConfigError naming the field (`source`: the config file)."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        if not torch.cuda.is_available():
            raise ConfigError(source, [("device", "cuda, but torch sees no CUDA GPU on this machine "
                                        f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                                        "use device: auto or cpu")])
        return torch.device("cuda")
    if name == "auto":
        if torch.cuda.is_available():
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            return torch.device("cuda")
        return torch.device("cpu")
    raise ConfigError(source, [("device", f"expected auto, cpu or cuda, got {name!r}")])


def make_deterministic(device: torch.device) -> None:
    """CUDA: deterministic kernels (an op without one warns in the log instead of stopping a
    long run), cuBLAS's fixed workspace, no cudnn autotuning. Nothing on the CPU, whose kernels
    are deterministic at a fixed thread count already."""
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def pin_memory() -> bool:
    """Whether loaders should hand out page-locked batches: in a process that trains on CUDA
    (the model went there in the set-up, so CUDA is initialised). Never on a CPU run."""
    return torch.cuda.is_initialized()


def device_of(model: torch.nn.Module) -> torch.device:
    """Where `model`'s weights are (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def move(t: Optional[torch.Tensor], where: torch.device) -> Optional[torch.Tensor]:
    """`t` on `where`: the same tensor for the CPU, an asynchronous copy from pinned memory to a GPU."""
    return t if t is None or where.type == "cpu" else t.to(where, non_blocking=True)


class NoScaler:
    """The loss scaler of every run but CUDA fp16: it passes the loss and the step through
    (the subset of `torch.amp.GradScaler`'s interface the engine uses)."""

    def is_enabled(self) -> bool:
        return False

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def update(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_scaler(device: torch.device, precision: str):
    """`torch.amp.GradScaler("cuda")` for fp16 on CUDA (fp16's range would flush small
    gradients to zero without it), else a NoScaler."""
    if device.type == "cuda" and precision == "fp16":
        return torch.amp.GradScaler("cuda")
    return NoScaler()


def cuda_rng_state() -> dict:
    """{"cuda": every GPU's generator state} for a checkpoint's RNG states once CUDA is in use,
    else {} (a CPU run's checkpoint is what it always was)."""
    if not torch.cuda.is_initialized():
        return {}
    return {"cuda": torch.cuda.get_rng_state_all()}


def set_cuda_rng_state(rng: dict) -> None:
    """Restore what cuda_rng_state saved; RNG states of a CPU run leave the GPUs' as seeded."""
    states = rng.get("cuda")
    if states is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states[:torch.cuda.device_count()]])


class Placement:
    """The device a run trains on and how: `autocast()`, `to()`, `pin_memory`, and the loss
    scaler around backward and the optimizer step (`backward`, `clip`, `step`, `end_step`) with
    its checkpoint state. Built in the trainer's set-up from the config (`source`: its file,
    named by a ConfigError); on CUDA it makes the process deterministic (`make_deterministic`)."""

    def __init__(self, cfg, source: str = "config"):
        self.device = resolve(cfg.device, source)
        self.precision = cfg.optim.precision
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(source, [("optim.amp", f"fp16 needs CUDA but this run trains on the CPU "
                                        f"(device: {cfg.device}); use bf16 or none")])
        self.on_cuda = self.device.type == "cuda"
        self.pin_memory = self.on_cuda
        self.scaler = make_scaler(self.device, self.precision)
        make_deterministic(self.device)  # before the first CUDA work

    def autocast(self):
        """The training forward's autocast: CPU bf16 as the engine always had, CUDA bf16 or fp16;
        disabled (fp32) otherwise."""
        dtype = _DTYPES.get(self.precision)
        if dtype is None:
            return torch.autocast("cpu", dtype=torch.bfloat16, enabled=False)
        return torch.autocast(self.device.type, dtype=dtype)

    def to(self, *tensors: Optional[torch.Tensor]) -> Any:
        """`tensors` on the device (the same objects on the CPU); one tensor, or a tuple of them."""
        moved = tuple(move(t, self.device) for t in tensors)
        return moved[0] if len(moved) == 1 else moved

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def clip(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, grad_clip: Optional[float]) -> float:
        """The global gradient norm, clipped to `grad_clip` (None: not clipped); fp16's gradients
        are divided back to their true scale first, so the norm and the clip are the true ones."""
        self.scaler.unscale_(optimizer)
        trainable = [p for p in model.parameters() if p.grad is not None]
        max_norm = grad_clip if grad_clip else math.inf
        return float(torch.nn.utils.clip_grad_norm_(trainable, max_norm)) if trainable else 0.0

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step (fp16: skipped by the scaler when a gradient is inf or nan)."""
        self.scaler.step(optimizer)

    def end_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After each step, taken or skipped: fp16's scale grows or shrinks; the gradients go."""
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the placement: {"scaler": ...} with fp16, else nothing."""
        return {"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}

    def load_state_dict(self, ckpt: dict) -> None:
        if self.scaler.is_enabled() and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])

"""Model factory (timm + two small built-in networks) and progressive-unfreezing helpers."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)


class CNN1dAttention(nn.Module):
    """Raw-waveform classifier: strided 1-D conv blocks, then multi-head self-attention over time.

    Suits short industrial recordings (OK/NG anomaly detection) where the waveform's fine timing
    matters more than its spectrum.
    """

    def __init__(self, num_classes: int, in_chans: int = 1, channels: Iterable[int] = (16, 32, 64, 96),
                 kernel: int = 9, stride: int = 4, heads: int = 4, drop_rate: float = 0.2):
        super().__init__()
        layers, prev = [], in_chans
        for width in channels:
            layers += [nn.Conv1d(prev, width, kernel, stride=stride, padding=kernel // 2, bias=False),
                       nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            prev = width
        self.features = nn.Sequential(*layers)
        self.attention = nn.MultiheadAttention(prev, heads, batch_first=True)
        self.norm = nn.LayerNorm(prev)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).transpose(1, 2)  # (B, T, C)
        attended, _ = self.attention(h, h, h, need_weights=False)
        h = self.norm(h + attended).mean(dim=1)
        return self.classifier(self.dropout(h))

    def get_classifier(self) -> nn.Module:
        return self.classifier


class MfccMlp(nn.Module):
    """Dense network on MFCC features: a strong, fast baseline for small datasets of short clips.

    Two forms. `context: null` flattens the whole (n_mfcc, frames) input into one dense network:
    every output depends on where in the clip a sound falls. `context: K` is the classic frame-level
    acoustic model: the dense layers see K neighbouring frames at a time (the first layer is a
    kernel-K convolution over time, the next ones act on each frame alone), and mean and max over
    time pool the frames into one vector for the classifier. The pooled form does not care where
    the word sits in the window and generalised better to unseen voices (bench/learning.py).

    `norm: false` drops the batch norms: in a data-parallel run batch norm normalises each rank's
    share of a batch, so only a network without it trains step for step as one process would.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], hidden: Iterable[int] = (256, 128),
                 drop_rate: float = 0.2, context: int | None = None, norm: bool = True):
        super().__init__()
        self.context = context
        self.norm = norm
        hidden = list(hidden)
        if context:
            coeffs = math.prod(input_shape[:-1])  # channels x coefficients per frame
            self.features = nn.Sequential(*self._frame_layers(coeffs, hidden, context, drop_rate, norm))
            width = 2 * hidden[-1]  # mean and max
        else:
            layers, prev = [nn.Flatten()], math.prod(input_shape)
            for width in hidden:
                layers += [nn.Linear(prev, width), nn.BatchNorm1d(width) if norm else nn.Identity(),
                           nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
                prev = width
            self.features = nn.Sequential(*layers)
            width = prev
        self.classifier = nn.Linear(width, num_classes)

    @staticmethod
    def _frame_layers(coeffs: int, hidden: list[int], context: int, drop_rate: float, norm: bool) -> list[nn.Module]:
        layers, prev = [], coeffs
        for i, width in enumerate(hidden):
            kernel = context if i == 0 else 1
            layers += [nn.Conv1d(prev, width, kernel, padding=kernel // 2, bias=not norm),
                       nn.BatchNorm1d(width) if norm else nn.Identity(),
                       nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
            prev = width
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.context:
            return self.classifier(self.features(x))
        frames = self.features(x.flatten(1, -2))  # (B, coeffs, T) -> (B, hidden, T)
        return self.classifier(torch.cat([frames.mean(dim=-1), frames.amax(dim=-1)], dim=1))

    def get_classifier(self) -> nn.Module:
        return self.classifier


def build_model(cfg, num_classes: int, in_chans: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The configured model on CPU, with local pretrained weights loaded when given."""
    name, opts = cfg.model.name, dict(cfg.model.options)
    if name == "cnn1d_attention":
        model = CNN1dAttention(num_classes, in_chans, drop_rate=cfg.model.drop_rate, **opts)
    elif name == "mfcc_mlp":
        model = MfccMlp(num_classes, input_shape, drop_rate=cfg.model.drop_rate, **opts)
    else:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                  drop_rate=cfg.model.drop_rate, drop_path_rate=cfg.model.drop_path_rate or None,
                                  **opts)
        zero_classifier(model)
    if cfg.model.pretrained:
        load_pretrained(model, cfg.resolve_path(cfg.model.pretrained))
    if cfg.model.channels_last and len(input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    return model


def zero_classifier(model: nn.Module) -> None:
    """Start the classifier at zero: every class equally likely, loss ln(C), until it learns.

    timm's EfficientNet draws it from U(+-1/sqrt(num_classes)) (the TF reference init), sized for
    1,000 classes: with 4 or 10 the initial logits have a std of about 3.5, the loss starts far
    above ln(C) and gradient norms are in the hundreds, so every step is clipped and a model
    trained from scratch spends its first epochs undoing its start (val loss 10-45,
    bench/learning.py). A classifier in the pretrained file, when its shape fits, replaces this.
    """
    head = classifier(model)
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def load_pretrained(model: nn.Module, path: Path) -> dict:
    """Load a local state dict, adapting the input conv to the channel count and skipping tensors
    whose shapes differ (typically the classifier). Returns counts of what was loaded/skipped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = model.state_dict()
    loadable, skipped = {}, []
    for key, tensor in state.items():
        key = key.removeprefix("module.")
        if key not in own:
            skipped.append(key)
            continue
        if tensor.ndim == 4 and own[key].ndim == 4 and tensor.shape[1] != own[key].shape[1] \
                and tensor.shape[0] == own[key].shape[0]:
            from timm.models import adapt_input_conv

            tensor = adapt_input_conv(own[key].shape[1], tensor)
        if tensor.shape != own[key].shape:
            skipped.append(key)
            continue
        loadable[key] = tensor
    if not loadable:
        raise ValueError(f"{path}: no tensor matches model {type(model).__name__} (is it the right architecture?)")
    model.load_state_dict(loadable, strict=False)
    log.info("pretrained %s: loaded %d tensors, skipped %d", path, len(loadable), len(skipped))
    return {"loaded": len(loadable), "skipped": len(skipped)}


def classifier(model: nn.Module):
    """The model's final classification layer (timm's and longhaul's models name it), or None."""
    return model.get_classifier() if hasattr(model, "get_classifier") else None


def _classifier_params(model: nn.Module) -> set[int]:
    head = classifier(model)
    return {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()


def backbone_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Backbone parameters in groups ordered from the input to the head (classifier excluded).

    timm models provide their own fine-grained block grouping; other models are grouped per
    top-level child module.
    """
    head = _classifier_params(model)
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        names = dict(model.named_parameters())
        grouped = group_parameters(model, model.group_matcher(coarse=False))
        groups = [[names[n] for n in members] for _, members in sorted(grouped.items())]
    else:
        groups = [list(child.parameters()) for child in model.children()]
    groups = [[p for p in g if id(p) not in head] for g in groups]
    return [g for g in groups if g]


def apply_trainable(model: nn.Module, fraction: float) -> tuple[int, int]:
    """Freeze the backbone except its last `fraction` (by parameter count, whole groups, counted
    from the head backwards); the classifier always trains. Returns (trainable, total) counts.

    A group trains when it and every later group together hold at most `fraction` of the
    backbone's parameters, so 0 freezes the whole backbone and 1 trains everything.
    """
    groups = backbone_groups(model)
    sizes = [sum(p.numel() for p in g) for g in groups]
    total = sum(sizes)
    tail = 0
    for group, size in reversed(list(zip(groups, sizes))):
        tail += size
        trainable = tail <= fraction * total + 1e-9
        for p in group:
            p.requires_grad_(trainable)
    for p in model.parameters():
        if id(p) in _classifier_params(model):
            p.requires_grad_(True)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return n_trainable, sum(p.numel() for p in model.parameters())


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def set_train_mode(model: nn.Module, keep_frozen_stats: bool = True) -> None:
    """model.train(), but batch-norm layers whose parameters are frozen keep their running
    statistics (eval mode): a frozen pretrained block then really stays unchanged.

    keep_frozen_stats=False (a backbone without pretrained weights): every batch-norm layer
    tracks its batch statistics. A random backbone has no statistics worth keeping, and with
    its initial ones (mean 0, variance 1) its features are unnormalised: the classifier of a
    head-only phase learns on them, and at unfreezing, when the statistics start to move, its
    logits blow up (gradient norms ~50, val loss 3-8 for epochs: bench/learning.py, B1)."""
    model.train()
    if not keep_frozen_stats:
        return
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, _NORMS) and own and not any(p.requires_grad for p in own):
            module.eval()

"""Run configuration: YAML -> typed, validated objects.

Every field carries a docstring; `longhaul config-docs` turns them into docs/CONFIG.md.
Loading collects *all* problems (schema errors, then semantic checks such as missing data paths,
unknown model names and impossible phase plans) and raises one ConfigError that names the file,
the dotted key, what was expected and what was found.

This module must not import torch: the TUI and `longhaul ls` read configs too. Checks that need
timm (model names) import it lazily inside `check_model_name` (through trainer.model_names' cache).
"""
from __future__ import annotations

import copy
import math
import difflib
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.monitor import Monitor, direction_of


class ConfigError(ValueError):
    """A config could not be loaded; `problems` lists every (key, message) found."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s) in config:"]
        lines += [f"  {key or '<top>'}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


# ----------------------------------------------------------------------------- data
class SyntheticConfig(Section):
    classes: int = Field(8, ge=2, le=8)
    """Number of procedurally generated sound classes (tone, chirp, noise burst, clicks, AM, FM,
    harmonic stack, pulse train), in that order."""
    train_per_class: int = Field(300, ge=1)
    """Training examples per class."""
    val_per_class: int = Field(60, ge=1)
    """Validation examples per class."""
    test_per_class: int = Field(0, ge=0)
    """Test examples per class (0: no test split)."""
    seed: int = 1234
    """Seed of the generator; the same seed always gives the same dataset."""
    snr_db: float = 10.0
    """Signal-to-noise ratio of the background noise mixed into every example, in dB."""


class VariantsConfig(Section):
    count: int = Field(0, ge=0, le=64)
    """Pre-augmented variants made of each training example when the store is prepared (0: off).
    Training draws the original or one of the variants from (seed, epoch, index); the cheap online
    augmentations (SpecAugment, Mixup, ...) follow as usual. Needs data.store."""
    pitch_semitones: float = Field(0.0, ge=0.0, le=12.0)
    """Pitch shift of each variant, uniform in +-pitch_semitones semitones (0: off)."""
    time_stretch: float = Field(0.0, ge=0.0, lt=0.5)
    """Tempo change of each variant by a factor in [1 - s, 1 + s] without changing the pitch (0: off)."""
    noise_dir: Optional[str] = None
    """Folder of background recordings (wav/flac/ogg, searched recursively) mixed into each variant
    (relative paths are relative to the config file; null: no noise)."""
    noise_snr_db: tuple[float, float] = (5.0, 20.0)
    """Signal-to-noise ratio of the mixed-in noise, uniform in [low, high] dB."""
    gain_db: float = Field(0.0, ge=0.0)
    """Gain of each variant, uniform in +-gain_db dB (0: off)."""
    seed: int = 0
    """Seed of the variants' random draws (a property of the store, not of a run)."""


class WindowsConfig(Section):
    enabled: bool = False
    """Long recordings: keep up to max_seconds of each recording in the store (instead of the first
    data.duration seconds); training takes a window of data.duration seconds from anywhere in it,
    drawn from (seed, epoch, index); evaluation cuts fixed windows and averages their probabilities
    per recording. Needs data.store."""
    max_seconds: float = Field(60.0, gt=0.0)
    """The longest stretch of a recording kept in the store (the start of it), in seconds."""
    eval_hop: Optional[float] = Field(None, gt=0.0)
    """Seconds between the starts of evaluation windows (null: data.duration, windows side by side)."""


class SpecAugmentConfig(Section):
    freq_mask: float = Field(0, ge=0)
    """Maximum width of each frequency mask: below 1 a fraction of the mel bins / MFCC
    coefficients (0.15: 15%), from 1 on a number of bins (0: off). A width over half of the
    input's bins is cut to half, with a warning in the data report."""
    time_mask: float = Field(0, ge=0)
    """Maximum width of each time mask: below 1 a fraction of the frames (0.1: 10% of the clip,
    whatever data.duration is), from 1 on a number of frames (0: off). A width over half of the
    input's frames is cut to half, with a warning in the data report."""

    @field_validator("freq_mask", "time_mask")
    @classmethod
    def _whole_when_absolute(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError(f"a width of 1 or more is a number of bins/frames and must be whole, "
                             f"found {value} (below 1 it is a fraction of the input)")
        return value
    num_masks: int = Field(2, ge=1)
    """How many masks of each kind per example."""


class MixupConfig(Section):
    alpha: float = Field(0.0, ge=0.0)
    """Beta(alpha, alpha) parameter of Mixup; 0 turns Mixup off."""
    prob: float = Field(1.0, ge=0.0, le=1.0)
    """Probability that a batch is mixed."""


class AugmentConfig(Section):
    spec_augment: SpecAugmentConfig = SpecAugmentConfig()
    """SpecAugment frequency/time masking on spectrogram features (training only)."""
    mixup: MixupConfig = MixupConfig()
    """Mixup of examples and labels within a batch (training only)."""
    hflip: bool = False
    """Random horizontal flip for image data (training only)."""
    gain_db: float = Field(0.0, ge=0.0)
    """Random gain of +-gain_db dB applied to waveforms (training only; 0: off)."""
    time_shift: float = Field(0.0, ge=0.0, le=0.5)
    """Random shift of each audio example along time, either way, by up to this fraction of its
    length (0.1: +-10%); the gap is filled with the example's quietest frame, i.e. silence
    (training only; 0: off). Words and calls do not start at the same moment in every recording,
    and a model that never saw them moved learns where they start."""
    vflip: bool = False
    """Random vertical flip for image data (training only)."""
    rotate_deg: float = Field(0.0, ge=0.0, le=45.0)
    """Random rotation of images by up to +-rotate_deg degrees, bilinear; the corners that come in
    from outside take each channel's mean (training only; 0: off)."""
    brightness: float = Field(0.0, ge=0.0, lt=1.0)
    """Random brightness factor of images in [1 - b, 1 + b] (training only; 0: off)."""
    contrast: float = Field(0.0, ge=0.0, lt=1.0)
    """Random contrast factor of images in [1 - c, 1 + c] around the image's mean (training only; 0: off)."""
    freq_warp: float = Field(0.0, ge=0.0, le=0.3)
    """Random stretch of the mel axis of mel/MFCC features by a factor in [1 - w, 1 + w] (0.1:
    +-10%; training only; 0: off). Moves every formant and harmonic together, as a longer or
    shorter vocal tract, a bigger or smaller bird does: vocal tract length perturbation."""


# Test-time augmentation: the names of the transforms and their defaults by kind of input.
# trainer/posthoc/tta.py applies them; the grammar is here so that a config is checked without torch.
TTA_IMAGE_DEFAULT = ["original", "hflip", "vflip", "rotate+5", "rotate-5", "brightness+5%", "brightness-5%",
                     "contrast+5%", "contrast-5%"]
TTA_AUDIO_DEFAULT = ["original", "shift+10%", "shift-10%", "shift+20%", "shift-20%"]
TTA_IMAGE_OPS = ("hflip", "vflip", "rotate", "brightness", "contrast")
TTA_AUDIO_OPS = ("shift",)
_TTA_NAME = re.compile(r"(original|hflip|vflip)|(rotate)([+-]\d+(?:\.\d+)?)|(brightness|contrast|shift)([+-]\d+(?:\.\d+)?)%")


def parse_tta(name: str) -> tuple[str, float]:
    """A transform name -> (operation, amount): 'rotate-5' -> ('rotate', -5.0) degrees,
    'brightness+5%' -> ('brightness', 0.05), 'shift-10%' -> ('shift', -0.1), 'hflip' -> ('hflip', 0.0).
    ValueError naming the accepted forms otherwise."""
    match = _TTA_NAME.fullmatch(str(name))
    if not match:
        raise ValueError(f"unknown transform {name!r}: expected original, hflip, vflip, rotate+D / rotate-D "
                         "(degrees), brightness+P% / contrast+P% (images), shift+P% / shift-P% (audio)")
    plain, rotate, degrees, scaled, percent = match.groups()
    if plain:
        return plain, 0.0
    if rotate:
        return rotate, float(degrees)
    amount = float(percent) / 100.0
    if scaled == "shift" and abs(amount) >= 1.0:
        raise ValueError(f"{name!r}: a shift must be less than the whole window (under 100%)")
    if scaled != "shift" and amount <= -1.0:
        raise ValueError(f"{name!r}: {scaled} cannot go down by 100% or more")
    return scaled, amount


class TtaConfig(Section):
    transforms: Optional[list[str]] = None
    """Test-time augmentation of `longhaul evaluate --tta` and `longhaul predict --tta`: the
    transforms each example is classified under, whose calibrated probabilities are averaged.
    Images: original, hflip, vflip, rotate+D / rotate-D (degrees, + is counter-clockwise),
    brightness+P% / brightness-P%, contrast+P% / contrast-P%; audio: original, shift+P% / shift-P%
    (the window moved later / earlier by P% of its length, the gap filled with silence). null: the
    defaults of the run's kind, images original, hflip, vflip, rotate+-5, brightness+-5%,
    contrast+-5%; audio original, shift+-10%, shift+-20%."""

    @field_validator("transforms")
    @classmethod
    def _known(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is None:
            return value
        if not value:
            raise ValueError("an empty list: give at least one transform (original), or null for the defaults")
        for name in value:
            parse_tta(name)
        if len(set(value)) != len(value):
            raise ValueError(f"a transform is listed twice: {value}")
        return value


class FeaturesConfig(Section):
    kind: Literal["mel", "mfcc", "waveform", "image"] = "mel"
    """What the model sees: log-mel spectrogram (dB), MFCC, the raw waveform, or the image."""
    n_fft: int = Field(1024, ge=16)
    """FFT size of the spectrogram."""
    hop_length: int = Field(256, ge=1)
    """Hop between spectrogram frames, in samples."""
    n_mels: int = Field(64, ge=8)
    """Number of mel bands."""
    f_min: float = Field(0.0, ge=0.0)
    """Lowest mel band edge, Hz."""
    f_max: Optional[float] = None
    """Highest mel band edge, Hz (default: sample_rate / 2)."""
    n_mfcc: int = Field(40, ge=2)
    """Number of MFCC coefficients (kind: mfcc)."""
    top_db: Optional[float] = 80.0
    """Dynamic range kept by the dB conversion (null: unlimited)."""
    normalize: bool = True
    """Standardise each example's features to zero mean and unit variance."""


class FoldsConfig(Section):
    k: Optional[int] = Field(None, ge=2)
    """Cross-validation (`longhaul cv` sets it): the training pool (the train split as scanned and
    cut by max_per_class) is cut into k stratified folds drawn from `seed`; fold `index` is the
    validation split and the other k-1 train. No validation split is held out (val_fraction) and a
    given one is not used; the test split is unchanged. null: off."""
    index: int = Field(0, ge=0)
    """The fold this run validates on, 0..k-1 (the folds themselves do not depend on it)."""


class DataConfig(Section):
    source: Literal["synthetic", "audio_folder", "image_folder", "json_waveforms", "csv"] = "synthetic"
    """Where examples come from. audio_folder: ROOT/<split>/<class>/*.wav|flac or ROOT/<class>/*;
    image_folder: ROOT/{train,val,test}/<class>/*.png|jpg; json_waveforms: JSON files of
    waveforms; csv: lists of `path,label` (paths relative to the CSV file)."""
    root: Optional[str] = None
    """Dataset folder (audio_folder, image_folder). Relative paths are relative to the config file."""
    train: Optional[str] = None
    """Training file (json_waveforms, csv)."""
    val: Optional[str] = None
    """Validation file (json_waveforms, csv); if absent, val_fraction of train is held out."""
    test: Optional[str] = None
    """Test file (json_waveforms, csv); optional."""
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Fraction held out for validation when the data has no validation split (stratified,
    drawn from `seed`)."""
    classes: Optional[list[str]] = None
    """Class names in label order; default: sorted folder names / labels found in the data."""
    sample_rate: Union[int, Literal["auto"]] = 16000
    """Audio is resampled to this rate (Hz). `auto`: the most common rate of the training files,
    found by the up-front data check and kept for the run (run directory's data_auto.json)."""
    duration: Union[float, Literal["auto"]] = 1.0
    """Audio is padded with zeros or trimmed to this many seconds. `auto`: the 95th percentile
    of the training clips' lengths, rounded up to 0.1 s (kept for the run like sample_rate)."""
    image_size: int = Field(224, ge=8)
    """Images are resized to image_size x image_size."""
    image_channels: Literal[1, 3] = 3
    """1: grayscale, 3: RGB."""
    skip_bad_files: bool = False
    """Skip unreadable or corrupt files (counted and reported) instead of refusing to train."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes. On a 2-core box 0 is usually fastest; results do not depend on it."""
    cache: bool = True
    """Keep decoded, un-augmented features in memory after first use (without data.store)."""
    store: Optional[str] = None
    """On-disk feature store (a directory; relative paths are relative to the config file). When
    set, `longhaul prepare` (or the first `train`/`start`) decodes the data once, in parallel, into
    it, and training reads examples from it instead of decoding or holding them in memory."""
    store_dtype: Literal["float16", "float32"] = "float16"
    """Number format of stored spectrograms and waveforms (images are always uint8)."""
    prepare_workers: Optional[int] = Field(None, ge=1)
    """Worker processes of `longhaul prepare` (null: one per core)."""
    max_per_class: Optional[int] = Field(None, ge=1)
    """At most this many training examples per class: a deterministic subset drawn from `seed`
    (null: no cap). Validation and test splits are never cut; with data.folds the cap applies to the
    training pool before it is cut into folds."""
    balanced_sampler: bool = False
    """Draw each epoch's training examples class-balanced (each class equally likely; deterministic
    from seed and epoch) instead of a plain permutation."""
    variants: VariantsConfig = VariantsConfig()
    """Pre-augmented variants of the training examples, made once by `longhaul prepare`."""
    windows: WindowsConfig = WindowsConfig()
    """Training on windows of long recordings (needs data.store)."""
    folds: FoldsConfig = FoldsConfig()
    """Cross-validation folds of the training pool (`longhaul cv`); no feature store."""
    synthetic: SyntheticConfig = SyntheticConfig()
    """Settings of the built-in synthetic audio dataset (source: synthetic)."""

    @field_validator("sample_rate", mode="before")
    @classmethod
    def _rate_or_auto(cls, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1000):
            return value
        raise ValueError(f"expected a whole number of Hz >= 1000 or 'auto', found {value!r}")

    @field_validator("duration", mode="before")
    @classmethod
    def _seconds_or_auto(cls, value):
        if value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError(f"expected a number of seconds > 0 or 'auto', found {value!r}")


# ----------------------------------------------------------------------------- model
class ModelConfig(Section):
    name: str = "efficientnet_b0"
    """Any timm model name (efficientnet_b0/b1/b2, tf_efficientnetv2_s/m, resnet18, ...), or
    `cnn1d_attention` (raw waveform) or `mfcc_mlp` (MFCC features)."""
    pretrained: Optional[str] = None
    """Local file of pretrained weights (state dict; classifier and stem shape mismatches are
    skipped). Nothing is ever downloaded."""
    drop_rate: float = Field(0.2, ge=0.0, lt=1.0)
    """Dropout before the classifier."""
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    """Stochastic depth (timm models that support it)."""
    channels_last: bool = True
    """channels_last memory layout for 2-D models (about 1.45x faster EfficientNet training on CPU)."""
    compile: Union[bool, Literal["auto"]] = "auto"
    """torch.compile the model for training steps: true, false, or auto: a run planned for at least
    1e15 FLOP (about 5 hours of EfficientNet-B0 on 2 cores) times a few eager and compiled steps at
    the start of each phase and trains the phase compiled only if that is at least 5% faster; a
    shorter run stays eager (trainer/compiling.py). Compiled code is cached on disk
    (~/.cache/longhaul/inductor), so a resume recompiles in seconds. Eager and compiled steps differ
    in their last bits: a run that must be bit-identical to another sets true or false."""
    options: dict[str, Any] = {}
    """Extra keyword arguments for the model constructor (e.g. cnn1d_attention: channels, heads;
    mfcc_mlp: hidden widths and context, the frames its first layer sees at once, pooled over time)."""


class OptimConfig(Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    """Optimizer."""
    lr: float = Field(1e-3, gt=0.0)
    """Base learning rate (before phase multipliers and the schedule)."""
    weight_decay: float = Field(0.01, ge=0.0)
    """Decoupled weight decay (AdamW) or L2 (SGD)."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """SGD momentum."""
    batch_size: int = Field(32, ge=1)
    """Physical batch size (phases may override)."""
    accum_steps: int = Field(1, ge=1)
    """Gradient accumulation: micro-batches per optimizer step (phases may override)."""
    grad_clip: Optional[float] = Field(None, gt=0.0)
    """Clip the global gradient norm to this value (null: off)."""
    bf16: bool = False
    """bf16 autocast (the same as `amp: bf16`, kept for older configs). Slower than fp32 on the
    CPUs measured so far; off by default."""
    amp: Literal["none", "bf16", "fp16"] = "none"
    """Mixed precision of the training step's forward pass: none (fp32), bf16 (CPU or CUDA) or
    fp16 (CUDA only, with a loss scaler whose state each checkpoint keeps). Evaluation runs in
    fp32."""

    @field_validator("amp")
    @classmethod
    def _amp_agrees_with_bf16(cls, amp: str, info) -> str:
        if info.data.get("bf16") and amp == "fp16":
            raise ValueError("fp16 contradicts optim.bf16: true; set one of them")
        return amp

    @property
    def precision(self) -> str:
        """The autocast dtype's name the step uses: "none", "bf16" or "fp16"."""
        return "bf16" if self.bf16 and self.amp == "none" else self.amp


class LossConfig(Section):
    name: Literal["ce", "focal"] = "ce"
    """Cross-entropy or focal loss."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """Label smoothing."""
    focal_gamma: float = Field(2.0, ge=0.0)
    """Focusing parameter of the focal loss."""
    class_weights: Union[None, Literal["balanced"], list[float]] = None
    """Per-class loss weights: a list, `balanced` (n / (k * count) from training class counts), or null."""


class PlateauConfig(Section):
    factor: float = Field(0.5, gt=0.0, lt=1.0)
    """LR multiplier applied when the monitored metric stops improving."""
    patience: int = Field(2, ge=0)
    """Evaluations without improvement before the LR is reduced."""


class ScheduleConfig(Section):
    name: Literal["constant", "cosine", "step", "plateau"] = "cosine"
    """LR schedule after warmup. cosine: cosine decay to min_lr_ratio, restarting at `restarts`."""
    warmup_epochs: float = Field(0.0, ge=0.0)
    """Linear warmup from warmup_start_ratio*lr, in epochs (fractions allowed)."""
    warmup_start_ratio: float = Field(0.01, ge=0.0, le=1.0)
    """LR at the first step, as a fraction of the target LR."""
    phase_warmup_epochs: Optional[float] = Field(None, ge=0.0)
    """Warm-up again at the start of each phase that unfreezes more of the backbone than the one
    before (at most half that phase); null: as long as warmup_epochs, 0: no warm-up there."""
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0)
    """Floor of cosine decay, as a fraction of the base LR."""
    restarts: list[int] = []
    """Epochs at which the cosine schedule restarts (e.g. [25, 50, 70])."""
    step_epochs: int = Field(10, ge=1)
    """step: multiply the LR by step_gamma every step_epochs epochs."""
    step_gamma: float = Field(0.1, gt=0.0, le=1.0)
    """step: the multiplier."""
    plateau: PlateauConfig = PlateauConfig()
    """Reduce-on-plateau settings (name: plateau; watches eval.monitor)."""


class PhaseConfig(Section):
    name: str
    """Shown in the TUI and logs."""
    epochs: int = Field(ge=1)
    """Length of the phase in epochs."""
    trainable: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of the backbone that trains, counted from the head backwards (the head always trains)."""
    lr_mult: float = Field(1.0, gt=0.0)
    """Multiplier on the scheduled LR during this phase."""
    batch_size: Optional[int] = Field(None, ge=1)
    """Override of optim.batch_size for this phase."""
    accum_steps: Optional[int] = Field(None, ge=1)
    """Override of optim.accum_steps for this phase."""


class EmaConfig(Section):
    enabled: bool = False
    """Keep an exponential moving average (EMA) of the weights. Each evaluation then evaluates
    the EMA weights and (evaluate_raw) the raw weights, and follows the better of the two: its
    eval.monitor value decides best.pt (which holds those weights), early stopping and
    reduce-on-plateau; a tie goes to the EMA. The eval record's val_* keys are the chosen
    weights', `eval_weights` says which ("ema" or "raw"), and val_ema_* / val_raw_* hold both sets
    (val_ema_accuracy, val_raw_loss, ...).
    At start an `ema_slow` alert warns when, at the run's last step, over 10% of the EMA would
    still come from the weights of the run's first quarter (for a constant decay: 1/(1 - decay)
    longer than about a third of the run)."""
    decay: float = Field(0.9998, gt=0.0, lt=1.0)
    """EMA decay per optimizer step (the most it reaches with warmup): the EMA averages over about
    1/(1 - decay) steps (0.999: 1,000 steps)."""
    warmup: bool = True
    """Warm the decay up as timm's ModelEmaV3 does: the update after optimizer step n (counted
    from 1; step 1 copies the model) uses min(decay, 1 - n ** -warmup_power), so the EMA follows
    the model from the first evaluation instead of sitting near its random start for
    ~1/(1 - decay) steps. A function of the step alone, so resume stays bit-exact."""
    warmup_power: float = Field(0.75, gt=0.0, le=1.0)
    """Power of the warmup: 3/4 suits runs up to ~100k steps (decay 0.999 reached at step 10k),
    2/3 longer ones (at 31.6k); 1 makes the EMA a plain mean of all steps so far."""
    evaluate_raw: bool = True
    """Also evaluate the raw (non-EMA) weights at each evaluation and follow the better set. This
    doubles the evaluation time; with false only the EMA weights are evaluated and followed."""


class EarlyStoppingConfig(Section):
    patience: Optional[int] = Field(None, ge=1)
    """Evaluations without improvement of eval.monitor before the run stops (null: never)."""
    min_delta: float = Field(0.0, ge=0.0)
    """Smallest change that counts as an improvement."""


class EvalConfig(Section):
    every_epochs: int = Field(1, ge=1)
    """Evaluate every N epochs (and always at the end of each phase)."""
    monitor: str = "val_f1_macro"
    """Metric that decides the best checkpoint, early stopping and reduce-on-plateau."""
    mode: Optional[Literal["max", "min"]] = None
    """Whether larger or smaller values of `monitor` are better. null: from the metric (min for
    val_loss and train_loss, max for the rest); the opposite of that gets a warning."""
    batch_size: Optional[int] = Field(None, ge=1)
    """Evaluation batch size (default: 2x the training batch)."""
    ema: EmaConfig = EmaConfig()
    """EMA weights."""
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    """Early stopping."""

    @model_validator(mode="after")
    def _mode_from_monitor(self) -> "EvalConfig":
        if self.mode is None:
            self.mode = direction_of(self.monitor)
        return self

    @property
    def monitor_rule(self) -> Monitor:
        """What counts as a new best: the monitor, its mode and early_stopping.min_delta."""
        return Monitor(self.monitor, self.mode, self.early_stopping.min_delta)


class ReplicaConfig(Section):
    dir: Optional[str] = Field(None, min_length=1)
    """Copy the run here after each checkpoint lands (a second disk, an NFS mount; relative to
    the config file): `DIR/<run name>/` holds the config, plan, state, events, history and the
    checkpoints the run keeps, each checkpoint verified against its manifest before it is renamed
    into place. The directory must exist (a missing mount is an alert, never created). Restore:
    `longhaul resume RUN --from DIR`. Null: no copy. Only runs under a daemon (start/resume)
    replicate."""
    command: Optional[str] = Field(None, min_length=1)
    """Shell command (`sh -c`) run after each checkpoint lands, after the copy to `dir` if any,
    and once when the run ends; it sees LONGHAUL_RUN, LONGHAUL_RUN_DIR, LONGHAUL_CHECKPOINT (the
    newest checkpoint's directory), LONGHAUL_STEP and LONGHAUL_REPLICA_DIR (`DIR/<run name>` or
    empty). Example: `rsync -a --delete "$LONGHAUL_RUN_DIR/" backup:/runs/$LONGHAUL_RUN/`. A
    non-zero exit is an alert."""
    timeout_seconds: float = Field(3600.0, gt=0.0)
    """The command is killed (its whole process group) after this many seconds: an alert."""


class CheckpointConfig(Section):
    interval_seconds: float = Field(600.0, gt=0.0)
    """Checkpoint at least this often (also at every epoch end, phase end, request and stop)."""
    keep_last: int = Field(3, ge=1)
    """Newest checkpoints kept."""
    keep_best: bool = True
    """Also keep the checkpoint with the best monitored metric."""
    keep_phase_ends: bool = True
    """Also keep one checkpoint per finished phase."""
    min_free_mb: float = Field(512.0, ge=0.0)
    """Free space (MiB) to keep beyond the next checkpoint's size. Below it the run pauses itself
    with an alert (nothing is written that could fail half-way) and resumes by itself once space
    is freed; the reserve leaves room for state.json, events and logs meanwhile."""
    writer_nice: int = Field(19, ge=0, le=19)
    """How much lower the background checkpoint writer's CPU priority is than training's (Linux
    nice increment). At 19 the write did not measurably slow training (bench/checkpoint_stall.py)
    but takes longer while training keeps every core busy; it runs at full speed whenever training waits for it (stop, request,
    the next checkpoint). 0 writes at training's priority."""
    replicate_to: ReplicaConfig = ReplicaConfig()
    """Off-box copies of the run after each checkpoint (a directory and/or a command); failures
    are alerts (`replica_failed`) and never touch the local checkpoint or training."""


class DaemonConfig(Section):
    max_restarts: int = Field(5, ge=0)
    """Restarts of a crashed trainer before the run is marked failed."""
    backoff_seconds: float = Field(2.0, ge=0.0)
    """Delay before the first restart; doubles with each further crash."""
    backoff_max_seconds: float = Field(300.0, ge=0.0)
    """Upper bound of the restart delay."""
    system_interval: float = Field(2.0, gt=0.0)
    """Seconds between system samples sent to clients."""


class DistributedConfig(Section):
    nodes: int = Field(1, ge=1)
    """Boxes in the data-parallel run; each runs `longhaul start CONFIG --nodes N --rdzv HOST:PORT`."""
    procs_per_node: int = Field(1, ge=1)
    """Training processes on each box (ranks); world size = nodes x procs_per_node. Each rank uses
    `threads` threads: on one box, procs_per_node x threads should not exceed its cores."""
    rdzv: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_.:\[\]-]+:[0-9]{1,5}$")
    """HOST:PORT of the rendezvous (torchrun's c10d rendezvous, hosted by the box at HOST): every
    box of the run names the same one. Null with nodes 1: a free port on this box."""
    max_restarts: int = Field(3, ge=0)
    """Restarts of the whole worker group by torchrun's elastic agent (a rank died, a node was
    lost) before the agent gives up; then the daemon's crash policy (daemon.max_restarts, with
    backoff) counts one crash and starts the agent again."""
    min_nodes: Optional[int] = Field(None, ge=1)
    """Elastic: train on as few as this many boxes when others are lost (world size changes, with
    a warning: bit-exact resume holds only at a fixed world size). Null: all `nodes` are needed."""
    local_addr: Optional[str] = None
    """This box's address as the other boxes reach it (torchrun's --local-addr); null: its host
    name, which must then resolve to that address on every box (not to 127.0.0.1)."""
    interface: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_.:-]+$")
    """The network interface gloo sends gradients over (GLOO_SOCKET_IFNAME), e.g. eth1 on a box
    with a fast link beside the default one; null: the one the host name resolves to."""
    bucket_cap_mb: float = Field(25.0, gt=0.0)
    """Size of DDP's gradient buckets: each is allreduced as soon as backward has filled it, while
    backward goes on. Smaller buckets overlap more of the allreduce with backward (the first layers'
    bucket is ready only at its end) at the cost of more messages (bench/distributed.py)."""
    timeout_seconds: float = Field(600.0, gt=0.0)
    """How long a rank waits for the others in one collective before the group is restarted (a
    node that stopped answering)."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


NOTIFY_EVENTS = ("finished", "failed", "stopped", "crash", "restart", "new_best", "alert", "resolved",
                 "stalled", "oversubscribed", "evaluation", "report", "*")
"""What a notify rule's `on` may name besides an alert's `what` (trainer/notify.py's `event_names`
says which event is which); `*` is every event."""
ALERT_WHATS = ("nan_loss", "evaluation_failed", "report_missing", "report_failed", "bad_checkpoint", "bad_data",
               "data_unrecorded", "data_changed", "compile_failed", "threads", "last_weights", "disk_full",
               "write_failed", "write_resumed", "disk_space_back", "stop_refused", "starting_over", "history_gap",
               "ema_slow", "no_best", "history", "worker_protocol", "state", "stalled", "cpu_temperature",
               "memory", "swap", "disk_space", "throughput", "loss_spike", "notify_failed", "notify_config",
               "replica_failed", "replica_ok", "node_lost", "world_size")
"""Every `what` of an `alert` event (docs/PROTOCOL.md's table; tests/test_notify.py checks the two
agree): a notify rule may name one, and a misspelt name is an error rather than a rule that never fires."""


class NotifyRule(Section):
    on: list[str] = Field(min_length=1)
    """The events that run `command`: finished, failed, stopped, crash, restart, new_best (an
    evaluation with a new best), alert (any warning or error alert), resolved (an alert that
    ended), stalled (the watchdog), evaluation, report, an alert's `what` (e.g. disk_full,
    cpu_temperature), or `*` for all of them."""
    command: str = Field(min_length=1)
    """Shell command (`sh -c`) run with the event as JSON on stdin and in LONGHAUL_* environment
    variables (LONGHAUL_EVENT, LONGHAUL_RUN, LONGHAUL_HOST, LONGHAUL_LEVEL, LONGHAUL_TITLE,
    LONGHAUL_MESSAGE, LONGHAUL_RUN_DIR); e.g. `curl -s -H "Title: $LONGHAUL_TITLE" -d
    "$LONGHAUL_MESSAGE" https://ntfy.sh/my-topic`."""
    timeout_seconds: float = Field(30.0, gt=0.0)
    """The command is killed (its whole process group) after this long, and the failure alerted."""
    min_interval_seconds: float = Field(300.0, ge=0.0)
    """At most one message per event name in this many seconds: a flapping alert sends one
    message, and the next one says how many were held back. A run's end always goes out."""

    @model_validator(mode="before")
    @classmethod
    def _on_is_a_key(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean true
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @field_validator("on")
    @classmethod
    def _known_events(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in NOTIFY_EVENTS and name not in ALERT_WHATS:
                close = difflib.get_close_matches(name, NOTIFY_EVENTS + ALERT_WHATS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"unknown event {name!r}: {hint}events are {', '.join(NOTIFY_EVENTS)} "
                                 "or an alert's `what` (docs/PROTOCOL.md)")
        return names


SHORT_STALL = 60.0
"""A `watchdog.stall_seconds` below this is warned about (config_warnings)."""


class WatchdogConfig(Section):
    stall_seconds: Optional[float] = Field(None, gt=0.0)
    """Alert (`stalled`) when the trainer completes no step and no evaluation batch for this long;
    null: 20 times the median step time, at least 300 s. The trainer's Python stacks then go to
    train.log. Before the first step (data scan, model set-up, compile) the limit is
    `setup_seconds`, and a paused run is never stalled."""
    setup_seconds: float = Field(1800.0, gt=0.0)
    """The stall limit before a trainer's first step (feature-store preparation reports progress
    of its own and counts as life)."""
    restart: bool = False
    """Kill a stalled trainer and restart it from its last checkpoint (the `daemon` restart policy
    and its limits apply). Off: the alert and the stacks only."""


class AlertsConfig(Section):
    cpu_temp_c: Optional[float] = Field(90.0, gt=0.0)
    """Alert `cpu_temperature` at this CPU temperature (°C; null: off); over when 5 °C below."""
    mem_percent: Optional[float] = Field(95.0, gt=0.0, le=100.0)
    """Alert `memory` when RAM in use (total minus available) reaches this share; over 5 points below."""
    swap_percent: Optional[float] = Field(50.0, gt=0.0, le=100.0)
    """Alert `swap` when this share of swap is in use (a box that swaps trains several-fold slower)."""
    disk_free_gb: Optional[float] = Field(5.0, ge=0.0)
    """Alert `disk_space` when the run directory's file system has less free (GB); over at 1.2x.
    The run pauses by itself much later, at `checkpoint.min_free_mb`."""
    throughput_share: Optional[float] = Field(0.5, gt=0.0, lt=1.0)
    """Alert `throughput` when samples/s stays below this share of the phase's median; over at
    the midpoint between it and the median. Not while the `oversubscribed` alert explains it."""
    throughput_seconds: float = Field(60.0, gt=0.0)
    """How long samples/s must stay low (or be back) before the `throughput` alert starts (ends)."""
    loss_spike_factor: Optional[float] = Field(3.0, gt=1.0)
    """Alert `loss_spike` when the training loss exceeds this multiple of its median over the last
    200 records; over once back below the midpoint (a non-finite loss is the trainer's own
    `nan_loss` alert)."""
    confirm: int = Field(3, ge=1)
    """Consecutive readings (system samples, or history records for the loss) on the other side of
    a threshold before an alert starts or ends: no flapping."""


class PipelineConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)
    """The pipeline's name: its run is NAME-<this>."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Config overrides of this pipeline, dotted keys as with --set (e.g. `features.kind: mfcc`)."""


class RunConfig(Section):
    name: Optional[str] = None
    """Default run name (the file name without .yaml when absent)."""
    seed: int = 0
    """Seed of everything: data order, augmentation, initialisation, dropout."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model trains and evaluates: auto (CUDA when torch sees a GPU, else the CPU),
    cpu, or cuda (an error at start when there is no GPU). On CUDA the run uses deterministic
    algorithms, so a resumed run equals an uninterrupted one on the same GPU model."""
    threads: int = Field(2, ge=1)
    """torch intra-op threads. Results are bit-identical only with the same thread count."""
    threads_follow_load: bool = True
    """Use fewer threads while other processes keep cores busy, and `threads` again when the box
    is quiet (checked every 5 s; each change is an event). On 2 cores beside one busy process a
    2-thread run keeps 28% of its speed, 1 thread 61% (bench/omp_wait.py). Numerics depend on
    the thread count: false pins it, for runs that must be bit-identical to another."""
    max_steps: Optional[int] = Field(None, ge=1)
    """Stop after this many optimizer steps (smoke tests); null: run the whole plan."""
    log_every: int = Field(1, ge=1)
    """Write a history record every N optimizer steps."""
    data: DataConfig = DataConfig()
    """Dataset and loading."""
    features: FeaturesConfig = FeaturesConfig()
    """Feature extraction."""
    augment: AugmentConfig = AugmentConfig()
    """Training-time augmentation."""
    model: ModelConfig = ModelConfig()
    """Model."""
    optim: OptimConfig = OptimConfig()
    """Optimizer and batching."""
    loss: LossConfig = LossConfig()
    """Loss function."""
    schedule: ScheduleConfig = ScheduleConfig()
    """Learning-rate schedule."""
    phases: list[PhaseConfig] = Field(default_factory=lambda: [PhaseConfig(name="train", epochs=10)])
    """The phase plan, run in order."""
    eval: EvalConfig = EvalConfig()
    """Evaluation, EMA and early stopping."""
    checkpoint: CheckpointConfig = CheckpointConfig()
    """Checkpointing and retention."""
    daemon: DaemonConfig = DaemonConfig()
    """Daemon supervision (longhaul start)."""
    distributed: DistributedConfig = DistributedConfig()
    """Data-parallel training over processes and boxes (torch.distributed, gloo, under torchrun):
    the global batch is optim.batch_size, split evenly over the ranks."""
    watchdog: WatchdogConfig = WatchdogConfig()
    """The daemon's stall watchdog."""
    alerts: AlertsConfig = AlertsConfig()
    """Threshold alerts the daemon raises from its system samples and the history."""
    pipelines: list[PipelineConfig] = Field(default_factory=list)
    """Pipelines side by side: `start` makes one queued run per pipeline (NAME-<pipeline>: this
    config with the pipeline's `set`) and, once all have ended, a comparison in ROOT/NAME/."""
    notify: list[NotifyRule] = Field(default_factory=list)
    """Commands run on events of this run (added to the rules of ~/.config/longhaul/notify.yaml)."""
    tta: TtaConfig = TtaConfig()
    """Test-time augmentation (after the run: evaluate --tta, predict --tta)."""

    # Paths in the config are relative to the config file; `base_dir` is set by load_config.
    _base_dir: Path = Path(".")

    def summary(self) -> dict:
        """What a dashboard shows of the config (the snapshot's and plan.json's `config`); the
        trainer adds the classes it found and the split sizes."""
        return {"model": self.model.name, "source": self.data.source, "features": self.features.kind,
                "classes": list(self.data.classes) if self.data.classes else None, "threads": self.threads,
                "batch_size": self.optim.batch_size, "accum_steps": self.optim.accum_steps, "seed": self.seed,
                "monitor": self.eval.monitor, "mode": self.eval.mode,
                "min_delta": self.eval.early_stopping.min_delta}

    def resolve_path(self, value: Optional[str]) -> Optional[Path]:
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self._base_dir / path)

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)


TIMM_FREE_MODELS = ("cnn1d_attention", "mfcc_mlp")


# ----------------------------------------------------------------------------- loading
def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`key.path=value` strings -> (dotted key, YAML-typed value)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", [(item, "expected KEY=VALUE, e.g. optim.lr=0.001")])
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError("--set", [(key, f"value {raw!r} is not valid YAML: {exc}")]) from exc
        parsed.append((key.strip(), value))
    return parsed


def apply_overrides(raw: dict, overrides: list[tuple[str, Any]]) -> dict:
    """Set dotted keys (list items by index: phases.0.epochs) in a copy of the raw mapping."""
    raw = copy.deepcopy(raw)
    for key, value in overrides:
        parts = key.split(".")
        node: Any = raw
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError("--set", [(key, f"{part!r} is not an index of a {len(node)}-item list")])
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
                    if not isinstance(node, (dict, list)):
                        raise ConfigError("--set", [(key, f"{'.'.join(parts[:i+1])} is not a section")])
    return raw


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: Unknown keys that other tools (and the issues that asked for the feature) spell another way:
#: the error names longhaul's key instead of leaving the reader to find it in docs/CONFIG.md.
OTHER_NAMES = {"variants": "pipelines"}


def _pydantic_problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden" and key in OTHER_NAMES:
            problems.append((key, f"unknown key: did you mean `{OTHER_NAMES[key]}:`? (see docs/CONFIG.md)"))
        elif err["type"] == "extra_forbidden":
            problems.append((key, "unknown key (check the spelling; see docs/CONFIG.md)"))
        elif err["type"] == "missing":
            problems.append((key, "required key is missing"))
        else:
            problems.append((key, f"{err['msg']}; found {_describe(err.get('input'))}"))
    return problems


def _semantic_problems(cfg: RunConfig, check_paths: bool, check_model: bool) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    data = cfg.data
    if data.source in ("audio_folder", "image_folder"):
        if not data.root:
            problems.append(("data.root", f"required for source {data.source!r}"))
        elif check_paths and not cfg.resolve_path(data.root).is_dir():
            problems.append(("data.root", f"folder not found: {cfg.resolve_path(data.root)}"))
    if data.source in ("json_waveforms", "csv"):
        if not data.train:
            problems.append(("data.train", f"required for source {data.source!r}"))
        for key in ("train", "val", "test"):
            value = getattr(data, key)
            if value and check_paths and not cfg.resolve_path(value).is_file():
                problems.append((f"data.{key}", f"file not found: {cfg.resolve_path(value)}"))
    if data.source == "image_folder" and cfg.features.kind != "image":
        problems.append(("features.kind", f"source image_folder needs kind 'image', found {cfg.features.kind!r}"))
    if data.source not in ("image_folder", "csv") and cfg.features.kind == "image":
        problems.append(("features.kind", f"kind 'image' needs source image_folder or csv, found {data.source!r}"))
    if cfg.features.kind == "mfcc" and cfg.features.n_mfcc > cfg.features.n_mels:
        problems.append(("features.n_mfcc", f"must be <= features.n_mels ({cfg.features.n_mels}), found {cfg.features.n_mfcc}"))
    if cfg.model.name == "cnn1d_attention" and cfg.features.kind != "waveform":
        problems.append(("features.kind", "model cnn1d_attention needs kind 'waveform'"))
    if cfg.model.name == "mfcc_mlp" and cfg.features.kind != "mfcc":
        problems.append(("features.kind", "model mfcc_mlp needs kind 'mfcc'"))
    if cfg.features.kind == "waveform" and cfg.model.name not in TIMM_FREE_MODELS:
        problems.append(("model.name", f"raw waveforms need model cnn1d_attention, found {cfg.model.name!r}"))
    if cfg.features.f_max is not None and data.sample_rate != "auto" and cfg.features.f_max > data.sample_rate / 2:
        problems.append(("features.f_max", f"must be <= sample_rate/2 = {data.sample_rate / 2}, found {cfg.features.f_max}"))
    if cfg.model.pretrained and check_paths and not cfg.resolve_path(cfg.model.pretrained).is_file():
        problems.append(("model.pretrained", f"weights file not found: {cfg.resolve_path(cfg.model.pretrained)}"))
    if check_model:
        problem = check_model_name(cfg.model.name)
        if problem:
            problems.append(("model.name", problem))
    problems += _plan_problems(cfg) + _tta_problems(cfg) + _store_problems(cfg, check_paths) + _fold_problems(cfg)
    problems += _pipeline_problems(cfg) + _distributed_problems(cfg)
    return problems


def _distributed_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    """Every rank takes an equal share of each batch: the global batch must divide evenly."""
    d = cfg.distributed
    problems = []
    if d.nodes > 1 and d.rdzv is None:
        problems.append(("distributed.rdzv", f"required with {d.nodes} nodes: HOST:PORT of the rendezvous, the "
                                             "same on every box (e.g. the first box's address and a free port)"))
    if d.min_nodes is not None and d.min_nodes > d.nodes:
        problems.append(("distributed.min_nodes", f"must be <= distributed.nodes ({d.nodes}), found {d.min_nodes}"))
    if not d.enabled:
        return problems
    sizes = [("optim.batch_size", cfg.optim.batch_size)]
    sizes += [(f"phases.{i}.batch_size", p.batch_size) for i, p in enumerate(cfg.phases) if p.batch_size]
    worlds = [n * d.procs_per_node for n in range(d.min_nodes or d.nodes, d.nodes + 1)]  # elastic: each may come
    for key, size in sizes:
        uneven = [w for w in worlds if size % w]
        if uneven:
            problems.append((key, f"the global batch {size} does not split evenly over world size "
                                  f"{', '.join(map(str, uneven))} ({d.procs_per_node} process(es) on each of "
                                  f"{'up to ' if len(worlds) > 1 else ''}{d.nodes} node(s)): use a multiple of "
                                  f"{math.lcm(*worlds)}"))
    return problems


def _fold_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    """A fold index out of range; folds with a feature store, whose splits are fixed when it is
    prepared (the folds are cut from the scanned pool in memory)."""
    folds = cfg.data.folds
    if folds.k is None:
        return []
    problems = []
    if folds.index >= folds.k:
        problems.append(("data.folds.index", f"must be < data.folds.k ({folds.k}), found {folds.index}"))
    if cfg.data.store is not None:
        problems.append(("data.folds.k", "cross-validation folds are cut from the scanned training split in "
                                         "memory; a feature store (data.store) holds fixed splits: unset "
                                         "data.store for cross-validation"))
    return problems


def _store_problems(cfg: RunConfig, check_paths: bool) -> list[tuple[str, str]]:
    """Settings that only a feature store can honour, and store settings that cannot work."""
    data = cfg.data
    problems = []
    if data.store is None:
        if data.variants.count:
            problems.append(("data.variants.count", "pre-augmented variants are made in a feature store: set data.store"))
        if data.windows.enabled:
            problems.append(("data.windows.enabled", "windows of long recordings are read from a feature store: "
                                                     "set data.store"))
    elif data.source == "synthetic" and (data.variants.count or data.windows.enabled):
        problems.append(("data.source", "variants and windows need recordings (synthetic data has none)"))
    low, high = data.variants.noise_snr_db
    if low > high:
        problems.append(("data.variants.noise_snr_db", f"expected [low, high] with low <= high, found {[low, high]}"))
    noise = data.variants.noise_dir
    if noise and check_paths and not cfg.resolve_path(noise).is_dir():
        problems.append(("data.variants.noise_dir", f"folder not found: {cfg.resolve_path(noise)}"))
    if data.windows.enabled and data.duration != "auto" and data.windows.max_seconds < data.duration:
        problems.append(("data.windows.max_seconds", f"must be >= data.duration ({data.duration:g} s), "
                                                     f"found {data.windows.max_seconds:g}"))
    return problems


def _tta_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    """Transforms of the other kind of input (a flip of audio, a shift of an image)."""
    if cfg.tta.transforms is None:
        return []
    image = cfg.features.kind == "image"
    wrong = [name for name in cfg.tta.transforms
             if parse_tta(name)[0] in (TTA_AUDIO_OPS if image else TTA_IMAGE_OPS)]
    if not wrong:
        return []
    takes = "original, hflip, vflip, rotate, brightness, contrast" if image else "original, shift"
    return [("tta.transforms", f"{', '.join(wrong)} cannot apply to {'images' if image else 'audio'} "
                               f"(features.kind {cfg.features.kind!r} takes {takes})")]


def _pipeline_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    names = [p.name for p in cfg.pipelines]
    twice = sorted({n for n in names if names.count(n) > 1})
    problems = [("pipelines", f"two pipelines are named {n!r}: each names a run") for n in twice]
    problems += [(f"pipelines.{i}.set", "a pipeline cannot list pipelines") for i, p in enumerate(cfg.pipelines)
                 if "pipelines" in p.set]
    return problems


def _plan_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    problems = []
    names = [p.name for p in cfg.phases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(("phases", f"phase names must be unique, found repeated {dupes}"))
    total = cfg.total_epochs
    for epoch in cfg.schedule.restarts:
        if not 0 < epoch < total:
            problems.append(("schedule.restarts", f"restart epoch {epoch} is outside the run's 1..{total - 1} epochs"))
    if cfg.schedule.restarts != sorted(set(cfg.schedule.restarts)):
        problems.append(("schedule.restarts", f"must be strictly increasing, found {cfg.schedule.restarts}"))
    if cfg.schedule.warmup_epochs >= total:
        problems.append(("schedule.warmup_epochs", f"must be shorter than the run ({total} epochs), found {cfg.schedule.warmup_epochs}"))
    if cfg.data.source == "synthetic":
        n_train = cfg.data.synthetic.classes * cfg.data.synthetic.train_per_class
        for i, phase in enumerate(cfg.phases):
            batch = (phase.batch_size or cfg.optim.batch_size) * (phase.accum_steps or cfg.optim.accum_steps)
            if batch > n_train:
                problems.append((f"phases.{i}", f"one step needs {batch} samples but the training set has {n_train}"))
    problems += _monitor_problems(cfg)
    return problems


def config_warnings(cfg: RunConfig) -> list[tuple[str, str]]:
    """(key, reason) of settings that are valid but very likely not what was meant. Printed by
    `train`, `start` and `check-data`; they do not stop a run (the shipped presets freeze the
    backbone first, which is right with model.pretrained set and harmless without it)."""
    warnings = []
    if not cfg.model.pretrained:
        for i, phase in enumerate(cfg.phases):
            if phase.trainable < 1.0:
                what = ("trains only the classifier on a random, frozen backbone: it cannot learn useful "
                        "features, and its evaluations do not count toward early-stopping patience"
                        if phase.trainable == 0.0 else
                        f"freezes {1.0 - phase.trainable:.0%} of a random backbone (never trained)")
                warnings.append((f"phases.{i}.trainable", f"phase {phase.name!r} {what}, because model.pretrained "
                                 "is null; set model.pretrained to a weights file, or trainable: 1.0"))
    if cfg.data.balanced_sampler and cfg.loss.class_weights == "balanced":
        warnings.append(("loss.class_weights", "'balanced' with data.balanced_sampler corrects the imbalance twice: "
                         "the sampler already draws every class equally often, and the weights then favour the "
                         "rare classes again; keep one of them"))
    stall = cfg.watchdog.stall_seconds
    if stall is not None and stall < SHORT_STALL:
        warnings.append(("watchdog.stall_seconds", f"{stall:g} s: a validation batch, a checkpoint write or a busy "
                         f"box can keep a healthy trainer quiet that long (evaluation reports every 10 s); "
                         f"with watchdog.restart it is then killed. Null derives it from the step time"))
    return warnings + _mode_against_monitor(cfg) + _unused_data_paths(cfg)


def _mode_against_monitor(cfg: RunConfig) -> list[tuple[str, str]]:
    """A warning, not an error: a run made before the mode was inferred must still resume."""
    better = direction_of(cfg.eval.monitor)
    if cfg.eval.mode == better:
        return []
    return [("eval.mode", f"{cfg.eval.mode!r} with eval.monitor {cfg.eval.monitor!r}, which is better when "
                          f"{'smaller' if better == 'min' else 'larger'}: best.pt, early stopping and plateau "
                          f"would follow the worst evaluation; leave eval.mode out or set it to {better!r}")]


def _unused_data_paths(cfg: RunConfig) -> list[tuple[str, str]]:
    """data.root or data.train/val/test set where the source reads the other kind (typically left
    over from the preset after switching data.source)."""
    data = cfg.data
    folders = data.source in ("audio_folder", "image_folder")
    if folders:
        unused = [key for key in ("train", "val", "test") if getattr(data, key)]
        why = f"source {data.source} reads the splits from data.root's train/val/test folders"
    else:
        unused = ["root"] if data.root and data.source != "synthetic" else []
        why = f"source {data.source} reads data.train/val/test files"
    return [(f"data.{key}", f"{getattr(data, key)!r} is not used: {why}") for key in unused]


def _monitor_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    """eval.monitor must be a metric evaluation produces. Some exist only for two classes
    (val_auc_roc, val_sensitivity, ...): checked here when the class count is known from the
    config (synthetic data, data.classes); otherwise the engine checks once the data is built."""
    from trainer.monitor import monitor_metrics, monitor_problem

    monitor = cfg.eval.monitor
    if monitor not in monitor_metrics(2) | monitor_metrics(3):
        return [("eval.monitor", f"unknown metric {monitor!r}; evaluation produces "
                                 f"{', '.join(sorted(monitor_metrics(2)))}")]
    classes = (cfg.data.synthetic.classes if cfg.data.source == "synthetic"
               else len(cfg.data.classes) if cfg.data.classes else None)
    problem = monitor_problem(monitor, classes) if classes else None
    return [("eval.monitor", problem)] if problem else []


def check_model_name(name: str) -> Optional[str]:
    """None when `name` is a model longhaul can build, else the reason (with close matches)."""
    if name in TIMM_FREE_MODELS:
        return None

    from trainer.model_names import timm_models  # cached: `start` does not pay a timm import

    names = timm_models()
    if name in names:
        return None
    close = difflib.get_close_matches(name, names + list(TIMM_FREE_MODELS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown model {name!r} (a timm model name or one of {', '.join(TIMM_FREE_MODELS)}){hint}"


def read_yaml(path: Path, empty_ok: bool = False) -> dict:
    """The YAML mapping in `path`; `empty_ok`: an empty file (or only comments) is {} rather than
    an error (a notify file whose rules are all commented out)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [("", f"cannot read file: {exc.strerror}")]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [("", f"not valid YAML: {exc}")]) from exc
    if raw is None and empty_ok:
        return {}
    if raw is None:  # empty, or only comments: e.g. a run's config.yaml cut by a power loss
        raise ConfigError(str(path), [("", "the file is empty (no keys at all): an empty config "
                                           "never loads as all defaults")])
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [("", f"expected a mapping of keys at the top, found {type(raw).__name__}")])
    return raw


def build_config(raw: dict, source: str, base_dir: Path, check_paths: bool = True,
                 check_model: bool = True) -> RunConfig:
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, _pydantic_problems(exc)) from None
    cfg._base_dir = base_dir
    problems = _semantic_problems(cfg, check_paths, check_model)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: str | Path, overrides: list[str] = (), check_paths: bool = True,
                check_model: bool = True) -> RunConfig:
    """Load, override and validate a config file. Raises ConfigError listing every problem."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), parse_overrides(list(overrides)))
    cfg = build_config(raw, str(path), path.resolve().parent, check_paths, check_model)
    if cfg.name is None:
        cfg.name = path.stem
    return cfg


def resolved_dict(cfg: RunConfig) -> dict:
    """The config as plain data with data paths made absolute (what the run directory stores)."""
    data = cfg.model_dump(mode="json")
    for key in ("root", "train", "val", "test", "store"):
        if data["data"][key]:
            data["data"][key] = str(cfg.resolve_path(data["data"][key]).resolve())
    noise = data["data"]["variants"]["noise_dir"]
    if noise:  # the run directory's copy must name the same folders as the config it came from
        data["data"]["variants"]["noise_dir"] = str(cfg.resolve_path(noise).resolve())
    if data["model"]["pretrained"]:
        data["model"]["pretrained"] = str(cfg.resolve_path(data["model"]["pretrained"]).resolve())
    replica = data["checkpoint"]["replicate_to"]
    if replica["dir"]:  # the run directory's copy has another base directory than the config file
        replica["dir"] = str(cfg.resolve_path(replica["dir"]).absolute())
    return data


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(resolved_dict(cfg), sort_keys=False)


def _schema_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, Section):
            rows.append((key, "section", "", field.description or ""))
            rows += _schema_rows(ann, key + ".")
            continue
        if key in LIST_SECTIONS:
            model, label = LIST_SECTIONS[key]
            rows.append((key, label, "", field.description or ""))
            rows += _schema_rows(model, f"{key}[].")
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        type_name = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
        rows.append((key, type_name, default, " ".join((field.description or "").split())))
    return rows


LIST_SECTIONS = {"phases": (PhaseConfig, "list of phases"), "notify": (NotifyRule, "list of rules"),
                 "pipelines": (PipelineConfig, "list of pipelines")}


def config_docs() -> str:
    """Markdown reference of every key, generated from the field docstrings."""
    lines = ["# Config reference", "",
             "Generated from `trainer/config.py` by `longhaul config-docs`; do not edit by hand.", "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    for key, type_name, default, doc in _schema_rows(RunConfig):
        lines.append(f"| `{key}` | {type_name.replace('|', '/')} | {default.replace('|', '/')} | {doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"

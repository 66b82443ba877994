"""Audio class folders on disk (`data.source: audio_folder`) for the tests that read real files."""
from __future__ import annotations

from pathlib import Path


def write_audio_folders(root: Path, per_class: int) -> Path:
    """root/{train,val}/{bird,insect}/ with `per_class` half-second noise clips at 8 kHz, and one
    corrupt file in train/bird (returned)."""
    import numpy as np
    import soundfile as sf

    for split in ("train", "val"):
        for label in ("bird", "insect"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                sf.write(folder / f"{i}.wav", np.random.default_rng(i).normal(size=4000) * 0.1, 8000)
    bad = root / "train" / "bird" / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage")
    return bad

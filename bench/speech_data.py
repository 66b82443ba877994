"""A spoken command-word data set made here with espeak-ng (and sox), with speaker-disjoint splits.

    python bench/speech_data.py ROOT [--size default|quick|small] [--seed 0] [--words yes,no,...]

writes ROOT/{train,val,test}/<word>/*.wav and ROOT/manifest.json. A *speaker* is an espeak-ng
accent plus a voice variant (en-gb+m3, en-us+f2, ...). The variants are dealt out to the splits
first, so no variant that speaks in validation or test ever speaks in training: the validation
and test voices are unseen. Each clip also gets its own speed, pitch, tempo (sox), gain, leading
silence and background noise (numpy), all drawn from --seed: the same seed writes the same files.

Clips are written at espeak-ng's native 22050 Hz unless --rate is given (sox resamples), so
`data.sample_rate: auto` has a native rate to find. Two worker processes at most (2-core box).
Importable: `generate(root, size="default", seed=0, words=WORDS) -> manifest dict`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# Accents of espeak-ng's own (gmw) English voices; mbrola voices need extra packages.
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc")
# Voice variants that sound like people (no robots, whispers or croaks), shuffled into splits.
# Left out: the variants whose formants 1-3 leave 70-150% of espeak-ng's default voice (adult
# vocal tracts stay within it; women and children are about +15-40%): Andy (F3 at 0%), boris (57%),
# gustave, marcelo and Michael (F3 59%), Jacky (15%), Lee (9%), travis (F1 50%). Read from
# espeak-ng-data/voices/!v; no person speaks like that, and a test voice of them measures the voice.
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
            "adam", "Alex", "Alicia", "Andrea", "Annie", "antonio", "aunty", "belinda",
            "benjamin", "caleb", "david", "ed", "edward", "Gene", "Henrique",
            "Hugo", "iven", "john", "linda", "Marco", "Mario", "max",
            "michel", "miguel", "Mike", "Nguyen", "pablo", "paul", "pedro", "quincy",
            "rob", "robert", "steph", "zac", "anika", "grandpa", "grandma", "norbert", "sandro",
            "shelby", "victor", "Denis", "Diogo")
# Clips per word of each split, and the share of the variants each split gets.
# default: 2,400 training clips, enough voices x words for a model to hear past the voice; 300
# each for validation and test, so one clip is a third of a percent. quick: the test suite's.
SIZES = {"default": {"train": 240, "val": 30, "test": 30}, "quick": {"train": 100, "val": 10, "test": 10},
         "small": {"train": 12, "val": 4, "test": 4}}
VARIANT_SHARE = {"train": 0.6, "val": 0.2, "test": 0.2}
NATIVE_RATE = 22050
WORKERS = 2


class ToolMissing(RuntimeError):
    """espeak-ng or sox is not installed."""


def tools_missing() -> list[str]:
    return [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]


def split_voices(seed: int) -> dict[str, list[str]]:
    """Variants per split, disjoint, drawn from `seed`; each split gets every accent."""
    rng = np.random.default_rng([seed, 1])
    variants = [VARIANTS[i] for i in rng.permutation(len(VARIANTS))]
    n_val = round(len(variants) * VARIANT_SHARE["val"])
    n_test = round(len(variants) * VARIANT_SHARE["test"])
    return {"train": sorted(variants[n_val + n_test:]), "val": sorted(variants[:n_val]),
            "test": sorted(variants[n_val:n_val + n_test])}


def plan(root: Path, size: str, seed: int, words=WORDS, rate: Optional[int] = None) -> list[dict]:
    """Every clip to make, with all its random choices drawn here (so workers draw nothing)."""
    voices = split_voices(seed)
    jobs = []
    for s, split in enumerate(("train", "val", "test")):
        per_word = SIZES[size][split]
        for w, word in enumerate(words):
            rng = np.random.default_rng([seed, 2, s, w])
            for i in range(per_word):
                variant = voices[split][(i + w) % len(voices[split])]
                accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
                jobs.append({
                    "path": str(root / split / word / f"{word}_{accent}+{variant}_{i:03d}.wav"),
                    "word": word, "voice": f"{accent}+{variant}",
                    "speed": int(rng.integers(120, 200)), "pitch": int(rng.integers(25, 75)),
                    "tempo": round(float(rng.uniform(0.9, 1.1)), 3),
                    "gain_db": round(float(rng.uniform(-6.0, 0.0)), 2),
                    "lead_s": round(float(rng.uniform(0.0, 0.15)), 3),
                    "snr_db": round(float(rng.uniform(20.0, 40.0)), 1),
                    "noise_seed": int(rng.integers(2**31)), "rate": rate,
                })
    return jobs


def make_clip(job: dict) -> float:
    """Speak one word into job['path']; returns the clip's length in seconds."""
    import soundfile

    path = Path(job["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spoken, shaped = Path(tmp) / "spoken.wav", Path(tmp) / "shaped.wav"
        subprocess.run(["espeak-ng", "-v", job["voice"], "-s", str(job["speed"]), "-p", str(job["pitch"]),
                        "-w", str(spoken), job["word"]], check=True, capture_output=True)
        effects = ["tempo", str(job["tempo"]), "gain", str(job["gain_db"])]
        if job["rate"]:
            effects += ["rate", str(job["rate"])]
        subprocess.run(["sox", str(spoken), str(shaped), *effects], check=True, capture_output=True)
        wave, rate = soundfile.read(str(shaped), dtype="float32")
    rng = np.random.default_rng(job["noise_seed"])
    wave = np.concatenate([np.zeros(int(job["lead_s"] * rate), np.float32), wave])
    power = float(np.mean(wave ** 2)) or 1e-8
    noise = rng.standard_normal(len(wave)).astype(np.float32) * np.sqrt(power / 10 ** (job["snr_db"] / 10))
    soundfile.write(str(path), np.clip(wave + noise, -1.0, 1.0), rate, subtype="PCM_16")
    return len(wave) / rate


def generate(root, size: str = "default", seed: int = 0, words=WORDS, rate: Optional[int] = None,
             workers: int = WORKERS) -> dict:
    """Write the data set under `root` (replacing its splits) and return its manifest."""
    missing = tools_missing()
    if missing:
        raise ToolMissing(f"{' and '.join(missing)} not installed (Debian: apt-get install espeak-ng sox)")
    root = Path(root)
    for split in ("train", "val", "test"):
        shutil.rmtree(root / split, ignore_errors=True)
    jobs = plan(root, size, seed, tuple(words), rate)
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=max(1, min(workers, WORKERS))) as pool:
        lengths = list(pool.map(make_clip, jobs, chunksize=16))
    voices = {split: sorted({j["voice"] for j in jobs if f"/{split}/" in j["path"]}) for split in ("train", "val", "test")}
    manifest = {
        "words": list(words), "size": size, "seed": seed, "sample_rate": rate or NATIVE_RATE,
        "clips": {split: sum(f"/{split}/" in j["path"] for j in jobs) for split in ("train", "val", "test")},
        "variants": split_voices(seed), "voices": voices,
        "length_s": {"min": round(min(lengths), 3), "p95": round(float(np.percentile(lengths, 95)), 3),
                     "max": round(max(lengths), 3)},
        "seconds": round(time.monotonic() - started, 1),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--small", dest="size", action="store_const", const="small", help="= --size small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--words", default=",".join(WORDS), help="comma-separated vocabulary")
    parser.add_argument("--rate", type=int, default=None, help="resample to this rate (default: native 22050 Hz)")
    parser.add_argument("--workers", type=int, default=WORKERS)
    args = parser.parse_args(argv)
    try:
        manifest = generate(args.root, args.size, args.seed, args.words.split(","), args.rate, args.workers)
    except ToolMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{sum(manifest['clips'].values())} clips in {manifest['seconds']} s: {manifest['clips']} -> {args.root}")
    print(json.dumps(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())

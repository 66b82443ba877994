"""Data at its real scale (issue 12): the feature store against the old decode-everything start.

    python bench/data_scale.py [--files 50000] [--images 5000] [--small 5000] [--out DIR]
                               [--steps 40] [--rounds 2] [--corpus DIR] [--rate 16000] [--quick]

Makes (or reuses) corpora of bench/corpus.py: `--files` WAV files, a `--small` one of the same
kind, and `--images` PNG images (`--rate 44100`: WAV files at 44.1 kHz, as recordings often
are, which the old way at every start and prepare once resample to 16 kHz). Then, side by side
in one run, every figure of the issue's benchmark, each through the `longhaul` command as a user
runs it (children; the runs root, registry and runtime directory are private to OUT):

- prepare throughput (files/s) of `longhaul prepare --workers 1` and `--workers 2` against the
  old way: one process decoding (trainer.data.decode) and computing log-mels
  (FeatureExtractor.raw_batch, 64 at a time, data.threads torch threads) as the in-RAM cache
  was filled at every start; the same for the images (decode + resize);
- re-prepare time of the big store on unchanged data;
- training samples/s from the store against the in-RAM cache (data.cache, no store) on the small
  corpus, same config and steps, `--rounds` alternations; the engine's data-loading share of step
  time (history's data_share: seconds waiting for the loader / step time), medians after a warm-up;
  and the training DataLoader alone (no model: the data path's own samples/s), store against cache;
- peak RSS (ru_maxrss of the `longhaul train` child) of store-backed runs at the small and the big
  corpus (same steps), and of the in-RAM cache at the big one (the old way, for contrast);
- time from `longhaul resume` (daemon) and from a foreground `longhaul train` of the stopped run
  directory to the first new step at the big corpus;
- store disk use, float16 against float32 (the small corpus prepared both ways);
- on paper, from those figures: 1,500 classes x 500 examples.

Progress goes to stderr; the last line of stdout is one JSON object. The model is the
quickstart's (EfficientNet-B0 on 64-band log-mels of 1 s at 16 kHz, batch 32, 2 threads).
--quick (the test's) leaves out the 1-worker prepares, float32, the cache run at the big corpus
and the foreground resume.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import corpus  # noqa: E402

LOADER_BATCHES = 300  # batches of the loader-alone measurement
WARMUP_STEPS = 5  # steps left out of the medians: first batches, allocator, thread pools
OLD_WAY_CHUNK = 64  # trainer.data.datasets.FEATURE_CHUNK: examples per feature batch at start-up
PAPER = {"classes": 1500, "per_class": 500, "n_mels": 128, "frames": 313}
T0 = time.monotonic()


def log(message: str) -> None:
    elapsed = time.monotonic() - T0
    print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {message}", file=sys.stderr, flush=True)


class Bench:
    """Where everything goes (OUT), the children's environment, and the command runner."""

    def __init__(self, out: Path, base: str, steps: int, extra: list[str]):
        self.out = out
        self.base = base
        self.steps = steps
        self.extra = extra
        for sub in ("configs", "logs", "runs", "stores", "state"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        # a socket path must fit in 108 bytes: the runtime directory is short, private and new
        self.runtime = Path(tempfile.mkdtemp(prefix="lh-ds-"))
        os.chmod(self.runtime, 0o700)
        self.env = dict(os.environ, LONGHAUL_ROOT=str(out / "runs"), LONGHAUL_STATE_DIR=str(out / "state"),
                        XDG_RUNTIME_DIR=str(self.runtime),
                        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def config(self, name: str, base: str, changes: dict) -> Path:
        """OUT/configs/NAME.yaml: configs/BASE with dotted `changes` (then --set extras) applied."""
        from trainer.config import apply_overrides, parse_overrides, read_yaml

        raw = apply_overrides(read_yaml(ROOT / "configs" / base), list(changes.items()))
        raw = apply_overrides(raw, parse_overrides(self.extra))
        raw["name"] = name
        path = self.out / "configs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def command(self, name: str, *args: str) -> subprocess.Popen:
        """`longhaul ARGS` as a child, its stdout and stderr to OUT/logs/NAME.log."""
        log_file = open(self.out / "logs" / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", *args], cwd=ROOT, env=self.env,
                                stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()
        return proc

    def run(self, name: str, *args: str) -> dict:
        """Run `longhaul ARGS` to its end: wall time, exit code, the child's own peak RSS."""
        started = time.monotonic()
        proc = self.command(name, *args)
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child (and what it waited for)
        proc.returncode = os.waitstatus_to_exitcode(status)
        result = {"wall_s": round(time.monotonic() - started, 2), "exit_code": proc.returncode,
                  "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
        if proc.returncode != 0:
            log(f"  longhaul {' '.join(args)} exited {proc.returncode}; see {self.log_path(name)}")
        return result

    def log_path(self, name: str) -> Path:
        return self.out / "logs" / f"{name}.log"

    def last_line(self, name: str) -> str:
        lines = self.log_path(name).read_text(errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else ""

    def close(self) -> None:
        shutil.rmtree(self.runtime, ignore_errors=True)


# ----------------------------------------------------------------------------- configs
def audio_changes(root: Path, store: Optional[Path], steps: Optional[int], dtype: str = "float16") -> dict:
    """The quickstart on an audio corpus, reading `store` (None: the in-RAM cache, the old way)."""
    return {"data.source": "audio_folder", "data.root": str(root), "data.train": None, "data.val": None,
            "data.test": None, "data.sample_rate": 16000, "data.duration": 1.0,
            "data.store": str(store) if store else None, "data.store_dtype": dtype,
            "data.num_workers": 0, "max_steps": steps, "log_every": 1, "threads": 2}


def image_changes(root: Path, store: Optional[Path], size: int) -> dict:
    """The EfficientNetV2-S image recipe on an image corpus, at `size` px."""
    return {"data.source": "image_folder", "data.root": str(root), "data.image_size": size,
            "data.image_channels": 3, "data.store": str(store) if store else None, "threads": 2}


# ----------------------------------------------------------------------------- prepare
def old_way_loop(config: Path) -> dict:
    """The start-up pass before the store, in this process: scan, then decode and compute features
    one file after another (as datasets._decode_split filled the cache, data.threads threads)."""
    import torch

    from trainer.config import load_config
    from trainer.data.decode import Decoder
    from trainer.data.features import FeatureExtractor
    from trainer.data.sources import scan

    cfg = load_config(config, check_model=False)
    torch.set_num_threads(cfg.threads)
    started = time.monotonic()
    items = [item for split in scan(cfg).splits.values() for item in split]
    decoder, extractor = Decoder.from_config(cfg), FeatureExtractor(cfg)
    pending = []
    for item in items:
        pending.append(item.load(decoder).base)
        if len(pending) == OLD_WAY_CHUNK:
            extractor.raw_batch(pending)
            pending.clear()
    if pending:
        extractor.raw_batch(pending)
    seconds = time.monotonic() - started
    return {"files": len(items), "loop_s": round(seconds, 2), "loop_files_per_s": round(len(items) / seconds, 1),
            "threads": cfg.threads}


def loader_loop(config: Path, batches: int) -> dict:
    """samples/s of the training DataLoader alone (augmentations included, no model): the data
    path's own cost, which a training step's time on a busy box hides in its noise."""
    import torch

    from trainer.config import load_config
    from trainer.data import EpochSampler, build_datasets, make_loader

    cfg = load_config(config, check_model=False)
    torch.set_num_threads(cfg.threads)
    bundle = build_datasets(cfg)  # the cache decodes everything here, untimed, as at a start
    batch = cfg.optim.batch_size
    n = len(bundle.train)
    per_epoch = n // batch * batch
    started, samples, epoch = time.perf_counter(), 0, 0
    while samples < batches * batch:  # whole epochs of a small set, as training goes through them
        length = min(per_epoch, batches * batch - samples)
        loader = make_loader(bundle.train, batch, sampler=EpochSampler(n, cfg.seed, epoch, 0, length),
                             num_workers=cfg.data.num_workers)
        for _, y in loader:
            samples += len(y)
        epoch += 1
    seconds = time.perf_counter() - started
    return {"samples": samples, "seconds": round(seconds, 3), "samples_per_s": round(samples / seconds, 1)}


def child_json(bench: "Bench", *args: str) -> dict:
    """Run this script in a child with `args` (its hidden modes) and read its JSON line."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=ROOT, env=bench.env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"data_scale.py {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def old_way(bench: "Bench", name: str, config: Path) -> dict:
    """The old way in a child process (this one stays small: a child's ru_maxrss starts from its
    parent's at fork), timed at its wall clock, imports included, as `longhaul prepare` is."""
    log(f"old way {name}: decode + features in one process")
    started = time.monotonic()
    result = child_json(bench, "--old-way", str(config))
    wall = time.monotonic() - started
    result.update(wall_s=round(wall, 2), files_per_s=round(result["files"] / wall, 1))
    log(f"  {result['files_per_s']} files/s ({result['loop_files_per_s']} in its loop)")
    return result


def prepare(bench: Bench, name: str, config: Path, workers: int, files: int, fresh: bool = True) -> dict:
    """`longhaul prepare CONFIG --workers N` (a new store unless not `fresh`): wall time, files/s,
    what the last line said (the store's path), the store's size on disk."""
    store = Path(yaml.safe_load(config.read_text())["data"]["store"])
    if fresh and store.exists():
        shutil.rmtree(store)
    log(f"prepare {name}: {files} files, {workers} worker(s)")
    result = bench.run(name, "prepare", str(config), "--workers", str(workers))
    result.update(workers=workers, files=files, files_per_s=round(files / result["wall_s"], 1),
                  last_line=bench.last_line(name), store_bytes=disk_bytes(store))
    result["store_mb"] = round(result["store_bytes"] / 2**20, 1)
    log(f"  {result['wall_s']} s, {result['files_per_s']} files/s, store {result['store_mb']} MiB")
    return result


def disk_bytes(path: Path) -> int:
    """Bytes the files under `path` take on disk (allocated blocks, as du counts)."""
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


# ----------------------------------------------------------------------------- training
def history_figures(run_dir: Path) -> dict:
    """Medians of samples/s and data_share of the run's train records after WARMUP_STEPS."""
    from trainer.history import read_history

    records = [r for r in read_history(run_dir / "history.msgpack") if r.get("kind") == "train"]
    steady = [r for r in records if r["step"] > WARMUP_STEPS] or records
    if not steady:
        return {"steps": 0}
    return {"steps": max(r["step"] for r in records),
            "samples_per_s": round(statistics.median(r["samples_per_s"] for r in steady), 2),
            "data_share": round(statistics.median(r["data_share"] for r in steady), 4)}


def train(bench: Bench, name: str, config: Path) -> dict:
    """A new `longhaul train` run of `config` to its max_steps: RSS, wall time, history medians."""
    run_dir = bench.out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"train {name}" + (f": {bench.steps} steps" if bench.steps else ""))
    result = bench.run(name, "train", str(config), "--run-dir", str(run_dir), "--quiet")
    result.update(history_figures(run_dir))
    log(f"  {result.get('samples_per_s')} samples/s, data share {result.get('data_share')}, "
        f"peak RSS {result['peak_rss_mb']} MiB, wall {result['wall_s']} s")
    return result


def store_vs_cache(bench: Bench, cache_cfg: Path, store_cfg: Path, rounds: int) -> dict:
    """Alternate cache and store runs (machine noise hits both alike); ratio of the medians."""
    runs: dict[str, list] = {"cache": [], "store": []}
    for r in range(rounds):
        for kind, config in (("cache", cache_cfg), ("store", store_cfg)):
            runs[kind].append(train(bench, f"small-{kind}-{r}", config))
    rates = {kind: statistics.median(x.get("samples_per_s") or 0.0 for x in got) for kind, got in runs.items()}
    loader: dict[str, list] = {"cache": [], "store": []}
    for r in range(rounds):
        for kind, config in (("cache", cache_cfg), ("store", store_cfg)):
            log(f"loader alone, {kind}: {LOADER_BATCHES} batches")
            loader[kind].append(child_json(bench, "--loader", str(config))["samples_per_s"])
    loader_rates = {kind: statistics.median(got) for kind, got in loader.items()}
    log(f"  loader samples/s: {loader_rates}")
    return {"rounds": rounds, "runs": runs, "loader_samples_per_s": loader,
            "loader_ratio": round(loader_rates["store"] / loader_rates["cache"], 3),
            "cache_samples_per_s": rates["cache"], "store_samples_per_s": rates["store"],
            "ratio": round(rates["store"] / rates["cache"], 3) if rates["cache"] else None,
            "store_data_share": statistics.median(x.get("data_share") or 0.0 for x in runs["store"]),
            "cache_data_share": statistics.median(x.get("data_share") or 0.0 for x in runs["cache"])}


# ----------------------------------------------------------------------------- resume
def last_step(run_dir: Path) -> int:
    from trainer.history import read_history

    return max((r["step"] for r in read_history(run_dir / "history.msgpack") if r.get("kind") == "train"), default=0)


def wait_for_step(run_dir: Path, after: int, proc: Optional[subprocess.Popen] = None, timeout: float = 300.0) -> float:
    """Seconds until the history holds a train record past step `after` (it is written when the
    step is done); RuntimeError when `proc` ends first or `timeout` passes."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if last_step(run_dir) > after:
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - a resumed run cuts its history back: read it again
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{run_dir}: the run exited ({proc.returncode}) before step {after + 1}")
        time.sleep(0.02)
    raise RuntimeError(f"{run_dir}: no step past {after} within {timeout:.0f} s")


def stop_foreground(proc: subprocess.Popen, timeout: float = 300.0) -> int:
    """SIGINT: the foreground run checkpoints and stops at the next step (killed if it does not)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def foreground_resume(bench: Bench, config: Path, run_dir: Path, name: str, after: int) -> tuple[float, int]:
    """`longhaul train --run-dir RUN` until a step past `after`, then stopped: (seconds, exit code)."""
    started = time.monotonic()
    proc = bench.command(name, "train", str(config), "--run-dir", str(run_dir), "--quiet")
    try:
        wait_for_step(run_dir, after, proc)
        seconds = round(time.monotonic() - started, 2)
    finally:
        code = stop_foreground(proc)
    return seconds, code


def daemon_resume(bench: Bench, run_dir: Path) -> dict:
    """`longhaul resume RUN` (a daemon) until a new step, then `longhaul stop RUN`."""
    stopped = last_step(run_dir)
    cli = [sys.executable, "-m", "trainer.cli"]
    started = time.monotonic()
    launched = subprocess.run(cli + ["resume", str(run_dir)], cwd=ROOT, env=bench.env, capture_output=True,
                              text=True, timeout=120)
    if launched.returncode != 0:
        raise RuntimeError(f"longhaul resume {run_dir}: {launched.stderr.strip()}")
    try:
        wait_for_step(run_dir, stopped)
        seconds = round(time.monotonic() - started, 2)
    finally:  # never leave a daemon behind
        stop = subprocess.run(cli + ["stop", str(run_dir), "--timeout", "300"], cwd=ROOT, env=bench.env,
                              capture_output=True, text=True, timeout=330)
    return {"stopped_at_step": stopped, "daemon_s": seconds, "stop_exit": stop.returncode}


def resume_times(bench: Bench, config: Path, foreground: bool) -> dict:
    """A run of `config` stopped after a few steps, then resumed: seconds from the command to the
    first new step, with `longhaul train --run-dir` (foreground) and with `longhaul resume` (daemon)."""
    run_dir = bench.out / "runs" / "big-resume"
    shutil.rmtree(run_dir, ignore_errors=True)
    log("resume: a run stopped after 3 steps")
    result: dict = {}
    _, result["first_exit"] = foreground_resume(bench, config, run_dir, "big-resume-first", 2)
    if foreground:
        result["foreground_s"], result["foreground_exit"] = foreground_resume(
            bench, config, run_dir, "big-resume-foreground", last_step(run_dir))
        log(f"  longhaul train --run-dir: first new step after {result['foreground_s']} s")
    result.update(daemon_resume(bench, run_dir))
    log(f"  longhaul resume: first new step after {result['daemon_s']} s")
    return result


# ----------------------------------------------------------------------------- on paper
def on_paper(big_store: dict, big_examples: int, rss_mb: Optional[float], values_per_example: int) -> dict:
    """The issue's 1,500 classes x 500 examples from the measured figures: disk at this corpus's
    example shape and at 128 mels x 313 frames (10 s at hop 512, 16 kHz), prepare time on 2 cores
    at the measured 2-worker rate (per file; longer files decode longer), peak RSS (flat)."""
    n = PAPER["classes"] * PAPER["per_class"]
    per_example = big_store["store_bytes"] / big_examples
    per_value = per_example / values_per_example
    return {"examples": n, "disk_gb_this_shape": round(per_example * n / 1e9, 1),
            "disk_gb_128x313": round(per_value * PAPER["n_mels"] * PAPER["frames"] * n / 1e9, 1),
            "prepare_hours_2_workers": round(n / big_store["files_per_s"] / 3600, 2),
            "peak_rss_mb": rss_mb}


def values_per_example(bench: Bench) -> int:
    """Numbers in one stored log-mel of the runs' config: n_mels x frames (centred STFT)."""
    raw = yaml.safe_load((bench.out / "configs" / "big-store.yaml").read_text())
    feats, data = raw["features"], raw["data"]
    return feats["n_mels"] * (int(data["duration"] * data["sample_rate"]) // feats["hop_length"] + 1)


# ----------------------------------------------------------------------------- the run
def make_corpora(args, where: Path) -> dict:
    suffix = "" if args.rate == corpus.RATE else f"-{args.rate}hz"
    roots = {"big": where / f"audio-{args.files}{suffix}", "small": where / f"audio-{args.small}{suffix}",
             "images": where / f"images-{args.images}"}
    made = {}
    for key, total in (("big", args.files), ("small", args.small)):
        log(f"corpus {roots[key]}: {total} WAV files")
        made[key] = corpus.make_audio(roots[key], total, args.classes, workers=2,
                                      progress=corpus.stderr_progress(f"audio {total}"), rate=args.rate)
    if args.images:
        log(f"corpus {roots['images']}: {args.images} PNG images")
        made["images"] = corpus.make_images(roots["images"], args.images, workers=2,
                                            progress=corpus.stderr_progress(f"images {args.images}"))
    return {key: (roots[key], info) for key, info in made.items()}


def prepare_section(bench: Bench, roots: dict, args) -> dict:
    """Old way against prepare with 1 and 2 workers (big corpus, then images); re-prepare."""
    stores = bench.out / "stores"
    out: dict = {}
    big_root, big_info = roots["big"]
    files = big_info["files_written"]
    old = bench.config("old-way", bench.base, audio_changes(big_root, None, None))
    out["old_way"] = old_way(bench, "audio", old)
    if not args.quick:
        w1 = bench.config("big-w1", bench.base, audio_changes(big_root, stores / "big-w1", None))
        out["workers_1"] = prepare(bench, "prepare-big-w1", w1, 1, files)
        shutil.rmtree(stores / "big-w1", ignore_errors=True)  # same bytes as the 2-worker store
    big = bench.config("big-store", bench.base, audio_changes(big_root, stores / "big", args.steps))
    out["workers_2"] = prepare(bench, "prepare-big-w2", big, 2, files)
    log("re-prepare on unchanged data")
    out["again"] = prepare(bench, "prepare-big-again", big, 2, files, fresh=False)
    for key in ("workers_1", "workers_2"):
        if key in out:
            out[key]["speedup_vs_old_way"] = round(out[key]["files_per_s"] / out["old_way"]["files_per_s"], 2)
    if "images" in roots:
        out["images"] = image_section(bench, roots["images"], args)
    return out


def image_section(bench: Bench, root_info, args) -> dict:
    root, info = root_info
    files = info["files_written"]
    old = bench.config("images-old-way", "image_efficientnetv2_s_cpu.yaml", image_changes(root, None, args.image_size))
    out = {"image_size": args.image_size, "old_way": old_way(bench, "images", old)}
    stores = bench.out / "stores"
    for workers in ((2,) if args.quick else (1, 2)):
        cfg = bench.config(f"images-w{workers}", "image_efficientnetv2_s_cpu.yaml",
                           image_changes(root, stores / f"images-w{workers}", args.image_size))
        out[f"workers_{workers}"] = prepare(bench, f"prepare-images-w{workers}", cfg, workers, files)
        out[f"workers_{workers}"]["speedup_vs_old_way"] = round(
            out[f"workers_{workers}"]["files_per_s"] / out["old_way"]["files_per_s"], 2)
        shutil.rmtree(stores / f"images-w{workers}", ignore_errors=True)
    return out


def training_section(bench: Bench, roots: dict, args) -> dict:
    """Store against cache (small corpus), RSS small against big, float16 against float32."""
    stores = bench.out / "stores"
    small_root, small_info = roots["small"]
    big_root, big_info = roots["big"]
    small_files = small_info["files_written"]
    small = bench.config("small-store", bench.base, audio_changes(small_root, stores / "small", args.steps))
    out: dict = {"steps": args.steps, "warmup_steps": WARMUP_STEPS,
                 "dtype": {"float16": prepare(bench, "prepare-small", small, 2, small_files)}}
    if not args.quick:
        f32 = bench.config("small-f32", bench.base,
                           audio_changes(small_root, stores / "small-f32", args.steps, "float32"))
        out["dtype"]["float32"] = prepare(bench, "prepare-small-f32", f32, 2, small_files)
        out["dtype"]["size_ratio_16_to_32"] = round(
            out["dtype"]["float16"]["store_bytes"] / out["dtype"]["float32"]["store_bytes"], 3)
        shutil.rmtree(stores / "small-f32", ignore_errors=True)
    cache = bench.config("small-cache", bench.base, audio_changes(small_root, None, args.steps))
    out["store_vs_cache"] = store_vs_cache(bench, cache, small, args.rounds)
    big = bench.out / "configs" / "big-store.yaml"
    out["rss"] = {"small_examples": small_files, "big_examples": big_info["files_written"],
                  "small_store": out["store_vs_cache"]["runs"]["store"][0],
                  "big_store": train(bench, "big-store", big)}
    out["rss"]["growth_mb"] = round(out["rss"]["big_store"]["peak_rss_mb"] - out["rss"]["small_store"]["peak_rss_mb"], 1)
    if not args.quick:
        big_cache = bench.config("big-cache", bench.base, audio_changes(big_root, None, args.steps))
        out["rss"]["big_cache"] = train(bench, "big-cache", big_cache)
    resume_cfg = bench.config("big-resume", bench.base, audio_changes(big_root, stores / "big", None))
    out["resume"] = resume_times(bench, resume_cfg, foreground=not args.quick)
    return out


def section(results: dict, key: str, fn, *args) -> None:
    """results[key] = fn(*args); a section that fails is reported and the others still run."""
    try:
        results[key] = fn(*args)
    except Exception as exc:  # noqa: BLE001 - one broken part must not lose the other figures
        log(f"{key} failed: {type(exc).__name__}: {exc}")
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}


def headline(results: dict) -> dict:
    """The figures the issue asks for, and its targets met or not."""
    prep, tr = results.get("prepare", {}), results.get("training", {})
    svc, rss, resume = tr.get("store_vs_cache", {}), tr.get("rss", {}), tr.get("resume", {})
    images = prep.get("images", {})
    figures = {
        "old_way_files_per_s": prep.get("old_way", {}).get("files_per_s"),
        "prepare_1_worker_files_per_s": prep.get("workers_1", {}).get("files_per_s"),
        "prepare_2_workers_files_per_s": prep.get("workers_2", {}).get("files_per_s"),
        "reprepare_s": prep.get("again", {}).get("wall_s"),
        "store_mb": prep.get("workers_2", {}).get("store_mb"),
        "store_vs_cache": svc.get("ratio"),
        "store_data_share": svc.get("store_data_share"),
        "loader_store_vs_cache": svc.get("loader_ratio"),
        "rss_small_mb": rss.get("small_store", {}).get("peak_rss_mb"),
        "rss_big_mb": rss.get("big_store", {}).get("peak_rss_mb"),
        "rss_big_cache_mb": rss.get("big_cache", {}).get("peak_rss_mb"),
        "resume_s": resume.get("daemon_s"),
        "resume_foreground_s": resume.get("foreground_s"),
        "float16_to_float32_size": tr.get("dtype", {}).get("size_ratio_16_to_32"),
        "images_old_way_files_per_s": images.get("old_way", {}).get("files_per_s"),
        "images_prepare_2_workers_files_per_s": images.get("workers_2", {}).get("files_per_s"),
        "images_store_mb": images.get("workers_2", {}).get("store_mb"),
    }
    targets = {"store_vs_cache_at_least_0.95": None if svc.get("ratio") is None else svc["ratio"] >= 0.95,
               "rss_growth_within_100_mb": None if rss.get("growth_mb") is None else rss["growth_mb"] <= 100,
               "resume_within_10_s": None if resume.get("daemon_s") is None else resume["daemon_s"] <= 10}
    return {"figures": figures, "targets": targets}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50000, help="WAV files of the big corpus")
    parser.add_argument("--small", type=int, default=5000, help="WAV files of the small corpus (RSS, store vs cache)")
    parser.add_argument("--images", type=int, default=5000, help="PNG images (0: none)")
    parser.add_argument("--classes", type=int, default=50, help="sound classes")
    parser.add_argument("--rate", type=int, default=corpus.RATE,
                        help="sample rate of the WAV files (training is at 16 kHz: another rate is resampled)")
    parser.add_argument("--image-size", type=int, default=224, help="data.image_size of the image store")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of every training run")
    parser.add_argument("--rounds", type=int, default=2, help="cache/store alternations")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a new temp folder)")
    parser.add_argument("--corpus", type=Path, default=None, help="where corpora are made or found (default: OUT/corpus)")
    parser.add_argument("--base", default="quickstart.yaml", help="config of configs/ every run starts from")
    parser.add_argument("--old-way", type=Path, help=argparse.SUPPRESS)  # the child of old_way()
    parser.add_argument("--loader", type=Path, help=argparse.SUPPRESS)  # the child of store_vs_cache()
    parser.add_argument("--quick", action="store_true", help="leave out 1-worker prepares, float32, big cache run, foreground resume")
    parser.add_argument("--set", action="append", default=[], help="extra config override for every run")
    args = parser.parse_args(argv)
    if args.old_way or args.loader:
        print(json.dumps(old_way_loop(args.old_way) if args.old_way else loader_loop(args.loader, LOADER_BATCHES)))
        return 0
    out = (args.out or Path(tempfile.mkdtemp(prefix="longhaul-data-scale-"))).absolute()
    bench = Bench(out, args.base, args.steps, args.set)
    results: dict = {"out": str(out), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    try:
        try:
            roots = make_corpora(args, (args.corpus or out / "corpus").absolute())
        except corpus.CorpusError as exc:
            print(f"data_scale: {exc}", file=sys.stderr)
            return 2
        results["corpus"] = {key: {"root": str(root), **info} for key, (root, info) in roots.items()}
        section(results, "prepare", prepare_section, bench, roots, args)
        section(results, "training", training_section, bench, roots, args)
        big = results["prepare"].get("workers_2")
        rss = results["training"].get("rss", {}).get("big_store", {}).get("peak_rss_mb")
        if big and "error" not in big:
            results["paper"] = on_paper(big, roots["big"][1]["files_written"], rss, values_per_example(bench))
    finally:
        bench.close()
    results["seconds"] = round(time.monotonic() - T0, 1)
    results.update(headline(results))
    log(json.dumps(results["figures"]))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

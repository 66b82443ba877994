"""Data-parallel training on this box, what its gradient allreduce costs, and what more boxes gain.

1. Throughput, the product path, side by side in one run: a config derived from the quickstart
   (EfficientNet-B0 on 64x63 log-mel spectrograms, global batch 32, threads pinned, eager, no
   evaluation or checkpoint inside the timed steps, `max_steps` steps) trained
       one   `longhaul train` in the foreground, threads 2            (1 process x 2 threads)
       two   `longhaul start --procs-per-node 2`, threads 1 (daemon, torchrun, 2 ranks x 1 thread)
   in the order one, two, two, one (--quick: one, two) so that drift on a shared box shows.
   samples/s of a run = (steps x global batch) / wall seconds between its history's train records,
   the first 20% of the steps dropped; the same for both. The daemon's run is waited for by
   reading its state.json every 2 s (no status process stealing CPU from the timed run).
2. Allreduce per step: EfficientNet-B0 as in the quickstart (8 classes, 1x64x63) and timm's
   tf_efficientnetv2_s (3 classes, 3x224x224 images, not pretrained) in a gloo group of 2 ranks
   x 1 thread on loopback, DDP made as `World.wrap` makes it and timed by its comm hook
   (`timed_allreduce`, `AllreduceClock`): bytes, busy and exposed seconds (from the last
   bucket's launch to backward's return), backward and step seconds, the exposed share of the
   step; each bucket's bytes and launch time. Then a plain `dist.all_reduce` of a flat tensor of
   the same bytes: the non-overlapped cost and loopback bandwidth (ring traffic 2(N-1)/N x bytes).
3. On paper: one process x 2 threads (the whole box) steps each model at the per-box batch
   (B0: 32; V2-S: the image preset's 4 x 4 accumulated, timed as one micro-batch of 4 whose
   step is 4 of them and one optimizer step), timed forward, backward and optimizer step; with
   the gradient bytes and the buckets' launch times as fractions of backward, the expected
   speed-up of N = 2, 4, 8 such boxes on 1 and 10 Gbit/s links (docs/DISTRIBUTED.md).

The JSON object is the last line.
    python bench/distributed.py [--quick] [--steps N]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

BATCH = 32  # the quickstart's global batch
LINKS = {"1gbit": 1e9 / 8, "10gbit": 10e9 / 8}  # bytes/s
LATENCY_S = 50e-6  # per message of the ring: 2(N-1) of them per bucket
BOXES = (2, 4, 8)
MODELS = {
    # name: (preset, overrides, input shape, per-rank batch on this box, per-box (batch, accum_steps))
    "efficientnet_b0": ("quickstart.yaml", [], (1, 64, 63), 16, (32, 1)),
    "tf_efficientnetv2_s": ("image_efficientnetv2_s_cpu.yaml", ["model.pretrained=null"], (3, 224, 224), 2, (4, 4)),
}
CLASSES = {"efficientnet_b0": 8, "tf_efficientnetv2_s": 3}


# ----------------------------------------------------------------------------- 1. throughput
def throughput_config(tmp: Path, steps: int, threads: int, quick: bool) -> Path:
    """The quickstart with threads pinned, eager, `steps` steps inside the first epoch (no epoch
    end, so no evaluation or checkpoint among the timed steps) and a small validation set (the
    run's one evaluation comes after its last step)."""
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    classes = raw["data"]["synthetic"]["classes"]
    per_class = math.ceil((steps + 3) * BATCH / classes)
    if not quick:
        per_class = max(per_class, raw["data"]["synthetic"]["train_per_class"])
    raw["data"]["synthetic"].update(train_per_class=per_class, val_per_class=4 if quick else 16)
    raw.update(name=f"dp-{threads}t", threads=threads, threads_follow_load=False, max_steps=steps, log_every=1)
    raw["model"]["compile"] = False
    raw["eval"].update(every_epochs=1000, early_stopping={"patience": None})
    raw["checkpoint"]["interval_seconds"] = 86400
    path = tmp / f"dp-{threads}t.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def steady_rate(run_dir: Path) -> dict:
    """samples/s between the history's train records, the first 20% of the steps dropped."""
    from trainer.history import read_history
    from trainer.run.rundir import RunDir

    train = sorted((r for r in read_history(RunDir(run_dir).history) if r["kind"] == "train"),
                   key=lambda r: r["step"])
    first, last = train[max(1, round(0.2 * len(train)))], train[-1]
    seconds = last["time"] - first["time"]
    return {"samples_per_s": (last["step"] - first["step"]) * BATCH / seconds, "from_step": first["step"],
            "to_step": last["step"], "seconds": seconds, "from_time": first["time"], "to_time": last["time"],
            "engine_samples_per_s_median": statistics.median(r["samples_per_s"] for r in train[len(train) // 5:])}


class OthersLoad:
    """Cores kept busy by processes other than the timed run's (this process, its children and
    `pid`'s tree), sampled every 2 s while a run goes on (or before and after a measurement in
    this process): the noise each measurement saw on a shared box."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []  # (from, to, cores), wall clock
        self._last = None

    def sample(self, pid: int | None) -> None:
        import psutil

        cpu = psutil.cpu_times()
        busy = cpu.user + cpu.nice + cpu.system + getattr(cpu, "irq", 0.0) + getattr(cpu, "softirq", 0.0)
        me = psutil.Process()
        procs = {me.pid: me, **{c.pid: c for c in me.children(recursive=True)}}
        try:
            if pid:  # a daemon: started in its own session, not this process's child
                root = psutil.Process(pid)
                procs.update({root.pid: root, **{c.pid: c for c in root.children(recursive=True)}})
        except psutil.Error:
            pass
        own = 0.0
        for proc in procs.values():
            try:  # with the children each has waited for (a rank that ended, the joined spawned ranks)
                times = proc.cpu_times()
                own += times.user + times.system + times.children_user + times.children_system
            except psutil.Error:
                continue
        now = time.time()
        if self._last is not None and now > self._last[0]:
            cores = ((busy - self._last[1]) - (own - self._last[2])) / (now - self._last[0])
            self.samples.append((self._last[0], now, max(0.0, cores)))
        self._last = (now, busy, own)

    def during(self, start: float, end: float) -> float | None:
        """Mean cores of the samples that overlap [start, end]."""
        seen = [c for t0, t1, c in self.samples if t1 > start and t0 < end]
        return round(statistics.mean(seen), 2) if seen else None


def longhaul(env: dict, *args: str, log: Path, timeout: float, load: OthersLoad | None = None) -> None:
    """`longhaul ARGS`; with `load`, sampled every 2 s while it runs."""
    with log.open("a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", *args], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                break
            if load is not None:
                load.sample(proc.pid)
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
    if proc.returncode != 0:
        raise SystemExit(f"longhaul {' '.join(args)} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")


def wait_finished(run_dir: Path, timeout: float, load: OthersLoad) -> str:
    """The run's state once it has ended, from its state.json read every 2 s."""
    from trainer.run.state import FINAL_STATES, effective_state, read_state

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(2.0)
        try:
            info = read_state(run_dir)
            state = effective_state(run_dir, info)
        except Exception:  # not written yet
            continue
        load.sample(info.get("pid"))
        if state in FINAL_STATES or state == "interrupted":
            gone(info.get("pid"), deadline - time.monotonic())
            return state
    raise SystemExit(f"{run_dir.name} did not end within {timeout:.0f} s")


def gone(pid: int | None, timeout: float) -> None:
    """Wait for the daemon to exit (it writes its last files after the run's final state)."""
    import psutil

    try:
        psutil.Process(pid).wait(timeout=max(timeout, 1.0)) if pid else None
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        raise SystemExit(f"the daemon {pid} did not exit after its run ended")


def one_run(kind: str, name: str, configs: dict, env: dict, root: Path, timeout: float) -> dict:
    run_dir = root / name
    log = root.parent / f"{name}.log"
    started = time.monotonic()
    load = OthersLoad()
    if kind == "one":
        longhaul(env, "--root", str(root), "train", str(configs["one"]), "--name", name, "--quiet",
                 log=log, timeout=timeout, load=load)
        state = "finished"
    else:
        longhaul(env, "--root", str(root), "start", str(configs["two"]), "--name", name, "--procs-per-node", "2",
                 log=log, timeout=120)
        state = wait_finished(run_dir, timeout, load)
    from trainer.run.plan import read_plan
    from trainer.run.rundir import RunDir

    if state != "finished":
        log_file = RunDir(run_dir).train_log
        raise SystemExit(f"{name} ended {state}:\n{log_file.read_text()[-3000:] if log_file.exists() else ''}")
    _, plan = read_plan(run_dir)
    rate = steady_rate(run_dir)
    others = load.during(rate.pop("from_time"), rate.pop("to_time"))
    return {"run": name, "kind": kind, "world_size": plan["world_size"], "threads": plan.get("threads"),
            "wall_s": round(time.monotonic() - started, 1), **rate, "others_busy_cores": others}


def throughput(steps: int, quick: bool) -> dict:
    order = ["one", "two"] if quick else ["one", "two", "two", "one"]
    with tempfile.TemporaryDirectory(prefix="lhdp-", dir="/tmp") as tmp:  # short: the socket paths fit
        tmp = Path(tmp)
        for sub in ("runs", "state", "rt"):
            (tmp / sub).mkdir(mode=0o700)
        env = dict(os.environ, LONGHAUL_ROOT=str(tmp / "runs"), LONGHAUL_STATE_DIR=str(tmp / "state"),
                   XDG_RUNTIME_DIR=str(tmp / "rt"), PYTHONPATH=str(ROOT))
        configs = {"one": throughput_config(tmp, steps, 2, quick), "two": throughput_config(tmp, steps, 1, quick)}
        runs = []
        for i, kind in enumerate(order):
            runs.append(one_run(kind, f"{kind}-{i + 1}", configs, env, tmp / "runs", timeout=900))
            r = runs[-1]
            print(f"{r['run']:6s} world {r['world_size']}: {r['samples_per_s']:7.1f} samples/s (steps "
                  f"{r['from_step']}-{r['to_step']}, engine's own {r['engine_samples_per_s_median']:.1f}), "
                  f"{r['wall_s']} s in all; other processes kept {r['others_busy_cores']} cores busy", flush=True)
    one = statistics.mean(r["samples_per_s"] for r in runs if r["kind"] == "one")
    two = statistics.mean(r["samples_per_s"] for r in runs if r["kind"] == "two")
    for r in runs:
        for key in ("samples_per_s", "seconds", "engine_samples_per_s_median"):
            r[key] = round(r[key], 2)
    return {"one_process_2_threads": round(one, 2), "two_ranks_1_thread": round(two, 2), "ratio": round(two / one, 3),
            "steps": steps, "global_batch": BATCH, "runs": runs,
            # another process on a core slows either kind several-fold: only a quiet box's ratio says much
            "quiet_box": all((r["others_busy_cores"] or 0.0) < 0.25 for r in runs)}


# ----------------------------------------------------------------------------- 2. allreduce per step
def build(name: str):
    """(model, config) of a MODELS entry, the model built as the engine builds it (channels_last)."""
    from trainer import models
    from trainer.config import load_config

    preset, overrides, shape, _, _ = MODELS[name]
    cfg = load_config(ROOT / "configs" / preset, overrides, check_paths=False, check_model=False)
    return models.build_model(cfg, CLASSES[name], shape[0], shape), cfg


class BucketLog:
    """The product's clock (`AllreduceClock`) and each bucket's bytes, in launch order."""

    def __init__(self):
        from trainer.distributed import AllreduceClock

        self.clock = AllreduceClock()
        self.sizes: list[int] = []

    def reset(self) -> None:
        self.clock.reset()
        self.sizes = []


def logged_allreduce(log, bucket):  # no annotations: DDP checks them against its classes
    """`timed_allreduce` (the product's hook) that also notes the bucket's bytes."""
    from trainer.distributed import timed_allreduce

    buffer = bucket.buffer()
    log.sizes.append(buffer.numel() * buffer.element_size())
    return timed_allreduce(log.clock, bucket)


def median_of(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def rank_main(rank: int, size: int, port: int, name: str, steps: int, out_dir: str) -> None:
    """One rank: `steps` timed DDP steps (after one that builds the buckets), then a flat allreduce."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from trainer.distributed import World

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = World.from_env(timeout_seconds=300)
    world.start()
    torch.manual_seed(0)
    model, cfg = build(name)
    model.train()
    # what World.wrap makes, with the hook noting bucket sizes as well
    ddp = DistributedDataParallel(model, broadcast_buffers=True, gradient_as_bucket_view=True)
    log = BucketLog()
    ddp.register_comm_hook(log, logged_allreduce)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _, _, shape, batch, _ = MODELS[name]
    rows = []
    for step in range(1 + steps):
        x = torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, CLASSES[name], (batch,))
        log.reset()
        t0 = time.perf_counter()
        loss = F.cross_entropy(ddp(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        exposed = log.clock.exposed(t2)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if step == 0:
            continue  # DDP orders its buckets by the first backward
        rows.append({"bytes": log.clock.bytes, "busy_s": log.clock.busy, "exposed_s": exposed,
                     "forward_s": t1 - t0, "backward_s": t2 - t1, "step_s": t3 - t0,
                     "exposed_share": exposed / (t3 - t0),
                     # launches as fractions of backward's compute, which ends with the last launch
                     "launch_fractions": [(t - t1) / max(log.clock.launches[-1] - t1, 1e-9)
                                          for t in log.clock.launches],
                     "bucket_bytes": list(log.sizes)})
    nbytes = rows[-1]["bytes"]
    flat = torch.zeros(nbytes // 4)
    world.barrier()
    flat_times = []
    for _ in range(max(3, steps)):
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        flat_times.append(time.perf_counter() - t0)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"rows": rows, "flat_s": flat_times}))
    world.barrier()
    # no teardown: destroying the group under a live DDP reducer aborted a rank ("terminate called
    # without an active exception") once its numbers were already taken
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def allreduce(name: str, steps: int) -> dict:
    """2 ranks x 1 thread on loopback: the per-step medians of rank 0, each rank's exposed share."""
    import torch.multiprocessing as mp

    size = 2
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    load = OthersLoad()
    with tempfile.TemporaryDirectory() as out:
        load.sample(None)
        mp.spawn(rank_main, args=(size, free_port(), name, steps, out), nprocs=size, join=True)
        load.sample(None)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(size)]
    rows = ranks[0]["rows"]
    nbytes = rows[-1]["bytes"]
    flat_s = statistics.median(ranks[0]["flat_s"])
    _, _, shape, batch, _ = MODELS[name]
    step = {key: median_of(rows, key) for key in ("busy_s", "exposed_s", "forward_s", "backward_s", "step_s")}
    result = {
        "input": list(shape), "per_rank_batch": batch, "ranks": size, "threads_per_rank": 1, "steps": len(rows),
        "bytes_per_step": nbytes, "buckets": len(rows[-1]["bucket_bytes"]), "bucket_bytes": rows[-1]["bucket_bytes"],
        **{k: round(v, 4) for k, v in step.items()},
        "exposed_share": round(median_of(rows, "exposed_share"), 4),
        "exposed_share_by_rank": [round(median_of(r["rows"], "exposed_share"), 4) for r in ranks],
        "flat_allreduce_s": round(flat_s, 4),
        "flat_allreduce_share_of_step": round(flat_s / step["step_s"], 4),
        "loopback_bus_bytes_per_s": round(2 * (size - 1) / size * nbytes / flat_s),
        # median over steps of each bucket's launch, as a fraction of backward's compute
        "launch_fractions": [round(statistics.median(r["launch_fractions"][i] for r in rows), 4)
                             for i in range(len(rows[-1]["launch_fractions"]))],
        "others_busy_cores": load.during(0, math.inf),
    }
    print(f"{name:20s} 2 ranks x 1 thread, batch {batch}/rank: {nbytes / 2**20:.1f} MiB in {result['buckets']} "
          f"buckets per step, busy {step['busy_s'] * 1e3:.0f} ms, exposed {step['exposed_s'] * 1e3:.0f} ms of a "
          f"{step['step_s'] * 1e3:.0f} ms step ({result['exposed_share']:.1%}); flat allreduce "
          f"{flat_s * 1e3:.0f} ms; others kept {result['others_busy_cores']} cores busy", flush=True)
    return result


# ----------------------------------------------------------------------------- 3. on paper
def box_step(name: str, steps: int) -> dict:
    """One process x 2 threads (the whole box) at the per-box batch: seconds of one micro-batch's
    forward and backward, of its backward (what a group's allreduce overlaps: the last
    micro-batch's) and of the optimizer step (clipping included); a step of `accum` micro-batches
    takes accum x micro-batch + optimizer step."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, cfg = build(name)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _, _, shape, _, (batch, accum) = MODELS[name]
    rows = []
    load = OthersLoad()
    load.sample(None)
    for step in range(1 + steps):
        x = torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), torch.randint(0, CLASSES[name], (batch,)))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:
            rows.append({"micro_s": t2 - t0, "backward_s": t2 - t1, "optimizer_s": time.perf_counter() - t2})
    load.sample(None)
    del model, opt
    micro, optimizer = median_of(rows, "micro_s"), median_of(rows, "optimizer_s")
    return {"per_box_batch": batch, "accum_steps": accum, "threads": 2, "others_busy_cores": load.during(0, math.inf),
            "step_s": round(accum * micro + optimizer, 4), "micro_batch_s": round(micro, 4),
            "last_backward_s": round(median_of(rows, "backward_s"), 4), "optimizer_s": round(optimizer, 4)}


def expected(n: int, bandwidth: float, t_step: float, t_backward: float, buckets: list[tuple[float, int]]) -> dict:
    """N boxes on a link of `bandwidth` bytes/s. Each bucket's ring allreduce takes
    2(N-1)/N x bytes / bandwidth + 2(N-1) x 50 us and starts when the bucket is launched (its
    fraction of the backward pass) or when the one before it is done, whichever is later (one
    link, one bucket at a time); the exposed time is what runs past the end of backward."""
    ring = 2 * (n - 1) / n
    done = t_ar = 0.0
    for fraction, nbytes in buckets:
        seconds = ring * nbytes / bandwidth + 2 * (n - 1) * LATENCY_S
        t_ar += seconds
        done = max(done, fraction * t_backward) + seconds
    exposed = max(0.0, done - t_backward)
    ideal = max(0.0, t_ar - t_backward)  # were every byte free to overlap all of backward
    return {"allreduce_s": round(t_ar, 4), "exposed_s": round(exposed, 4),
            "speedup": round(n * t_step / (t_step + exposed), 2),
            "speedup_if_all_overlapped": round(n * t_step / (t_step + ideal), 2)}


def on_paper(name: str, measured: dict, box: dict) -> dict:
    buckets = list(zip(measured["launch_fractions"], measured["bucket_bytes"]))
    table = {f"{n}_boxes": {link: expected(n, bw, box["step_s"], box["last_backward_s"], buckets)
                            for link, bw in LINKS.items()} for n in BOXES}
    return {"box_step": box, "bytes_per_step": measured["bytes_per_step"], "buckets": len(buckets), **table}


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a check that the bench works (under 2 minutes): "
                        "12 steps, one run of each kind, 3 allreduce steps")
    parser.add_argument("--steps", type=int, help="steps of each throughput run (default 60; --quick 12); "
                        "allreduce and box steps are a sixth of it, at least 3")
    parser.add_argument("--skip-throughput", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps or (12 if args.quick else 60)
    small = max(3, steps // 6)
    started = time.monotonic()
    result: dict = {"quick": args.quick}
    if not args.skip_throughput:
        result["throughput"] = throughput(steps, args.quick)
    result["allreduce"] = {name: allreduce(name, small) for name in MODELS}
    result["on_paper"] = {"assumptions": "per-box batch fixed (global batch N x per-box); per bucket ring allreduce "
                          "2(N-1)/N x bytes / link + 2(N-1) x 50 us, buckets one after another on the link, each "
                          "starting no earlier than its launch (its measured fraction of backward); exposed = what "
                          "runs past backward's end; speedup = N x t_step / (t_step + exposed)"}
    for name in MODELS:
        result["on_paper"][name] = on_paper(name, result["allreduce"][name], box_step(name, small))
        b = result["on_paper"][name]
        print(f"{name:20s} on paper, step {b['box_step']['step_s']:.3f} s per box: " + ", ".join(
            f"{n} boxes {b[f'{n}_boxes']['1gbit']['speedup']}x/{b[f'{n}_boxes']['10gbit']['speedup']}x" for n in BOXES)
              + f" (1/10 Gbit/s); others kept {b['box_step']['others_busy_cores']} cores busy", flush=True)
    if "throughput" in result:
        result["target_within_10pct"] = result["throughput"]["ratio"] >= 0.9
    result["targets"] = {"ratio": ">= 0.9", "allreduce": "overlapped with backward: exposed share reported"}
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

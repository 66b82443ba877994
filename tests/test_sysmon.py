"""System sampler: message fields, trainer RSS with children, temperature and write-rate edge cases."""
from __future__ import annotations

import collections
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import psutil
import pytest

from trainer import sysmon
from trainer.sysmon import SystemSampler, cpu_temperature

REPO = Path(__file__).resolve().parent.parent
SYSTEM_FIELDS = {"time", "cpu_percent", "load", "mem_total", "mem_used", "swap_total", "swap_used",
                 "trainer_rss", "disk_free", "disk_total", "disk_write_bps", "cpu_temp", "processes",
                 "trainer_threads", "cores"}
Temp = collections.namedtuple("Temp", "label current high critical")
Io = collections.namedtuple("Io", "read_bytes write_bytes")


def test_sample_has_exactly_the_system_fields_with_their_types(tmp_path):
    sampler = SystemSampler(tmp_path, lambda: os.getpid())
    first = sampler.sample()
    second = sampler.sample()
    assert set(first) - {"gpus"} == SYSTEM_FIELDS  # gpus: a box with NVIDIA GPUs and pynvml only
    assert type(first["time"]) is float and abs(first["time"] - time.time()) < 5
    assert len(first["cpu_percent"]) == psutil.cpu_count()
    assert all(type(p) is float and 0.0 <= p <= 100.0 for p in first["cpu_percent"])
    assert len(first["load"]) == 3 and all(type(v) is float for v in first["load"])
    for key in ("mem_total", "mem_used", "swap_total", "swap_used", "disk_free", "disk_total", "trainer_rss"):
        assert type(first[key]) is int and first[key] >= 0, key
    assert 0 < first["mem_used"] <= first["mem_total"]
    assert 0 < first["disk_free"] <= first["disk_total"]
    assert first["trainer_rss"] >= psutil.Process().memory_info().rss // 2
    assert first["disk_write_bps"] is None  # no previous call to measure against
    assert second["disk_write_bps"] is None or (type(second["disk_write_bps"]) is float and second["disk_write_bps"] >= 0)
    assert first["cpu_temp"] is None or type(first["cpu_temp"]) is float


def test_sample_is_cheap_and_never_blocks(tmp_path):
    sampler = SystemSampler(tmp_path, lambda: os.getpid())
    costs = []
    for _ in range(5):
        started = time.perf_counter()
        sampler.sample()
        costs.append(time.perf_counter() - started)
    assert statistics.median(costs) < 0.25  # a blocking cpu_percent(interval=...) would take >= 1 s


def test_missing_trainer_and_missing_run_dir_give_none(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert SystemSampler(tmp_path, lambda: None).sample()["trainer_rss"] is None
    assert SystemSampler(tmp_path, lambda: dead.pid).sample()["trainer_rss"] is None
    gone = SystemSampler(tmp_path / "deleted", lambda: None).sample()
    assert gone["disk_free"] is None and gone["disk_total"] is None


TREE = """
import subprocess, sys, time
code = "import time; blob = b'x' * (64 << 20); print('ready', flush=True); time.sleep(120)"
child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print('ready', flush=True)
time.sleep(120)
"""


def test_trainer_rss_includes_its_children(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        rss = SystemSampler(tmp_path, lambda: proc.pid).sample()["trainer_rss"]
        own = psutil.Process(proc.pid).memory_info().rss
        assert rss >= own + (64 << 20)  # the child holds a 64 MiB buffer
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize(
    "sensors, expected",
    [
        ({}, None),
        ({"nvme": [Temp("Composite", 45.0, 80.0, 90.0)]}, None),  # not a CPU sensor
        ({"acpitz": [Temp("", 40.0, None, None)],
          "coretemp": [Temp("Package id 0", 55.0, 80.0, 100.0), Temp("Core 1", 61.5, 80.0, 100.0)]}, 61.5),
        ({"acpitz": [Temp("", 40.0, None, None)], "nvme": [Temp("Composite", 45.0, 80.0, 90.0)]}, 40.0),
        ({"my_cpu_sensor": [Temp("", 47.0, None, None)]}, 47.0),
        ({"k10temp": [Temp("Tctl", None, None, None)]}, None),
    ],
)
def test_cpu_temperature_picks_a_cpu_sensor(monkeypatch, sensors, expected):
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: sensors, raising=False)
    assert cpu_temperature() == expected


def test_cpu_temperature_none_where_psutil_has_no_sensors(monkeypatch, tmp_path):
    monkeypatch.delattr(psutil, "sensors_temperatures", raising=False)
    assert cpu_temperature() is None
    assert SystemSampler(tmp_path, lambda: None).sample()["cpu_temp"] is None

    def broken():
        raise OSError("hwmon read failed")

    monkeypatch.setattr(psutil, "sensors_temperatures", broken, raising=False)
    assert cpu_temperature() is None


def test_disk_write_rate_from_counter_deltas(monkeypatch, tmp_path):
    clock = iter([100.0, 102.0, 103.0, 104.0, 106.0, 108.0])
    counters = iter([Io(0, 1_000_000), Io(0, 5_000_000), Io(0, 5_000_000), Io(0, 100), None, Io(0, 2_000)])
    monkeypatch.setattr(sysmon, "monotonic", lambda: next(clock))
    monkeypatch.setattr(psutil, "disk_io_counters", lambda: next(counters))
    sampler = SystemSampler(tmp_path, lambda: None)
    assert sampler.sample()["disk_write_bps"] is None          # first call: nothing to compare
    assert sampler.sample()["disk_write_bps"] == 2_000_000.0   # 4 MB in 2 s
    assert sampler.sample()["disk_write_bps"] == 0.0           # idle second
    assert sampler.sample()["disk_write_bps"] is None          # counters went backwards (reset)
    assert sampler.sample()["disk_write_bps"] is None          # statistics unavailable
    assert sampler.sample()["disk_write_bps"] is None          # restarts after the gap


class FakeNvml(types.ModuleType):
    """pynvml as nvidia-ml-py has it, for two GPUs: the second reports no temperature; `calls`
    counts nvmlInit."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init: bool = False):
        super().__init__("pynvml")
        self.fail_init, self.calls = fail_init, 0

    def nvmlInit(self):
        self.calls += 1
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"handle{i}"

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H200" if handle == "handle0" else "NVIDIA L4"  # old versions give bytes

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=87 if handle == "handle0" else 3, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=40 * 2**30, total=141 * 2**30, free=101 * 2**30)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        if handle == "handle1":
            raise self.NVMLError("Not Supported")
        return 64


def test_gpus_from_the_management_library_validate_against_the_protocol(tmp_path, monkeypatch):
    from trainer import protocol

    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = SystemSampler(tmp_path, lambda: os.getpid())
    first, second = sampler.sample(), sampler.sample()
    assert first["gpus"] == [
        {"index": 0, "name": "NVIDIA H200", "util_percent": 87.0, "mem_used": 40 * 2**30, "mem_total": 141 * 2**30,
         "temp_c": 64.0},
        {"index": 1, "name": "NVIDIA L4", "util_percent": 3.0, "mem_used": 40 * 2**30, "mem_total": 141 * 2**30,
         "temp_c": None}]
    assert second["gpus"] == first["gpus"] and fake.calls == 1  # NVML initialised once
    assert protocol.system(**first)["gpus"] == first["gpus"]  # validated: raises on a wrong field
    with pytest.raises(protocol.ProtocolError):
        protocol.system(**dict(first, gpus=[dict(first["gpus"][0], mem_used="40G")]))


def test_no_gpus_key_without_the_library_or_a_driver(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    sample = SystemSampler(tmp_path, lambda: None).sample()
    assert "gpus" not in sample and protocol_ok(sample)
    broken = FakeNvml(fail_init=True)
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    sampler = SystemSampler(tmp_path, lambda: None)
    assert all("gpus" not in sampler.sample() for _ in range(3))
    assert broken.calls == 1  # the failure is remembered: no retry every 2 s


def protocol_ok(sample: dict) -> bool:
    from trainer import protocol

    return protocol.system(**sample)["type"] == "system"

"""`longhaul start` checks the model name without importing timm (issue 13: `start` took 12 s on
a busy box, most of it timm's import): the names come from a cache written once per timm."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import sys
from trainer.config import check_model_name
print(repr(check_model_name(sys.argv[1])))
print("timm imported" if "timm" in sys.modules else "timm not imported")
"""

START_CHECK = """
import sys
from trainer.config import load_config
load_config("configs/quickstart.yaml")
print(sorted(m for m in ("timm", "torch", "numpy") if m in sys.modules))
"""


def check(name: str, state_dir: Path) -> list[str]:
    env = {**os.environ, "LONGHAUL_STATE_DIR": str(state_dir), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHECK, name], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.splitlines()


def test_model_names_come_from_a_cache_after_the_first_check(tmp_path):
    assert check("resnet18", tmp_path) == ["None", "timm imported"]
    (cache,) = tmp_path.glob("timm-models-*.txt")
    assert check("resnet18", tmp_path) == ["None", "timm not imported"]
    problem, imported = check("resnet19", tmp_path)
    assert "unknown model 'resnet19'" in problem and "did you mean" in problem and "resnet18" in problem
    assert imported == "timm not imported"
    # all `longhaul start` checks of a config: no timm, torch or numpy to import
    env = {**os.environ, "LONGHAUL_STATE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", START_CHECK], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"
    # a cache that does not name this timm (torn, a hash collision) is not trusted, and rewritten
    cache.write_text("some other timm\nresnet18\n")
    assert check("efficientnet_b0", tmp_path) == ["None", "timm imported"]
    assert cache.read_text().split("\n")[0] != "some other timm"

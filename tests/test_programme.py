"""The leaflet's programme as data, and refusal of malformed programme files."""

import tomllib

import pytest

from appliance.coach.programme import PROGRAMME_DIR, Motion, PhaseKind, load_programme, parse_programme
from appliance.config import ConfigError


@pytest.fixture(scope="module")
def leaflet():
    return load_programme("leaflet")


def test_leaflet_programme_has_awareness_and_the_eight_exercises_in_order(leaflet):
    assert [e.id for e in leaflet.exercises] == ["awareness"] + [f"ex{i}" for i in range(1, 9)]


def test_awareness_is_two_seconds_on_and_two_off_on_the_out_breath(leaflet):
    aw = leaflet.exercise("awareness")
    contract = next(p for p in aw.phases if p.kind is PhaseKind.CONTRACT)
    release = next(p for p in aw.phases if p.kind is PhaseKind.RELEASE)
    assert contract.on_exhale and contract.seconds == 2.0 and release.seconds == 2.0


def test_exercise_1_holds_while_counting_to_five(leaflet):
    hold = next(p for p in leaflet.exercise("ex1").phases if p.kind is PhaseKind.HOLD)
    assert hold.count and hold.seconds == 5.0


def test_exercise_2_holds_three_breaths_ten_times(leaflet):
    ex2 = leaflet.exercise("ex2")
    assert ex2.repetitions == 10
    hold = next(p for p in ex2.phases if p.kind is PhaseKind.HOLD)
    assert hold.breaths == 3


def test_exercise_3_releases_in_three_equal_steps(leaflet):
    releases = [p for p in leaflet.exercise("ex3").phases if p.kind is PhaseKind.RELEASE]
    levels = [round(p.level, 2) for p in releases]
    assert levels == [0.67, 0.33, 0.0]
    assert len({p.seconds for p in releases}) == 1


def test_exercise_4_goes_up_three_floors_and_down_three(leaflet):
    ph = leaflet.exercise("ex4").phases
    ups = [round(p.level, 2) for p in ph if p.kind is PhaseKind.CONTRACT]
    downs = [round(p.level, 2) for p in ph if p.kind is PhaseKind.RELEASE]
    assert ups == [0.33, 0.67, 1.0] and downs == [0.67, 0.33, 0.0]


def test_movement_exercises_name_their_movement(leaflet):
    motions = {e.id: {p.motion for p in e.phases} - {Motion.NONE} for e in leaflet.exercises}
    assert motions["ex5"] == {Motion.KNEE_LIFT, Motion.FOOT_BACK}
    assert motions["ex6"] == {Motion.SQUAT_BACK}
    assert motions["ex7"] == {Motion.WALK}
    assert motions["ex8"] == {Motion.HOP}


def test_exercise_7_walks_at_the_first_floor_of_the_lift(leaflet):
    walk = next(p for p in leaflet.exercise("ex7").phases if p.motion is Motion.WALK)
    assert round(walk.level, 2) == 0.33


def test_defaults_we_chose_are_marked_for_the_clinician(leaflet):
    assert "repetitions" in leaflet.exercise("ex1").clinician_defaults
    assert "repetitions" not in leaflet.exercise("ex2").clinician_defaults  # the leaflet says 10


def test_rest_is_at_least_as_long_as_the_hold(leaflet):
    for ex in leaflet.exercises:
        holds = [p.seconds for p in ex.phases if p.kind is PhaseKind.HOLD and p.seconds]
        if holds:
            assert ex.rest_between_reps_s >= max(holds) or ex.id == "ex1" and ex.rest_between_reps_s >= 5


def test_postop_programme_is_awareness_only_with_a_low_cap():
    post = load_programme("postop")
    assert [e.id for e in post.exercises] == ["awareness"]
    assert post.exercises[0].target_level_pct <= 30
    assert "caution.postop" in post.intro


def _leaflet_data():
    return tomllib.loads((PROGRAMME_DIR / "leaflet.toml").read_text())


@pytest.mark.parametrize("mutate, key, value", [
    (lambda d: d["exercise"][2].update(repetitions="ten"), "exercise ex2: repetitions", "ten"),
    (lambda d: d["exercise"][1]["phase"][2].update(kind="squeeze"), "exercise ex1: phase[2].kind", "squeeze"),
    (lambda d: d["exercise"][3]["phase"][1].update(level=3.0), "exercise ex3: phase[1].level", 3.0),
    (lambda d: d["exercise"][0].update(target_pct_mvc=150), "exercise awareness: target_pct_mvc", 150),
    (lambda d: d["exercise"][4]["phase"][0].update(say="cue.nonexistent"), "exercise ex4: phase[0].say",
     "cue.nonexistent"),
    (lambda d: d["exercise"][5].update(hold_s=5), "exercise ex5: hold_s", 5),
])
def test_a_malformed_programme_names_file_exercise_key_and_value(mutate, key, value):
    from appliance.voice.phrases import Catalogue

    data = _leaflet_data()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_programme(data, "leaflet.toml", Catalogue.load("nl").keys())
    msg = str(err.value)
    assert "leaflet.toml" in msg and key in msg and repr(value) in msg


def test_a_programme_file_that_is_not_toml_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "mine.toml"
    bad.write_text("[programme\nid = 'x'")
    with pytest.raises(ConfigError, match="mine.toml"):
        load_programme(bad)


def test_a_programme_file_without_its_programme_table_says_so_in_one_sentence():
    with pytest.raises(ConfigError) as refused:
        parse_programme({"exercise": []}, "mine.toml")
    assert str(refused.value) == "mine.toml: the [programme] table is missing; a programme file starts with one"
    assert "None" not in str(refused.value)


def test_a_programme_file_without_exercises_says_so_in_one_sentence():
    data = tomllib.loads((PROGRAMME_DIR / "leaflet.toml").read_text())
    data.pop("exercise")
    with pytest.raises(ConfigError) as refused:
        parse_programme(data, "mine.toml")
    assert str(refused.value).startswith("mine.toml: the [[exercise]] tables are missing")

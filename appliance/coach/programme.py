"""Programmes as data: programme → exercises → phases, loaded from TOML and validated.

A physiotherapist can read and edit the TOML; this module only interprets it and
refuses anything malformed with an error naming file, exercise, key and value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from appliance.config import ConfigError, check_known_keys, read_toml

PROGRAMME_DIR = Path(__file__).parent / "programmes"


class PhaseKind(Enum):
    INHALE = "inhale"  # breathe in, pelvic floor relaxed
    CONTRACT = "contract"  # rise to the phase level; starts on the out-breath
    HOLD = "hold"  # keep the level
    RELEASE = "release"  # come down to the phase level
    REST = "rest"  # relaxed rest between repetitions
    MOVE = "move"  # keep the level while the body moves (knee, squat, walk, hop)

    @property
    def asks_contraction(self) -> bool:
        return self in (PhaseKind.CONTRACT, PhaseKind.HOLD, PhaseKind.MOVE, PhaseKind.RELEASE)


class Motion(Enum):
    NONE = "none"
    KNEE_LIFT = "knee_lift"
    FOOT_BACK = "foot_back"
    SQUAT_BACK = "squat_back"
    WALK = "walk"
    HOP = "hop"


@dataclass(frozen=True)
class Caution:
    """A caution spoken in a given phase of given repetitions (1-based)."""

    phrase: str
    phase: PhaseKind
    reps: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class Phase:
    kind: PhaseKind
    level: float = 0.0  # fraction of the exercise's target %MVC reached at the phase's end
    seconds: float | None = None  # fixed duration (a rest without one lasts rest_between_reps_s)
    breaths: int | None = None  # duration in whole breaths at the current pace
    on_exhale: bool = False  # starts with an out-breath (and its cue lands on it)
    say: str | None = None  # cue phrase for the first repetition (keyword on the transition)
    say_again: str | None = None  # shorter cue for later repetitions
    count: bool = False  # count the seconds aloud ("één, twee, …")
    motion: Motion = Motion.NONE
    # A hold in breaths lasts the patient's own breaths, but never longer than this.
    max_seconds: float | None = None


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    intro: tuple[str, ...]
    phases: tuple[Phase, ...]
    repetitions: int
    rest_between_reps_s: float
    target_pct_mvc: float
    cautions: tuple[Caution, ...] = ()
    outro: tuple[str, ...] = ()
    progressions: tuple[str, ...] = ()
    clinician_defaults: tuple[str, ...] = ()  # keys chosen by us where the leaflet gives no number
    max_target_pct_mvc: float = 100.0
    # False: a daily-life exercise done with the probe taken out (walking, hopping): coached
    # by voice and timed, no strength measured or stored.
    probe: bool = True
    adaptive_target: bool = True  # the target may step within the set (the clinician can switch it off)

    @property
    def target_level_pct(self) -> float:
        return min(self.target_pct_mvc, self.max_target_pct_mvc)


@dataclass(frozen=True)
class DayGroup:
    """Exercises trained together on the days of the rotation, and the phrase that says so."""

    exercises: tuple[str, ...]
    say: tuple[str, ...] = ()


@dataclass(frozen=True)
class Programme:
    id: str
    title: str
    intro: tuple[str, ...]
    exercises: tuple[Exercise, ...]
    outro: tuple[str, ...]
    source: str = ""
    # The calibration's squeeze as %MVC: 100 asks for a maximal squeeze; lower asks for a
    # gentle one and takes it as this share of the MVC (after surgery: no maximal effort).
    reference_squeeze_pct: float = 100.0
    # The day plan (see appliance.patient.today): these exercises every main session, plus
    # one rotation group a day, by weekday. Empty: every exercise every time.
    daily: tuple[str, ...] = ()
    rotation: tuple[DayGroup, ...] = ()
    # Outro phrases said only at the week's first main session (the tips), not every day.
    weekly_outro: tuple[str, ...] = ()
    # Said once, when the probe comes out before the daily-life exercises (probe = false).
    probe_out: tuple[str, ...] = ()
    # A known MVC (the clinic's, or measured earlier): the calibration measures the rest
    # pressure only and asks for no squeeze. `mvc_source` says where it came from.
    known_mvc_cmh2o: float | None = None
    mvc_source: str = "squeeze"

    def exercise(self, exercise_id: str) -> Exercise:
        for ex in self.exercises:
            if ex.id == exercise_id:
                return ex
        raise KeyError(f"{self.source}: no exercise {exercise_id!r}")

    def phrase_keys(self) -> set[str]:
        keys = set(self.intro) | set(self.outro)
        for ex in self.exercises:
            keys |= {ex.title, *ex.intro, *ex.outro, *ex.progressions}
            keys |= {c.phrase for c in ex.cautions}
            for ph in ex.phases:
                keys |= {k for k in (ph.say, ph.say_again) if k}
        return keys

    def only(self, *exercise_ids: str) -> Programme:
        """The same programme restricted to the given exercises, in programme order."""
        missing = set(exercise_ids) - {e.id for e in self.exercises}
        if missing:
            raise KeyError(f"{self.source}: no exercise {sorted(missing)}")
        return replace(self, exercises=tuple(e for e in self.exercises if e.id in exercise_ids))


# --- Loading and validation -------------------------------------------------------------

_PHASE_KEYS = {"kind", "level", "seconds", "breaths", "on_exhale", "say", "say_again", "count", "motion",
               "max_seconds"}
_EXERCISE_KEYS = {
    "id", "title", "intro", "phase", "repetitions", "rest_between_reps_s", "target_pct_mvc",
    "cautions", "outro", "progressions", "clinician_defaults", "max_target_pct_mvc", "leaflet", "probe",
}


class _Where:
    def __init__(self, file: Path | str, exercise: str | None = None, prefix: str = "") -> None:
        self.file = file
        self.exercise = exercise
        self.prefix = prefix

    def key(self, key: str) -> str:
        if key.startswith(self.prefix):
            key = key[len(self.prefix):]
        return f"exercise {self.exercise}: {self.prefix}{key}" if self.exercise else f"{self.prefix}{key}"

    def error(self, key: str, value: Any, reason: str) -> ConfigError:
        return ConfigError(self.file, self.key(key), value, reason)


def _get(table: dict, key: str, types: type | tuple, where: _Where, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise where.error(key, None, "is required")
        return default
    value = table[key]
    if isinstance(value, bool) and types in (int, float, (int, float)):
        raise where.error(key, value, "must be a number")
    if not isinstance(value, types):
        name = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise where.error(key, value, f"must be of type {name}")
    return value


def _number(table: dict, key: str, where: _Where, lo: float, hi: float, default: Any = ...) -> Any:
    value = _get(table, key, (int, float), where, default)
    if value is None or value is default and default is not ...:
        return value
    if not lo <= value <= hi:
        raise where.error(key, value, f"must be between {lo} and {hi}")
    return float(value)


def _phrases(table: dict, key: str, where: _Where, known: set[str] | None) -> tuple[str, ...]:
    value = _get(table, key, list, where, [])
    for i, item in enumerate(value):
        _check_phrase(item, f"{key}[{i}]", where, known)
    return tuple(value)


def _check_phrase(value: Any, key: str, where: _Where, known: set[str] | None) -> None:
    if not isinstance(value, str):
        raise where.error(key, value, "must be a phrase key (text)")
    if known is not None and value not in known:
        raise where.error(key, value, "is not a phrase in the catalogue")


def _enum(enum: type[Enum], value: Any, key: str, where: _Where) -> Any:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise where.error(key, value, f"must be one of {allowed}") from None


def _phase(table: Any, index: int, where: _Where, known: set[str] | None) -> Phase:
    key = f"phase[{index}]"
    where = _Where(where.file, where.exercise, f"{key}.")
    if not isinstance(table, dict):
        raise where.error(key, table, "must be a table")
    check_known_keys(table, _PHASE_KEYS, where.error)
    kind = _enum(PhaseKind, _get(table, "kind", str, where), f"{key}.kind", where)
    seconds = _number(table, "seconds", where, 0.2, 600.0, None)
    breaths = table.get("breaths")
    if breaths is not None and (isinstance(breaths, bool) or not isinstance(breaths, int) or not 1 <= breaths <= 10):
        raise where.error(f"{key}.breaths", breaths, "must be a whole number from 1 to 10")
    on_exhale = _get(table, "on_exhale", bool, where, False)
    if seconds is None and breaths is None and kind not in (PhaseKind.INHALE, PhaseKind.REST) and not on_exhale:
        raise where.error(f"{key}.seconds", None, "a phase needs seconds, breaths or on_exhale")
    if seconds is not None and breaths is not None:
        raise where.error(f"{key}.breaths", breaths, "give seconds or breaths, not both")
    level = _number(table, "level", where, 0.0, 1.5, 0.0)
    if kind in (PhaseKind.INHALE, PhaseKind.REST) and level:
        raise where.error(f"{key}.level", level, f"a {kind.value} phase is relaxed (level 0)")
    for k in ("say", "say_again"):
        if k in table:
            _check_phrase(table[k], f"{key}.{k}", where, known)
    motion = _enum(Motion, table.get("motion", "none"), f"{key}.motion", where)
    count = _get(table, "count", bool, where, False)
    if count and (seconds is None or seconds > 10):
        raise where.error(f"{key}.count", count, "counting needs a fixed hold of at most 10 seconds")
    max_seconds = _number(table, "max_seconds", where, 1.0, 60.0, None)
    if max_seconds is not None and breaths is None:
        raise where.error(f"{key}.max_seconds", max_seconds, "only a phase counted in breaths takes max_seconds")
    return Phase(
        kind=kind, level=level, seconds=seconds, breaths=breaths, on_exhale=on_exhale,
        say=table.get("say"), say_again=table.get("say_again"), count=count, motion=motion,
        max_seconds=max_seconds,
    )


def _exercise(table: Any, index: int, file: Path | str, known: set[str] | None) -> Exercise:
    if not isinstance(table, dict):
        raise ConfigError(file, f"exercise[{index}]", table, "must be a table")
    ex_id = table.get("id")
    if not isinstance(ex_id, str) or not ex_id:
        raise ConfigError(file, f"exercise[{index}].id", ex_id, "every exercise needs an id (text)")
    where = _Where(file, ex_id)
    check_known_keys(table, _EXERCISE_KEYS, where.error)
    title = _get(table, "title", str, where)
    _check_phrase(title, "title", where, known)
    phases_raw = _get(table, "phase", list, where)
    if not phases_raw:
        raise where.error("phase", phases_raw, "an exercise needs at least one phase")
    phases = tuple(_phase(p, i, where, known) for i, p in enumerate(phases_raw))
    reps = _get(table, "repetitions", int, where)
    if not 1 <= reps <= 30:
        raise where.error("repetitions", reps, "must be between 1 and 30")
    cautions = []
    for i, c in enumerate(_get(table, "cautions", list, where, [])):
        key = f"cautions[{i}]"
        if not isinstance(c, dict) or "phrase" not in c or "phase" not in c:
            raise where.error(key, c, "a caution is a table with phrase and phase")
        _check_phrase(c["phrase"], f"{key}.phrase", where, known)
        phase = _enum(PhaseKind, c["phase"], f"{key}.phase", where)
        c_reps = c.get("reps", [1])
        if not isinstance(c_reps, list) or not all(isinstance(r, int) and 1 <= r <= reps for r in c_reps):
            raise where.error(f"{key}.reps", c_reps, f"must list repetitions between 1 and {reps}")
        cautions.append(Caution(phrase=c["phrase"], phase=phase, reps=tuple(c_reps)))
    defaults = _get(table, "clinician_defaults", list, where, [])
    for d in defaults:
        if d not in _EXERCISE_KEYS and not d.startswith("phase"):
            raise where.error("clinician_defaults", d, "names a key the exercise does not have")
    return Exercise(
        id=ex_id,
        title=title,
        intro=_phrases(table, "intro", where, known),
        phases=phases,
        repetitions=reps,
        rest_between_reps_s=_number(table, "rest_between_reps_s", where, 0.0, 120.0, 0.0),
        target_pct_mvc=_number(table, "target_pct_mvc", where, 5.0, 100.0),
        cautions=tuple(cautions),
        outro=_phrases(table, "outro", where, known),
        progressions=_phrases(table, "progressions", where, known),
        clinician_defaults=tuple(defaults),
        max_target_pct_mvc=_number(table, "max_target_pct_mvc", where, 5.0, 100.0, 100.0),
        probe=_get(table, "probe", bool, where, True),
    )


def parse_programme(data: dict, file: Path | str, known_phrases: set[str] | None = None) -> Programme:
    head = data.get("programme")
    if head is None:
        raise ConfigError(file, "(file)", None, "the [programme] table is missing; a programme file starts with one")
    if not isinstance(head, dict):
        raise ConfigError(file, "programme", head, "must be a [programme] table")
    where = _Where(file)
    prog_id = _get(head, "id", str, where)
    title = _get(head, "title", str, where)
    _check_phrase(title, "programme.title", where, known_phrases)
    exercises_raw = data.get("exercise")
    if exercises_raw is None:
        raise ConfigError(file, "(file)", None, "the [[exercise]] tables are missing; a programme needs at least one")
    if not isinstance(exercises_raw, list) or not exercises_raw:
        raise ConfigError(file, "exercise", exercises_raw, "a programme needs [[exercise]] tables")
    exercises = tuple(_exercise(t, i, file, known_phrases) for i, t in enumerate(exercises_raw))
    seen: set[str] = set()
    for ex in exercises:
        if ex.id in seen:
            raise ConfigError(file, "exercise.id", ex.id, "appears twice")
        seen.add(ex.id)
    daily, rotation = parse_day(data.get("day", {}), {e.id for e in exercises}, file, known_phrases)
    return Programme(
        id=prog_id,
        title=title,
        intro=_phrases(head, "intro", where, known_phrases),
        exercises=exercises,
        outro=_phrases(head, "outro", where, known_phrases),
        source=str(file),
        reference_squeeze_pct=_number(head, "reference_squeeze_pct", where, 10.0, 100.0, 100.0),
        daily=daily,
        rotation=rotation,
        probe_out=_phrases(head, "probe_out", where, known_phrases),
        weekly_outro=_phrases(head, "weekly_outro", where, known_phrases),
    )


def parse_day(table: Any, known: set[str], file: Path | str, known_phrases: set[str] | None,
              prefix: str = "day.") -> tuple[tuple[str, ...], tuple[DayGroup, ...]]:
    """A `[day]` table: `daily` exercise ids, and `rotation`, a list of {exercises, say} tables."""
    where = _Where(file, None, prefix)
    if not isinstance(table, dict):
        raise where.error("", table, "must be a table with daily and rotation")
    check_known_keys(table, {"daily", "rotation"}, where.error)

    def ids(value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise where.error(key, value, "must be a list of exercise ids")
        for v in value:
            if v not in known:
                raise where.error(key, v, f"is not an exercise of the programme (known: {', '.join(sorted(known))})")
        return tuple(value)

    daily = ids(table.get("daily", []), "daily")
    groups = []
    rotation = _get(table, "rotation", list, where, [])
    for i, g in enumerate(rotation):
        key = f"rotation[{i}]"
        if not isinstance(g, dict) or "exercises" not in g:
            raise where.error(key, g, "a rotation group is a table with exercises (and say)")
        group_where = _Where(file, None, f"{prefix}{key}.")
        check_known_keys(g, {"exercises", "say"}, group_where.error)
        groups.append(DayGroup(ids(g["exercises"], f"{key}.exercises"),
                               _phrases(g, "say", group_where, known_phrases)))
    return daily, tuple(groups)


def load_programme(name_or_path: str | Path, known_phrases: set[str] | None = None) -> Programme:
    """Load a shipped programme by name (`leaflet`, `postop`) or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROGRAMME_DIR / f"{name_or_path}.toml"
    if known_phrases is None:
        from appliance.voice.phrases import Catalogue

        known_phrases = Catalogue.load("nl").keys()
    return parse_programme(read_toml(path), path, known_phrases)


def with_overrides(ex: Exercise, **changes: Any) -> Exercise:
    """An exercise with clinician overrides (repetitions, holds, targets) applied."""
    return replace(ex, **changes)



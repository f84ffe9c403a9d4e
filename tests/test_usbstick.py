"""The clinic's USB stick, with a folder standing in for it."""

from __future__ import annotations

from pathlib import Path

import pytest
from clinic_fixture import CODE, filled_state_dir, prescription_file

from appliance.clinic.enrolment import current_enrolment, status
from appliance.clinic.usbstick import STICK_EXPORT_DIR, STICK_KEY_FILE, StickAction, handle_stick, pair


@pytest.fixture()
def clinic_stick(tmp_path):
    stick = tmp_path / "clinic-stick"
    stick.mkdir()
    return stick


def _tree(path):
    return sorted((p.relative_to(path).as_posix(), p.stat().st_size) for p in path.rglob("*"))


def test_pairing_keeps_only_a_hash_of_the_clinic_key(tmp_path, clinic_stick):
    state = tmp_path / "state"
    pair(state, clinic_stick)
    key = (clinic_stick / STICK_KEY_FILE).read_text().strip()
    assert len(key) == 64
    assert key not in (state / "clinic.key").read_text()


def test_a_stick_with_the_key_and_a_prescription_enrolls_and_the_device_says_so(tmp_path, clinic_stick):
    state = tmp_path / "state"
    pair(state, clinic_stick)
    (clinic_stick / "prescription.toml").write_bytes(prescription_file(tmp_path).read_bytes())
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.ENROLLED and out.phrase == "clinic.enrolled"
    assert current_enrolment(state).code == CODE
    assert CODE not in out.detail


def test_a_stick_without_the_key_gets_nothing_and_changes_nothing(tmp_path, clinic_stick):
    state = filled_state_dir(tmp_path, days=2)
    pair(state, clinic_stick)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / STICK_KEY_FILE).write_text("f" * 64 + "\n")  # a key, but not this clinic's
    (stranger / "prescription.toml").write_bytes(prescription_file(tmp_path, "GNT-2026-0666").read_bytes())
    state_before, stick_before = _tree(state), _tree(stranger)
    out = handle_stick(stranger, state)
    assert out.action is StickAction.IGNORED and out.phrase == "clinic.stick_unknown"
    assert _tree(state) == state_before and _tree(stranger) == stick_before
    (stranger / "prescription.toml").unlink()
    stick_before = _tree(stranger)
    assert handle_stick(stranger, state).action is StickAction.IGNORED
    assert _tree(stranger) == stick_before  # no export either
    assert current_enrolment(state).code == CODE


def test_a_device_never_paired_ignores_every_stick(tmp_path, clinic_stick):
    (clinic_stick / STICK_KEY_FILE).write_text("a" * 64)
    (clinic_stick / "prescription.toml").write_bytes(prescription_file(tmp_path).read_bytes())
    assert handle_stick(clinic_stick, tmp_path / "state").action is StickAction.IGNORED
    assert not (tmp_path / "state").exists()


def test_a_stick_with_the_key_and_no_prescription_receives_the_export(tmp_path, clinic_stick):
    state = filled_state_dir(tmp_path, days=2)
    pair(state, clinic_stick)
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.EXPORTED and out.phrase == "clinic.exported"
    folders = list((clinic_stick / STICK_EXPORT_DIR).iterdir())
    assert len(folders) == 1 and folders[0].name.startswith(CODE)
    names = {p.name for p in folders[0].iterdir()}
    assert {"sessions.csv", "repetitions.csv", "observations.fhir.json", "report.pdf"} <= names
    rows = (folders[0] / "sessions.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == status(state).sessions


def test_a_clinic_stick_cannot_enroll_over_another_patient_or_with_a_bad_file(tmp_path, clinic_stick):
    state = filled_state_dir(tmp_path, days=1)
    pair(state, clinic_stick)
    (clinic_stick / "prescription.toml").write_bytes(prescription_file(tmp_path, "GNT-2026-0099").read_bytes())
    before = (state / "prescription.toml").read_bytes()
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.REFUSED and out.phrase == "clinic.enroll_refused"
    assert (state / "prescription.toml").read_bytes() == before
    (clinic_stick / "prescription.toml").write_text('[patient]\ncode = "Marie Peeters"\n')
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.REFUSED and out.phrase == "clinic.stick_invalid"
    assert "patient.code" in out.detail


# --- A hostile or broken stick (issue 13, item 8) ---------------------------------------------

def enrolled_state(tmp_path, clinic_stick):
    """An enrolled device with a few stored sessions, paired with `clinic_stick` (no simulation needed)."""
    from test_store_damaged import fill

    from appliance.clinic.enrolment import db_path, enroll

    state = tmp_path / "state"
    enroll(state, prescription_file(tmp_path))
    fill(db_path(state), sessions=3, reps=6)
    pair(state, clinic_stick)
    return state


@pytest.mark.parametrize("content", [b'[patient]\ncode = "GNT-\xff\xfe-0042"\n', b"x = " + b"[" * 5000 + b"]" * 5000],
                         ids=["not UTF-8", "nested 5000 deep"])
def test_a_prescription_that_is_not_text_or_nested_deeply_is_refused_and_nothing_changes(tmp_path, clinic_stick,
                                                                                         content):
    state = tmp_path / "state"
    pair(state, clinic_stick)
    (clinic_stick / "prescription.toml").write_bytes(content)
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.REFUSED and out.phrase == "clinic.stick_invalid"
    assert current_enrolment(state) is None


def test_a_200_mb_prescription_is_refused_without_being_read(tmp_path, clinic_stick):
    import subprocess
    import sys

    state = tmp_path / "state"
    pair(state, clinic_stick)
    with (clinic_stick / "prescription.toml").open("wb") as fh:
        fh.write(b'[patient]\ncode = "GNT-2026-0042"\n# ')
        fh.write(b"a" * (200 * 1024 * 1024))
    probe = (
        "import resource, sys\n"
        "from appliance.clinic.usbstick import handle_stick\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"out = handle_stick({str(clinic_stick)!r}, {str(state)!r})\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(out.action.value, out.phrase, grown)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    action, phrase, grown_kib = done.stdout.split()
    assert (action, phrase) == ("refused", "clinic.stick_invalid"), done.stderr
    assert int(grown_kib) < 20 * 1024  # KiB: the whole file would be 200 MiB


@pytest.mark.parametrize("planted", ["a file", "a dangling symlink", "a symlink to a folder"])
def test_an_export_folder_that_is_not_a_folder_is_refused_and_nothing_is_written_through_it(tmp_path, clinic_stick,
                                                                                            planted):
    state = enrolled_state(tmp_path, clinic_stick)
    export_dir = clinic_stick / STICK_EXPORT_DIR
    elsewhere = tmp_path / "elsewhere"
    if planted == "a file":
        export_dir.write_text("not a folder")
    elif planted == "a dangling symlink":
        export_dir.symlink_to(elsewhere)
    else:
        elsewhere.mkdir()
        export_dir.symlink_to(elsewhere)
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.REFUSED and out.phrase == "clinic.export_failed"
    assert STICK_EXPORT_DIR in out.detail and CODE not in out.detail
    assert not elsewhere.exists() or list(elsewhere.iterdir()) == []
    if planted == "a file":
        assert export_dir.read_text() == "not a folder"


def test_symlinks_planted_on_the_stick_are_never_followed(tmp_path, clinic_stick):
    state = enrolled_state(tmp_path, clinic_stick)
    # A prescription that is a link to a file elsewhere on the device: not read, not enrolled.
    other = prescription_file(tmp_path, "GNT-2026-0099")
    (clinic_stick / "prescription.toml").symlink_to(other)
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.REFUSED and out.phrase == "clinic.stick_invalid"
    assert "symbolic link" in out.detail and current_enrolment(state).code == CODE
    (clinic_stick / "prescription.toml").unlink()
    # A key file that is a link to a copy of the key elsewhere: the stick is not the clinic's.
    key = clinic_stick / STICK_KEY_FILE
    copy = tmp_path / "key-copy"
    copy.write_bytes(key.read_bytes())
    key.unlink()
    key.symlink_to(copy)
    assert handle_stick(clinic_stick, state).action is StickAction.IGNORED


def test_an_export_appears_on_the_stick_only_complete(tmp_path, clinic_stick):
    state = enrolled_state(tmp_path, clinic_stick)
    out = handle_stick(clinic_stick, state)
    assert out.action is StickAction.EXPORTED
    (folder,) = list((clinic_stick / STICK_EXPORT_DIR).iterdir())  # no partial folder left beside it
    assert folder.name.startswith(CODE) and not folder.name.startswith(".")
    assert {"sessions.csv", "repetitions.csv", "report.pdf"} <= {p.name for p in folder.iterdir()}
    assert all(p.stat().st_size > 0 for p in folder.iterdir())
    # A second export in the same minute does not overwrite the first.
    handle_stick(clinic_stick, state, now=None)
    assert len(list((clinic_stick / STICK_EXPORT_DIR).iterdir())) == 2


STICK_IN_SMALL_FS = '''
from appliance.clinic.usbstick import STICK_EXPORT_DIR, STICK_KEY_FILE, handle_stick
key = (MP.parent / "key").read_bytes()
mount(SIZE_KIB)
(MP / STICK_KEY_FILE).write_bytes(key)
if READ_ONLY:
    read_only()
out = handle_stick(MP, MP.parent / "state")
tree = sorted(str(p.relative_to(MP)) for p in MP.rglob("*"))
report(action=out.action.value, phrase=out.phrase, detail=out.detail, tree=tree)
'''


@pytest.mark.parametrize(("size_kib", "read_only"), [(96, False), (1024, True)], ids=["full stick", "read-only stick"])
def test_a_full_or_read_only_stick_gets_no_export_that_looks_complete(tmp_path, clinic_stick, size_kib, read_only):
    import small_fs

    if small_fs.unavailable():
        pytest.skip(small_fs.unavailable())
    enrolled_state(tmp_path, clinic_stick)
    (tmp_path / "key").write_bytes((clinic_stick / STICK_KEY_FILE).read_bytes())
    seen = small_fs.run(tmp_path / "stick", f"SIZE_KIB = {size_kib}\nREAD_ONLY = {read_only}\n" + STICK_IN_SMALL_FS)
    assert seen["action"] == "failed" and seen["phrase"] == "clinic.export_failed", seen
    assert ("read-only" if read_only else "full") in seen["detail"]
    # Nothing but the key and at most an empty export folder: no 0-byte CSV, no truncated PDF.
    assert [p for p in seen["tree"] if p not in (STICK_KEY_FILE, STICK_EXPORT_DIR)] == [], seen["tree"]

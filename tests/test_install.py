"""install.sh and the systemd units: lint, dry run, model checks, unit checks, example config."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from appliance.config import DeviceConfig, load_device_config

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "install.sh"
UNITS = ["appliance.service", "appliance-reminder.service", "appliance-reminder.timer"]
SYSTEM_PATHS = [Path("/opt/appliance"), Path("/etc/appliance"), Path("/var/lib/appliance"),
                Path("/etc/systemd/system"), Path("/usr/local/bin"), Path("/etc/udev/rules.d")]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh device steps need root")


def snapshot(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file and folder under `paths`."""
    seen = {}
    for top in paths:
        if not top.exists():
            seen[str(top)] = (-1, -1)
            continue
        for root, dirs, files in os.walk(top):
            for name in [*dirs, *files, "."]:
                p = Path(root, name)
                try:
                    st = p.lstat()
                except FileNotFoundError:
                    continue
                seen[str(p)] = (st.st_mtime_ns, st.st_size)
    return seen


def run_install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def isolated_env(tmp_path: Path) -> dict[str, str]:
    return {
        "APPLIANCE_CONFIG_DIR": str(tmp_path / "etc"),
        "APPLIANCE_STATE_DIR": str(tmp_path / "state"),
        "APPLIANCE_UNIT_DIR": str(tmp_path / "units"),
        "APPLIANCE_BIN_LINK": str(tmp_path / "bin" / "appliance"),
        "APPLIANCE_UDEV_DIR": str(tmp_path / "udev"),
    }


def test_shellcheck_finds_nothing():
    assert shutil.which("shellcheck"), "shellcheck missing: run ./install.sh --dev"
    scripts = [INSTALL] + [p for p in [REPO / ".ci" / "device-checks.sh", REPO / "bench" / "pi_rootfs.sh"]
                           if p.exists()]
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path):
    env = isolated_env(tmp_path)
    before = snapshot(SYSTEM_PATHS)
    result = run_install("--dry-run", "--prefix", str(tmp_path / "opt"), env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Each step is announced, not done.
    for expected in (
        "/usr/bin/python3 -m venv --system-site-packages",
        "pip install",
        "--only-binary=:all: --no-deps -r " + str(REPO / "device-requirements.txt"),
        "--no-build-isolation",
        f"{tmp_path}/etc/appliance.toml",
        "download https://",
        "vosk-model-small-nl-0.22.zip",
        "vosk-model-small-en-us-0.15.zip",
        f"{tmp_path}/units/appliance.service",
        f"{tmp_path}/units/appliance-stick@.service",
        f"{tmp_path}/udev/99-appliance-stick.rules",
        "enable appliance.service appliance-reminder.timer",
    ):
        assert expected in out, f"dry run does not mention {expected!r}:\n{out}"
    assert not (tmp_path / "opt").exists()
    assert not (tmp_path / "etc").exists()
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "units").exists()
    assert not (tmp_path / "udev").exists()
    assert snapshot(SYSTEM_PATHS) == before


def test_dry_run_uninstall_changes_nothing(tmp_path):
    before = snapshot(SYSTEM_PATHS)
    result = run_install("--dry-run", "--uninstall", "--purge")
    assert result.returncode == 0, result.stderr
    assert snapshot(SYSTEM_PATHS) == before


def test_unknown_option_is_refused_with_its_name():
    result = run_install("--frobnicate")
    assert result.returncode == 2
    assert "--frobnicate" in result.stderr


def make_model_zip(path: Path, top: str, valid: bool = True) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        if valid:
            zf.writestr(f"{top}/am/final.mdl", b"acoustic model bytes")
        zf.writestr(f"{top}/conf/model.conf", b"--sample-frequency=16000\n")
        zf.writestr(f"{top}/README", b"test model")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_root
def test_local_model_with_a_pinned_name_but_other_bytes_is_refused(tmp_path):
    env = isolated_env(tmp_path)
    fake = tmp_path / "vosk-model-small-nl-0.22.zip"
    make_model_zip(fake, "vosk-model-small-nl-0.22")
    result = run_install("--only", "models", "--languages", "nl", "--model", str(fake), env=env)
    assert result.returncode != 0
    assert "SHA-256" in result.stderr and "refusing" in result.stderr
    assert not (tmp_path / "state" / "models" / "nl").exists()


@needs_root
def test_local_model_matching_its_pin_is_unpacked_and_rerun_is_a_no_op(tmp_path):
    env = isolated_env(tmp_path)
    archive = tmp_path / "vosk-model-small-nl-0.22.zip"
    digest = make_model_zip(archive, "vosk-model-small-nl-0.22")
    env["APPLIANCE_MODEL_SHA256_nl"] = digest
    args = ("--only", "models", "--languages", "nl", "--model", str(archive))
    first = run_install(*args, env=env)
    assert first.returncode == 0, first.stderr
    model = tmp_path / "state" / "models" / "nl"
    assert (model / "am" / "final.mdl").read_bytes() == b"acoustic model bytes"
    assert (model / ".sha256").read_text().strip() == digest
    second = run_install(*args, env=env)
    assert second.returncode == 0
    assert "already installed" in second.stdout


@needs_root
def test_local_archive_that_is_not_a_vosk_model_is_refused(tmp_path):
    env = isolated_env(tmp_path)
    archive = tmp_path / "my-en-model.zip"
    make_model_zip(archive, "something", valid=False)
    args = ("--only", "models", "--languages", "en", "--model", f"en={archive}")
    result = run_install(*args, env=env)
    assert result.returncode != 0
    assert "not a Vosk model" in result.stderr
    assert not (tmp_path / "state" / "models" / "en").exists()


@needs_root
def test_a_model_that_cannot_be_downloaded_leaves_the_install_going_and_says_what_to_do(tmp_path):
    env = isolated_env(tmp_path)
    env["APPLIANCE_MODEL_BASE_URL"] = (tmp_path / "no-such-host").as_uri()
    result = run_install("--only", "models", "--languages", "nl en", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "no Dutch voice model (vosk-model-small-nl-0.22)" in out
    assert "English only (pocketsphinx)" in out
    assert "--model /path/to/vosk-model-small-nl-0.22.zip" in out
    assert "English voice commands use pocketsphinx" in out
    # Repeated in the closing summary, where the technician reads it.
    summary = out.split("still to do or to know:", 1)[1]
    assert "no Dutch voice model" in summary and "no English voice model" in summary
    assert not (tmp_path / "state" / "models" / "nl").exists()


def fake_dpkg(tmp_path: Path, arch: str) -> dict[str, str]:
    """PATH with a dpkg that reports `arch` as this system's architecture."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    dpkg = bin_dir / "dpkg"
    dpkg.write_text(f"#!/bin/sh\n[ \"$1\" = --print-architecture ] && echo {arch} && exit 0\nexit 1\n")
    dpkg.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_32_bit_raspberry_pi_os_is_refused_with_one_sentence_that_names_the_64_bit_image(tmp_path):
    env = {**isolated_env(tmp_path), **fake_dpkg(tmp_path, "armhf")}
    result = run_install("--dry-run", "--prefix", str(tmp_path / "opt"), env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "32-bit Raspberry Pi OS (armhf) is not supported" in lines[0]
    assert "Raspberry Pi OS Lite (64-bit)" in lines[0]
    assert "would run" not in result.stdout  # refused before any step


def test_the_device_takes_what_pypi_has_no_wheel_for_from_debian_and_pins_everything_else():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = {Requirement(r).name.lower() for r in project["dependencies"]}
    needed |= {Requirement(r).name.lower() for r in project["optional-dependencies"]["voice"]}
    pins = {}
    for line in (REPO / "device-requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"device-requirements.txt: {line!r} is not an exact pin"
            assert name.lower() not in pins, f"{name} pinned twice"
            pins[name.lower()] = version
    assert needed <= set(pins), f"not pinned for the device: {needed - set(pins)}"
    # Source-only on PyPI: these come from the Debian archive, never built on the Pi.
    script = INSTALL.read_text()
    apt = script[script.index("DEVICE_APT_PACKAGES=("):]
    apt = apt[:apt.index(")")]
    for name, package in (("spidev", "python3-spidev"), ("srt", "python3-srt")):
        assert name not in pins
        assert package in apt
    for library in ("libatomic1", "libportaudio2", "libespeak-ng1"):
        assert library in apt


def boot_config(tmp_path: Path, text: str) -> tuple[Path, dict[str, str]]:
    cfg = tmp_path / "config.txt"
    cfg.write_text(text)
    env = isolated_env(tmp_path)
    env["APPLIANCE_BOOT_CONFIG"] = str(cfg)
    env["APPLIANCE_USER"] = "appl-no-such-user"
    return cfg, env


PI_CONFIG = ("# For more options see config.txt docs\n#dtparam=spi=on\ndtoverlay=vc4-kms-v3d\n\n"
             "[cm4]\notg_mode=1\n\n[pi5]\narm_boost=1\n")


@needs_root
def test_spi_goes_into_an_all_section_with_whole_line_comments_and_uninstall_restores_config_txt(tmp_path):
    cfg, env = boot_config(tmp_path, PI_CONFIG)
    first = run_install("--only", "spi", env=env)
    assert first.returncode == 0, first.stderr
    lines = cfg.read_text().splitlines()
    added = lines[len(PI_CONFIG.splitlines()):]
    assert added[1:3] == ["[all]", "dtparam=spi=on"]
    assert all(line.startswith("#") for line in (added[0], added[3]))
    # The firmware reads whole-line comments only: no setting carries one.
    assert not [line for line in lines if not line.startswith("#") and "#" in line]
    again = run_install("--only", "spi", env=env)
    assert "SPI already enabled" in again.stdout
    assert cfg.read_text().count("dtparam=spi=on") == 2  # the commented default and ours
    removed = run_install("--uninstall", "--prefix", str(tmp_path / "opt"), env=env)
    assert removed.returncode == 0, removed.stderr
    assert cfg.read_text() == PI_CONFIG


@needs_root
@pytest.mark.parametrize(("text", "already"), [
    ("dtparam=spi=on\n[pi4]\narm_boost=1\n", True),
    ("[pi4]\narm_boost=1\n[all]\ndtparam=spi=on\n", True),
    ("[pi4]\ndtparam=spi=on\n", False),  # only for a Pi 4: the Pi 5 would have no SPI
])
def test_spi_counts_as_enabled_only_where_it_applies_to_every_board(tmp_path, text, already):
    cfg, env = boot_config(tmp_path, text)
    result = run_install("--only", "spi", env=env)
    assert result.returncode == 0, result.stderr
    assert ("SPI already enabled" in result.stdout) is already
    assert (cfg.read_text() == text) is already


def unit_root(tmp_path: Path) -> Path:
    """A root with systemd's own units, our units and a stand-in for the venv's command."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(REPO / "systemd" / unit, root / "etc/systemd/system" / unit)
    exe = root / "opt/appliance/venv/bin/appliance"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy("/bin/systemctl", root / "bin/systemctl")
    return root


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze missing")
def test_units_pass_systemd_analyze_verify(tmp_path):
    root = unit_root(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *UNITS],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "appliance" not in result.stderr, result.stderr  # no warnings about our units


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze missing")
@pytest.mark.parametrize("unit", sorted(p.name for p in (REPO / "systemd").glob("*.service")))
def test_every_service_exposure_is_at_most_2_0(unit):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(REPO / "systemd" / unit)],
        capture_output=True, text=True, timeout=60,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    score = float(match.group(1))
    print(f"{unit}: exposure {score} {match.group(2)}")
    assert score <= 2.0


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze missing")
def test_the_stick_unit_passes_systemd_analyze_verify_for_a_partition(tmp_path):
    root = unit_root(tmp_path)
    shutil.copy(REPO / "systemd" / "appliance-stick@.service", root / "etc/systemd/system")
    for tool in ("mkdir", "mount", "umount", "sync", "rmdir"):
        shutil.copy(shutil.which(tool) or f"/bin/{tool}", root / "bin" / tool)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "appliance-stick@sda1.service"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "appliance" not in result.stderr, result.stderr


def test_the_stick_is_mounted_as_vfat_or_exfat_without_suid_devices_executables_or_symlinks():
    text = (REPO / "systemd" / "appliance-stick@.service").read_text()
    (mount,) = [line for line in text.splitlines() if line.startswith("ExecStartPre=+/bin/mount")]
    words = mount.split()
    assert words[words.index("-t") + 1] == "vfat,exfat"
    options = set(words[words.index("-o") + 1].split(","))
    assert {"nosuid", "nodev", "noexec", "nosymfollow"} <= options
    assert "appliance clinic stick" in text and "ExecStopPost=+/bin/umount" in text


def test_main_unit_has_the_required_settings():
    text = (REPO / "systemd" / "appliance.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["Type"] == "notify"
    assert settings["Restart"] == "always"
    assert settings["User"] == "appliance"
    assert settings["DevicePolicy"] == "closed"
    assert int(settings["WatchdogSec"].rstrip("s")) >= 5
    for key in ("StartLimitIntervalSec", "StartLimitBurst", "ProtectSystem", "ProtectHome",
                "PrivateTmp", "NoNewPrivileges", "StateDirectory", "ConfigurationDirectory"):
        assert key in settings, key
    allowed = {
        line.split("=", 1)[1] for line in text.splitlines() if line.startswith("DeviceAllow=")
    }
    needed = {"/dev/spidev0.0 rw", "/dev/gpiochip0 rw", "/dev/gpiochip4 rw", "char-alsa rw"}
    assert needed <= allowed
    assert "/opt/appliance/venv/bin/appliance run" in settings["ExecStart"]


def test_example_configuration_loads_and_documents_every_key():
    path = REPO / "examples" / "appliance.toml"
    config = load_device_config(path)
    assert config.source == str(path)
    lines = path.read_text().splitlines()

    key_line = re.compile(r"^#?\s*(\w+)\s*=")

    def documented(key: str) -> bool:
        """The key (or its commented-out example) follows a prose comment; keys that
        share one comment (spi_port, spi_device) may stand together under it."""
        for i, line in enumerate(lines):
            m = key_line.match(line)
            if m and m.group(1) == key:
                j = i - 1
                while j >= 0 and key_line.match(lines[j]):
                    j -= 1
                return j >= 0 and lines[j].startswith("# ")
        return False

    for f in dataclasses.fields(DeviceConfig):
        if f.name == "source":
            continue
        sub = getattr(config, f.name)
        if dataclasses.is_dataclass(sub):
            assert f"[{f.name}]" in lines, f"table [{f.name}] missing"
            for g in dataclasses.fields(sub):
                assert documented(g.name), f"{f.name}.{g.name} is not in the example with a comment"
        else:
            assert documented(f.name), f"{f.name} is not in the example with a comment"


@needs_root
@pytest.mark.parametrize("purge", [False, True])
def test_uninstall_removes_what_install_added_and_keeps_patient_data_unless_purged(tmp_path, purge):
    env = isolated_env(tmp_path)
    user = f"appl-test-{os.getpid() % 10000}{int(purge)}"
    env["APPLIANCE_USER"] = user
    prefix = str(tmp_path / "opt")
    first = run_install("--only", "user,dirs", "--prefix", prefix, env=env)
    assert first.returncode == 0, first.stderr
    try:
        assert subprocess.run(["getent", "passwd", user], capture_output=True).returncode == 0
        config = tmp_path / "etc" / "appliance.toml"
        assert config.exists() and config.stat().st_mode & 0o777 == 0o640
        patient_data = tmp_path / "state" / "appliance.db"
        patient_data.write_bytes(b"sessions")
        (tmp_path / "opt").mkdir()
        args = ["--uninstall", "--prefix", prefix] + (["--purge"] if purge else [])
        result = run_install(*args, env=env)
        assert result.returncode == 0, result.stderr
        assert subprocess.run(["getent", "passwd", user], capture_output=True).returncode != 0
        assert not (tmp_path / "opt").exists()
        assert not (tmp_path / "state" / "models").exists()
        assert patient_data.exists() is (not purge)
        assert config.exists() is (not purge)
    finally:
        subprocess.run(["userdel", user], capture_output=True)

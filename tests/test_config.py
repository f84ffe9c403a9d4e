"""The device configuration refuses what would make the device silent, blind or unsafe.

Each refusal is one `ConfigError` naming the file, the dotted key and the value; the
command line turns it into one sentence on stderr and exit status 2.
"""

from __future__ import annotations

import math

import pytest

from appliance.cli import main
from appliance.config import (
    FORBIDDEN_STIM_PINS,
    ConfigError,
    check_range,
    load_device_config,
)


def write(tmp_path, text: str, name: str = "appliance.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_device_config(path)
    assert err.value.file == str(path)
    return err.value


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[audio]\nvolume = nan\n", "audio.volume"),  # a silent session, warning included
        ("[audio]\nvolume = -nan\n", "audio.volume"),
        ("[sensor]\nvref = nan\n", "sensor.vref"),  # a probe on the table would read "ok"
        ("[sensor]\ndivider_ratio = nan\n", "sensor.divider_ratio"),
        ("[sensor]\nsample_rate_hz = nan\n", "sensor.sample_rate_hz"),  # selftest said "ok"
        ("[sensor]\nsample_rate_hz = inf\n", "sensor.sample_rate_hz"),
        ("[audio]\ntone_rest_hz = -inf\n", "audio.tone_rest_hz"),
        ("[voice]\nmin_confidence = nan\n", "voice.min_confidence"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, text, key):
    err = refused(tmp_path, text)
    assert err.key == key
    assert math.isnan(err.value) or math.isinf(err.value)
    assert "finite" in err.reason


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), True, "3.3", None])
def test_check_range_refuses_what_is_not_a_finite_number(value):
    # programmes (pacing) and the stimulation parser use this helper too
    with pytest.raises(ConfigError) as err:
        check_range("rx.toml", "pace.inhale_s", value, 2.0, 8.0)
    assert err.value.key == "pace.inhale_s"


def test_check_range_keeps_finite_numbers_in_range():
    check_range("rx.toml", "k", 2.0, 2.0, 8.0)
    check_range("rx.toml", "k", 8, 2.0, 8.0)
    with pytest.raises(ConfigError, match="at least 1"):
        check_range("rx.toml", "k", 0.5, 1, None)


@pytest.mark.parametrize(
    ("text", "key", "value", "words"),
    [
        # The tone falls as the squeeze rises, or is silent: refused.
        ("[audio]\ntone_rest_hz = 900.0\ntone_target_hz = 880.0\n", "audio.tone_rest_hz", 900.0, "below"),
        ("[audio]\ntone_rest_hz = 880.0\ntone_target_hz = 880.0\n", "audio.tone_rest_hz", 880.0, "below"),
        # A 4000 Hz target cannot be played at 8000 samples a second.
        ("[audio]\nsample_rate = 8000\ntone_target_hz = 4000.0\n", "audio.tone_target_hz", 4000.0, "half"),
        # 4096 frames at 8000 Hz: the tone answers half a second late.
        ("[audio]\nsample_rate = 8000\nblock_size = 4096\n", "audio.block_size", 4096, "ms"),
        ("[sensor]\nchannel = 2\nabdominal_channel = 2\n", "sensor.abdominal_channel", 2, "channel"),
        ("[sensor]\nabdominal_channel = 9\n", "sensor.abdominal_channel", 9, "between"),
    ],
)
def test_related_keys_are_cross_checked(tmp_path, text, key, value, words):
    err = refused(tmp_path, text)
    assert (err.key, err.value) == (key, value)
    assert words in err.reason


@pytest.mark.parametrize("pin", [4, 10, 0, 8, 9, 11, 14, 15])
def test_forbidden_stim_pins_are_refused(tmp_path, pin):
    err = refused(tmp_path, f"[controls]\nstim_pin = {pin}\n")
    assert (err.key, err.value) == ("controls.stim_pin", pin)
    assert f"GPIO{pin}" in err.reason and "docs/stimulation.md" in err.reason


def test_forbidden_pins_follow_docs_stimulation_md():
    assert set(FORBIDDEN_STIM_PINS) == set(range(0, 12)) | {14, 15}
    assert 22 not in FORBIDDEN_STIM_PINS


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("[controls]\nled_pin = 22\n", "controls.led_pin", 22),  # the LED's PWM on the stim line
        ("[controls]\nbutton_pin = 22\n", "controls.button_pin", 22),
        ("[controls]\nbutton_pin = 27\n", "controls.led_pin", 27),
        ("[controls]\nstim_pin = 17\n", "controls.button_pin", 17),
        # SPI1's chip select 1 is GPIO17, the default button.
        ('[sensor]\nsource = "adc"\nspi_port = 1\nspi_device = 1\n', "controls.button_pin", 17),
        ('[sensor]\nsource = "adc"\nspi_port = 1\n[controls]\nstim_pin = 20\n', "controls.stim_pin", 20),
        ('[sensor]\nsource = "adc"\n[controls]\nled_pin = 9\n', "controls.led_pin", 9),
        ("[controls]\nled_pin = 40\n", "controls.led_pin", 40),
        ("[controls]\nled_pin = -1\n", "controls.led_pin", -1),
    ],
)
def test_pin_clashes_are_refused(tmp_path, text, key, value):
    err = refused(tmp_path, text)
    assert (err.key, err.value) == (key, value)


def test_pins_that_do_not_clash_load(tmp_path):
    path = write(tmp_path, '[sensor]\nsource = "adc"\nspi_port = 1\nspi_device = 0\n'
                           "[controls]\nbutton_pin = 5\nled_pin = 6\nstim_pin = 23\n")
    cfg = load_device_config(path)
    assert (cfg.controls.button_pin, cfg.controls.led_pin, cfg.controls.stim_pin) == (5, 6, 23)


def test_the_shipped_example_configuration_loads():
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "appliance.toml"
    cfg = load_device_config(example)
    assert cfg.controls.stim_pin == 22 and cfg.sensor.source == "adc"


def test_a_binary_file_is_refused_as_not_utf8(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ConfigError) as err:
        load_device_config(path)
    assert err.value.key == "(file)" and "UTF-8" in err.value.reason


def test_a_byte_order_mark_is_read_past(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'language = "en"\n')
    assert load_device_config(path).language == "en"


def one_sentence_error(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code != 0
    err = captured.err.strip()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("command", [["calibrate"], ["selftest", "--simulated", "--quiet"]])
def test_commands_refuse_a_binary_configuration_in_one_sentence(tmp_path, capsys, command):
    cfg = tmp_path / "appliance.toml"
    cfg.write_bytes(b"\xff\xfe\x00binary\x00")
    err = one_sentence_error(capsys, [*command, "--config", str(cfg), "--state-dir", str(tmp_path / "s")])
    assert str(cfg) in err and "UTF-8" in err


def test_selftest_refuses_a_nan_sample_rate_instead_of_saying_ok(tmp_path, capsys):
    cfg = write(tmp_path, "[sensor]\nsample_rate_hz = nan\n")
    err = one_sentence_error(capsys, ["selftest", "--simulated", "--quiet", "--config", str(cfg),
                                      "--state-dir", str(tmp_path / "s")])
    assert "sensor.sample_rate_hz = nan" in err and str(cfg) in err


@pytest.mark.parametrize(("text", "key", "shown", "reason"), [
    ("[speech]\nvoice_pack = 3\n", "speech.voice_pack", "3", "must be text or a table"),
    ("[speech]\nvoice_pack = true\n", "speech.voice_pack", "true", "must be text or a table"),
    ('[speech]\nvoice_pack = { nl = 3 }\n', "speech.voice_pack.nl", "3", "must be text"),
])
def test_a_voice_pack_of_the_wrong_kind_is_one_sentence_naming_key_and_value(tmp_path, text, key, shown, reason):
    err = refused(tmp_path, text)
    assert (err.key, err.reason) == (key, reason)
    assert str(err).endswith(f"{key} = {shown}: {reason}")
    assert str(err).count("must be") == 1

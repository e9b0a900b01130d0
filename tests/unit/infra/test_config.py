"""config.yaml: defaults, --set overrides, secrets, paths and refused values."""

import os

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from support.paths import ROOT


def test_defaults_match_the_documented_config_file():
    documented = load_config(os.path.join(ROOT, "config.yaml")).to_dict()
    builtin = load_config(None).to_dict()
    assert documented == builtin


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["mqtt.port=1884", "backend.validate.frames=4",
                             "updates.allowed_schemes=[https]", "device.id=cam-1",
                             "predictions.max_rate_hz=2.5"])
    assert cfg.mqtt.port == 1884 and cfg.backend.validate.frames == 4
    assert cfg.updates.allowed_schemes == ["https"] and cfg.device.id == "cam-1"
    assert cfg.predictions.max_rate_hz == 2.5


def test_secrets_are_redacted(tmp_path):
    (tmp_path / "pw").write_text("hunter2\n")
    cfg = load_config(None, ["mqtt.password_file={}".format(tmp_path / "pw"), "mqtt.username=u",
                             "source.uri=rtsp://cam:hunter2@10.0.0.5/live"])
    red = cfg.redacted()
    assert red["mqtt"]["password_file"] == "***" and red["mqtt"]["username"] == "u"
    assert red["source"]["uri"] == "rtsp://cam:***@10.0.0.5/live"
    assert "hunter2" not in str(red)


PATH_FILES = ("mqtt.password_file", "mqtt.tls.ca_file", "mqtt.tls.cert_file",
              "mqtt.tls.key_file", "updates.public_key_file", "updates.ca_file")


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    """Every path key, not only state_dir: the agent's working directory (/ under systemd)
    must not matter."""
    conf = tmp_path / "etc"
    (conf / "keys").mkdir(parents=True)
    (conf / "calib").mkdir()
    lines = {}
    for key in PATH_FILES:
        name = key.replace(".", "_")
        (conf / "keys" / name).write_text("x")
        lines[key] = "keys/" + name
    text = ("device: {{state_dir: data}}\nbackend: {{calibration_dir: calib}}\n"
            "mqtt: {{password_file: {}, tls: {{ca_file: {}, cert_file: {}, key_file: {}}}}}\n"
            "updates: {{public_key_file: {}, ca_file: {}}}\n").format(
                *[lines[k] for k in PATH_FILES])
    (conf / "c.yaml").write_text(text)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(str(elsewhere))
    cfg = load_config(str(conf / "c.yaml"))
    assert cfg.device.state_dir == str(conf / "data")
    assert cfg.resolve(cfg.device.state_dir) == str(conf / "data")
    assert cfg.backend.calibration_dir == str(conf / "calib")
    for key in PATH_FILES:
        assert cfg.get(key) == str(conf / "keys" / key.replace(".", "_")), key


@pytest.mark.parametrize("key", PATH_FILES)
def test_a_missing_file_key_is_refused_with_its_path(tmp_path, key):
    (tmp_path / "c.yaml").write_text("{}\n")
    overrides = ["{}=missing.pem".format(key)]
    if key in ("mqtt.tls.cert_file", "mqtt.tls.key_file"):  # they go together
        (tmp_path / "other.pem").write_text("x")
        other = "mqtt.tls.key_file" if key == "mqtt.tls.cert_file" else "mqtt.tls.cert_file"
        overrides.append("{}={}".format(other, tmp_path / "other.pem"))
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "c.yaml"), overrides)
    assert str(err.value).startswith("config: {}: {} does not exist".format(
        key, tmp_path / "missing.pem")), str(err.value)


@pytest.mark.parametrize("value, message", [
    (".nan", "config: telemetry.interval_s: nan is not a finite number"),
    (".inf", "config: telemetry.interval_s: inf is not a finite number"),
])
def test_non_finite_numbers_are_refused(value, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["telemetry.interval_s=" + value])
    assert message in str(err.value)
    for key in ("predictions.max_rate_hz", "predictions.min_score", "source.fps",
                "backend.validate.min_top1_agreement", "telemetry.sample_hz",
                "updates.max_latency_factor"):
        with pytest.raises(ConfigError) as err:
            load_config(None, ["{}=.nan".format(key)])
        assert "config: {}: nan is not a finite number".format(key) in str(err.value)


def test_state_dir_must_be_a_directory_on_disk(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError) as err:
        load_config(None, ["device.state_dir={}".format(tmp_path / "afile")])
    assert "config: device.state_dir: {} is a file".format(tmp_path / "afile") in str(err.value)
    for bad in ("/proc/edge", "/sys/kernel/edge-agent", "/proc"):
        with pytest.raises(ConfigError) as err:
            load_config(None, ["device.state_dir=" + bad])
        assert "config: device.state_dir: {} is on the kernel's".format(bad) in str(err.value)


@pytest.mark.parametrize("data, message", [
    ({"updates": {"allowed_schemes": ["gopher"]}}, "updates.allowed_schemes[0]: 'gopher'"),
    ({"source": {"loop": "yes"}}, "source.loop: 'yes' must be true or false"),
    ({"mqtt": {"prefix": "a/#"}}, "mqtt.prefix"),
    ({"backend": {"dla_core": 2}}, "backend.dla_core: 2 is above the maximum 1"),
])
def test_invalid_values(data, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, data=data)
    assert message in str(err.value)

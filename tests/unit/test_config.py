"""`fluxrun.init` options and their FLUXRUN_* environment variables, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluxrun._config import DEFAULT_DIRECTORY, resolve_options
from fluxrun.errors import ConfigError

NONE = dict.fromkeys(
    ["dsn", "directory", "capture_key", "sample_rate", "scrub", "max_body_size", "release", "environment",
     "in_app_include", "in_app_exclude", "max_queue", "enabled"]
)  # fmt: skip


def resolve(env=None, **kwargs):
    return resolve_options(**{**NONE, **kwargs}, env=env or {})


def test_defaults_need_no_configuration():
    options = resolve()
    assert options.directory == DEFAULT_DIRECTORY
    assert options.sample_rate == 0.0
    assert options.max_body_size == 1 << 20
    assert options.capture_key is None and options.dsn is None and options.enabled


def test_environment_variables_are_read():
    options = resolve(
        {
            "FLUXRUN_DIR": "/tmp/bundles",
            "FLUXRUN_CAPTURE_KEY": "/keys/capture.key",
            "FLUXRUN_SAMPLE_RATE": "0.25",
            "FLUXRUN_MAX_BODY_SIZE": "2048",
            "FLUXRUN_RELEASE": "1.2.3",
            "FLUXRUN_SCRUB_KEYS": "x-tenant-secret, internal_id",
            "FLUXRUN_DSN": "https://fr_token@fluxrun.example/7",
            "FLUXRUN_ENABLED": "false",
        }
    )
    assert options.directory == Path("/tmp/bundles")
    assert options.capture_key == Path("/keys/capture.key")
    assert options.sample_rate == 0.25 and options.max_body_size == 2048 and options.release == "1.2.3"
    assert options.scrubber.is_sensitive_key("X-Tenant-Secret") and options.scrubber.is_sensitive_key("internal_id")
    assert options.dsn == "https://fr_token@fluxrun.example/7"
    assert options.enabled is False


def test_arguments_win_over_the_environment():
    options = resolve({"FLUXRUN_SAMPLE_RATE": "0.5", "FLUXRUN_DIR": "/env"}, sample_rate=1.0, directory="/arg")
    assert options.sample_rate == 1.0 and options.directory == Path("/arg")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FLUXRUN_SAMPLE_RATE": "lots"},
            "FLUXRUN_SAMPLE_RATE.*'lots' is not a number; use a fraction from 0",
        ),
        ({"FLUXRUN_SAMPLE_RATE": "2"}, "out of range; use a fraction from 0"),
        (
            {"FLUXRUN_MAX_BODY_SIZE": "1MB"},
            "FLUXRUN_MAX_BODY_SIZE.*'1MB' is not a whole number; use a number of bytes",
        ),
        ({"FLUXRUN_DSN": "fluxrun.example/7"}, r"not a FluxRun DSN; expected https://TOKEN@host/PROJECT"),
        ({"FLUXRUN_ENABLED": "maybe"}, "FLUXRUN_ENABLED='maybe': use true or false"),
    ],
)
def test_bad_values_say_what_is_wrong_and_what_to_do(env, message):
    with pytest.raises(ConfigError, match=message):
        resolve(env)


def test_a_dsn_error_does_not_echo_the_token():
    with pytest.raises(ConfigError) as raised:
        resolve({"FLUXRUN_DSN": "ftp://secret-token@fluxrun.example/7"})
    assert "secret-token" not in str(raised.value)


def test_init_takes_exactly_the_settings_options_define():
    """Each setting is defined once (a field of Options); init's typed signature is held to that list."""
    import inspect

    import fluxrun
    from fluxrun._config import argument_names

    assert list(inspect.signature(fluxrun.init).parameters) == argument_names()


def test_an_unknown_setting_is_named():
    with pytest.raises(ConfigError, match="unknown setting 'sample_rat'"):
        resolve(sample_rat=0.5)

from __future__ import annotations

import msgspec
import pytest

from labeval.config import Settings


def test_environment_then_flags() -> None:
    env = {"LABEVAL_PORT": "9001", "LABEVAL_HOST": "0.0.0.0", "LABEVAL_LOG_LEVEL": "debug",
           "LABEVAL_DATABASE_URL": "postgresql://u@h/db", "LABEVAL_UNRELATED": "x", "PATH": "/bin"}
    s = Settings.from_env(env, port=8123, data_dir=None)
    assert (s.host, s.port, s.log_level, s.database_url, s.data_dir) == (
        "0.0.0.0", 8123, "DEBUG", "postgresql://u@h/db", ".labeval")


def test_empty_database_url_means_embedded() -> None:
    assert Settings.from_env({"LABEVAL_DATABASE_URL": ""}).database_url is None


@pytest.mark.parametrize("env", [{"LABEVAL_PORT": "0"}, {"LABEVAL_PORT": "http"}, {"LABEVAL_LOG_LEVEL": "LOUD"}])
def test_bad_values_name_the_field(env: dict[str, str]) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.(port|log_level)"):
        Settings.from_env(env)



def test_an_empty_cron_switches_the_schedule_off() -> None:
    # README: LABEVAL_GRADING_CRON empty disables the scheduled run (it is not "unset")
    assert Settings.from_env({"LABEVAL_GRADING_CRON": ""}).grading_cron == ""
    assert Settings.from_env({}).grading_cron == "0 2 * * *"

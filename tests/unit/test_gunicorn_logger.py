"""shared/web/gunicorn_logger.py: the HTTP services' gunicorn logger builds no access line."""

import runpy

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from shared.logs import gunicorn_logconfig
from shared.web.gunicorn_logger import GunicornLogger


def _config() -> Config:
    config = Config()
    config.set("logconfig_dict", gunicorn_logconfig("api"))
    return config


def test_the_stock_logger_builds_an_access_line_that_the_config_then_discards():
    # What the class is for: with a logging dict, gunicorn's own logger builds each line's atoms.
    logger = Logger(_config())
    built = []
    logger.atoms = lambda *args: built.append(args) or {}
    logger.access(None, None, {}, None)
    assert built


def test_the_services_logger_builds_no_access_line():
    logger = GunicornLogger(_config())
    logger.atoms = lambda *args: pytest.fail("an access line was built")
    logger.access(None, None, {}, None)
    assert not logger.access_log_enabled


@pytest.mark.parametrize("service", ["api", "onboarding"])
def test_both_http_services_run_with_it(service, monkeypatch):
    monkeypatch.setenv("DARK_API_TOKENS", "x" * 32)
    settings = runpy.run_path(f"services/{service}/gunicorn.conf.py")
    assert settings["logger_class"] == "shared.web.gunicorn_logger.GunicornLogger"
    assert settings["accesslog"] is None

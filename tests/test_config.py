"""Bad settings give one clear line per variable, exit status 2, no traceback, and never echo a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from aria.config import Settings, load_settings
from aria.errors import ConfigError
from tests.conftest import aria_cli


def test_each_invalid_setting_is_named_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARIA_OWNER_IDS", "12,abc")
    monkeypatch.setenv("ARIA_RUN_MAX_USD", "lots")
    monkeypatch.setenv("ARIA_TIMEZONE", "Mars/Olympus")
    monkeypatch.setenv("OPENAI_BASE_URL", "ftp://nope")
    with pytest.raises(ConfigError) as error:
        load_settings()
    names = sorted(p.split(":")[0] for p in error.value.problems)
    assert names == ["ARIA_OWNER_IDS", "ARIA_RUN_MAX_USD", "ARIA_TIMEZONE", "OPENAI_BASE_URL"]


def test_bad_settings_exit_2_without_traceback_or_secret(tmp_path: Path) -> None:
    secret = "987654321:SECRET-TOKEN-VALUE-THAT-MUST-NOT-LEAK"
    result = aria_cli(["doctor"], {"TELEGRAM_BOT_TOKEN": secret, "ARIA_DAY_MAX_USD": "-5",
                                "ARIA_DIGEST_TIME": "25:99"}, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and secret not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("config error:")]
    assert len(lines) == 2 and "ARIA_DAY_MAX_USD" in lines[0] + lines[1] and "ARIA_DIGEST_TIME" in "".join(lines)


def test_run_without_a_token_says_what_to_set(tmp_path: Path) -> None:
    result = aria_cli(["run"], {"ARIA_DATA_DIR": str(tmp_path)}, tmp_path)
    assert result.returncode == 2
    assert "TELEGRAM_BOT_TOKEN" in result.stderr and "ARIA_OWNER_IDS" in result.stderr
    assert "aria chat" in result.stderr and "Traceback" not in result.stderr


def test_env_example_lists_every_setting() -> None:
    example = (Path(__file__).parents[1] / ".env.example").read_text()
    from aria.config import env_name

    missing = [env_name(field) for field in Settings.model_fields if f"{env_name(field)}=" not in example]
    assert missing == []


def test_empty_values_in_env_file_count_as_unset(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OPENAI_API_KEY=\nARIA_OWNER_IDS=1, 2\n")
    settings = Settings(_env_file=tmp_path / ".env")  # type: ignore[call-arg]
    assert settings.openai_api_key is None and not settings.model_configured
    assert settings.owner_ids == [1, 2]


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    from aria.config import env_name

    assert [env_name(f) for f in Settings.model_fields if f"`{env_name(f)}`" not in readme] == []

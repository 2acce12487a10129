"""The two booking settings: PHONEBOT_BUSINESS_FILE (checked by doctor) and DATABASE_URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from phonebot.business import DEFAULT_BUSINESS_FILE
from phonebot.settings import DEFAULT_DATABASE_URL, Settings, diagnose


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PHONEBOT_BUSINESS_FILE", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_the_shipped_example_and_a_local_sqlite_file() -> None:
    settings = Settings()
    assert settings.business_file == DEFAULT_BUSINESS_FILE
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite+aiosqlite:///./phonebot.db"
    assert not any(problem.variable == "PHONEBOT_BUSINESS_FILE" for problem in settings.problems())


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgres://u:p@db/phonebot", "postgresql+asyncpg://u:p@db/phonebot"),
        ("postgresql://u:p@db/phonebot", "postgresql+asyncpg://u:p@db/phonebot"),
        ("postgresql+asyncpg://u:p@db/phonebot", "postgresql+asyncpg://u:p@db/phonebot"),
        ("sqlite:////var/lib/phonebot.db", "sqlite+aiosqlite:////var/lib/phonebot.db"),
        ("", DEFAULT_DATABASE_URL),
    ],
)
def test_database_urls_get_their_asyncio_driver(
    monkeypatch: pytest.MonkeyPatch, given: str, used: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", given)
    assert Settings().database_url == used


def test_doctor_reports_a_broken_business_file_and_an_unknown_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    business = tmp_path / "business.toml"
    business.write_text(
        'name = "X"\ntimezone = "Nowhere/Special"\n[[services]]\nname = "A"\nduration_minutes = 5\n'
    )
    monkeypatch.setenv("PHONEBOT_BUSINESS_FILE", str(business))
    monkeypatch.setenv("DATABASE_URL", "mysql://db/phonebot")
    problems = [problem.message for problem in diagnose().problems]
    assert (
        f"PHONEBOT_BUSINESS_FILE {business}: timezone: 'Nowhere/Special' is not an IANA time zone such as "
        "'Europe/London'" in problems
    )
    assert any(problem.startswith("DATABASE_URL must be sqlite+aiosqlite") for problem in problems)
    assert not any("mysql" in problem for problem in problems)  # URLs may carry passwords: not echoed

"""Settings: one clear message per missing variable; doctor lists every problem at once."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from phonebot import cli
from phonebot.settings import MissingSetting, Settings, diagnose
from tests.conftest import API_KEY, AUTH_TOKEN, make_settings

ACCOUNT_SID = "AC" + "0" * 32

VARIABLES = (
    "GOOGLE_API_KEY", "GEMINI_API_KEY", "PHONEBOT_PUBLIC_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN",
    "GEMINI_TEMPERATURE", "GEMINI_MODEL", "PHONEBOT_PROMPT_FILE", "LOG_LEVEL",
    "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_missing_setting_names_the_variable() -> None:
    with pytest.raises(MissingSetting, match="PHONEBOT_PUBLIC_URL is not set"):
        Settings().require_public_url()


def test_doctor_lists_every_problem_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GEMINI_TEMPERATURE", "hot")
    monkeypatch.setenv("PHONEBOT_PROMPT_FILE", "/nonexistent/prompt.md")
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    for variable in ("GEMINI_TEMPERATURE", "GOOGLE_API_KEY", "PHONEBOT_PUBLIC_URL", "TWILIO_ACCOUNT_SID",
                     "TWILIO_AUTH_TOKEN", "PHONEBOT_PROMPT_FILE"):
        assert variable in out
    assert "6 problem(s)" in out


def test_dotenv_is_read_without_overriding_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"PHONEBOT_PUBLIC_URL=https://example.test/\nGEMINI_MODEL=from-dotenv\nTWILIO_AUTH_TOKEN={AUTH_TOKEN}\n"
        f"TWILIO_ACCOUNT_SID={ACCOUNT_SID}\nGOOGLE_API_KEY={API_KEY}\n"
    )
    monkeypatch.setenv("GEMINI_MODEL", "from-env")
    for name in ("PHONEBOT_PUBLIC_URL", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "GOOGLE_API_KEY"):
        monkeypatch.setenv(name, "")  # so monkeypatch restores what load_dotenv writes
        monkeypatch.delenv(name)
    settings = Settings.load()
    assert settings.gemini_model == "from-env"
    assert settings.stream_url == "wss://example.test/twilio/media"
    assert diagnose().problems == []


def test_invalid_public_url_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHONEBOT_PUBLIC_URL", "http://plain.example")
    problems = diagnose().problems
    assert any(p.message.startswith("PHONEBOT_PUBLIC_URL must be the https://") for p in problems)


def test_the_default_model_is_gemini_3_8_live() -> None:
    assert Settings().gemini_model == "gemini-3.8-live"
    assert "GEMINI_MODEL=gemini-3.8-live\n" in (Path(__file__).parent.parent / ".env.example").read_text()


@pytest.mark.parametrize(
    ("vertexai", "enterprise", "vertex"),
    [("true", None, True), ("1", None, True), ("True", None, True), ("yes", None, False), ("false", None, False),
     (None, "true", True), ("true", "false", False), (None, None, False)],
)
def test_vertex_ai_is_read_as_the_sdk_reads_it_and_needs_no_key(
    monkeypatch: pytest.MonkeyPatch, vertexai: str | None, enterprise: str | None, vertex: bool
) -> None:
    for name, value in (("GOOGLE_GENAI_USE_VERTEXAI", vertexai), ("GOOGLE_GENAI_USE_ENTERPRISE", enterprise)):
        if value is not None:
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.vertex_ai is vertex
    asks_for_key = any(problem.variable == "GOOGLE_API_KEY" for problem in settings.problems())
    assert asks_for_key is not vertex


def test_the_webhook_secret_is_a_standard_webhooks_secret_and_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    good = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, base64
    assert Settings(transcript_webhook_secret=good).transcript_webhook_secret == good
    for bad in ("whsec_tooshort", "not base64 at all!", "whsec_" + "A" * 200):
        monkeypatch.setenv("TRANSCRIPT_WEBHOOK_SECRET", bad)
        problems = [problem.message for problem in diagnose(env_file=None).problems]
        assert any(p.startswith("TRANSCRIPT_WEBHOOK_SECRET must be whsec_ followed by the base64") for p in problems)
        assert not any(bad in p for p in problems)


def test_a_webhook_url_without_its_secret_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSCRIPT_WEBHOOK_URL", "https://crm.example.com/hooks/phonebot")
    problems = [problem.message for problem in diagnose(env_file=None).problems]
    assert any(line.startswith("TRANSCRIPT_WEBHOOK_SECRET is not set") for line in problems)
    monkeypatch.setenv("TRANSCRIPT_WEBHOOK_URL", "crm.example.com/hooks")
    problems = [problem.message for problem in diagnose(env_file=None).problems]
    assert any(line.startswith("TRANSCRIPT_WEBHOOK_URL must be the http(s):// URL") for line in problems)


WEBHOOK = "https://crm.test/hooks/phonebot"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_the_test_services_settings_have_no_problem() -> None:
    # The credentials in tests/conftest.py have the shapes Twilio and Google issue: ready.
    assert make_settings().problems() == []
    assert make_settings(google_api_key="AQ.Ab8RN6JqTest-Auth_Key.0123456789").problems() == []  # the newer kind


@pytest.mark.parametrize(
    ("overrides", "variable", "says", "not_ready"),
    [
        ({"public_url": "https://phonebot.example.com"}, "PHONEBOT_PUBLIC_URL", "placeholder (example.com", True),
        ({"public_url": "https://localhost:8000"}, "PHONEBOT_PUBLIC_URL", "is a local address", True),
        ({"public_url": "https://192.168.1.20"}, "PHONEBOT_PUBLIC_URL", "is a local address", True),
        ({"twilio_account_sid": "hello"}, "TWILIO_ACCOUNT_SID", "'hello' is not an Account SID", True),
        ({"twilio_account_sid": "SK" + "0" * 32}, "TWILIO_ACCOUNT_SID", "is an API key's SID", True),
        ({"twilio_auth_token": "hunter2"}, "TWILIO_AUTH_TOKEN", "is not an auth token: 32 hex digits", True),
        # Google has changed its keys' shape before: a doubt, for `doctor --online` to settle.
        ({"google_api_key": "my-gemini-key"}, "GOOGLE_API_KEY", "does not look like a Gemini API key", False),
        ({"api_key": "changeme"}, "PHONEBOT_API_KEY", "is 8 characters", False),
        ({"transfer_number": "+14155550100"}, "PHONEBOT_TRANSFER_NUMBER", "555-0199 are fictional", False),
        ({"twilio_phone_number": "+14155550199"}, "TWILIO_PHONE_NUMBER", "555-0199 are fictional", False),
        (
            {"transcript_webhook_url": "https://crm.example.com/hooks", "transcript_webhook_secret": WEBHOOK_SECRET},
            "TRANSCRIPT_WEBHOOK_URL",
            "placeholder (example.com",
            False,
        ),
        # Reports would wait unsent: the records' author counts that against readiness.
        ({"transcript_webhook_url": WEBHOOK}, "TRANSCRIPT_WEBHOOK_SECRET", "is not set", True),
    ],
)
def test_each_bad_value_is_named(overrides: dict[str, str], variable: str, says: str, not_ready: bool) -> None:
    settings = make_settings(**overrides)
    (problem,) = settings.problems()
    assert (problem.variable, problem.not_ready) == (variable, not_ready)
    assert says in problem.message
    # Readiness counts what stops calls (and unsigned reports); the rest is doctor's to name.
    assert settings.call_problems() == ([problem.message] if not_ready else [])


def test_a_webhook_receiver_on_this_network_is_fine() -> None:
    # Unlike PHONEBOT_PUBLIC_URL, which Twilio must reach, phonebot itself calls the webhook.
    settings = make_settings(transcript_webhook_url="http://10.0.0.5/hooks", transcript_webhook_secret=WEBHOOK_SECRET)
    assert settings.problems() == []


def test_secret_values_are_never_repeated() -> None:
    settings = make_settings(twilio_auth_token="hunter2", google_api_key="my-gemini-key", api_key="changeme")
    messages = " ".join(problem.message for problem in settings.problems())
    assert "hunter2" not in messages and "my-gemini-key" not in messages and "changeme" not in messages


def test_the_templates_placeholders_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # .env.example filled in as a newcomer might: every commented example taken as it stands.
    for line in (Path(__file__).parent.parent / ".env.example").read_text().splitlines():
        name, _, value = line.lstrip("# ").partition("=")
        if name.isupper() and value and " " not in name:
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("DATABASE_URL")  # the template offers two
    named = {problem.variable for problem in diagnose(env_file=None).problems}
    assert {"PHONEBOT_PUBLIC_URL", "TRANSCRIPT_WEBHOOK_URL", "TRANSCRIPT_WEBHOOK_SECRET"} <= named
    assert {"PHONEBOT_TRANSFER_NUMBER", "TWILIO_PHONE_NUMBER", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"} <= named

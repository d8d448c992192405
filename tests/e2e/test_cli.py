"""The ``leadline`` command against a real configuration file and SQLite database, after a webhook.

An operator's view: check-config says what is right or exactly what is wrong, migrate prepares the
database, ``leads`` and ``timeline`` show what a customer wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import META_APP_SECRET, META_VERIFY_TOKEN
from leadline.api.app import create_app
from leadline.cli import app as cli
from leadline.config import load_config
from leadline.providers.meta.signature import meta_signature

FIXTURES = Path(__file__).parents[1] / "fixtures"
LUCIA = "+5215512345678"


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "leadline.toml"
    path.write_text(
        f"""
database_url = "sqlite+aiosqlite:///{tmp_path / "leadline.db"}"
public_url = "https://leadline.example.com"
{extra}
[[api_keys]]
name = "crm"
key = "crm-key-0123456789abcdef"

[[channels]]
name = "meta-main"
provider = "meta"
business_number = "+15550001234"
phone_number_id = "420000000000002"
app_secret = "env:LEADLINE_E2E_META_SECRET"
verify_token = "{META_VERIFY_TOKEN}"

[[router]]
name = "pricing"
when = {{ keyword = ["envío", "precio"] }}
then = [{{ handler = "tag", args = {{ tag = "shipping" }} }}]
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("LEADLINE_E2E_META_SECRET", META_APP_SECRET)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables at full width
    monkeypatch.delenv("LEADLINE_DATABASE_URL", raising=False)
    yield CliRunner()


def post_fixture(config_path: Path, *names: str) -> None:
    """Deliver Meta fixtures to a real app built from the same file, and run the jobs they caused."""
    app = create_app(load_config(config_path), run_worker=False)
    with TestClient(app) as client:
        for name in names:
            body = (FIXTURES / "meta" / f"{name}.json").read_bytes()
            response = client.post(
                "/webhooks/meta",
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": meta_signature(META_APP_SECRET, body),
                },
            )
            assert response.status_code == 200, response.text
        client.portal.call(app.state.services.new_worker().run_until_idle)


def test_check_config_describes_a_valid_configuration(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = runner.invoke(cli, ["check-config", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path} is valid" in result.output
    assert "meta-main (meta) +15550001234" in result.output
    assert "router rules: 1, API keys: 1" in result.output
    assert META_APP_SECRET not in result.output
    assert "crm-key-0123456789abcdef" not in result.output


def test_check_config_names_each_problem_and_exits_2(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEADLINE_E2E_META_SECRET")
    path = write_config(tmp_path, extra='max_body_bytes = "lots"\n')
    result = runner.invoke(cli, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert "the configuration has problems" in result.output
    assert "channels[0].app_secret: environment variable LEADLINE_E2E_META_SECRET is not set" in result.output
    assert "max_body_bytes:" in result.output


def test_migrate_prepares_the_database(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = runner.invoke(cli, ["migrate", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "database schema is up to date" in result.output
    assert (tmp_path / "leadline.db").exists()
    again = runner.invoke(cli, ["migrate", "--config", str(path)])
    assert again.exit_code == 0


def test_leads_and_timeline_show_what_the_customer_wrote(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path)
    assert runner.invoke(cli, ["migrate", "--config", str(path)]).exit_code == 0
    post_fixture(path, "text", "image", "reaction")

    leads = runner.invoke(cli, ["leads", "--config", str(path)])
    assert leads.exit_code == 0, leads.output
    assert LUCIA in leads.output
    assert "Lucía Ramos" in leads.output
    assert "shipping" in leads.output
    assert "meta-main" in leads.output

    # Any spelling of the number finds the lead.
    timeline = runner.invoke(cli, ["timeline", "+525512345678", "--config", str(path)])
    assert timeline.exit_code == 0, timeline.output
    assert f"Lucía Ramos {LUCIA}" in timeline.output
    lines = timeline.output.splitlines()
    assert any("← Hola, ¿tienen envío gratis?" in line for line in lines)
    assert any("← [image] Este es el modelo" in line for line in lines)
    assert any("← [reaction] 👍" in line for line in lines)
    # Summaries are printed as they are, not read as Rich markup (which once swallowed "[image]").
    assert any("← [reaction removed]" in line for line in lines)
    assert any("tagged shipping" in line for line in lines)
    assert any("2026-01-01 00:00:00" in line for line in lines)  # the message's own time, in UTC


def test_timeline_of_an_unknown_number_says_so(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = runner.invoke(cli, ["timeline", "+447700900123", "--config", str(path)])
    assert result.exit_code == 1
    assert "no lead for +447700900123" in result.output


def test_leads_with_a_phone_filter(runner: CliRunner, tmp_path: Path) -> None:
    path = write_config(tmp_path)
    post_fixture(path, "contacts_out_of_order")
    result = runner.invoke(cli, ["leads", "--phone", "447700900123", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "Tom Becker" in result.output
    assert "Lucía" not in result.output


def test_fixture_times_are_what_the_timeline_shows() -> None:
    """Guards the expected time above: the text fixture's timestamp is 2026-01-01 00:00:00 UTC."""
    message = json.loads((FIXTURES / "meta" / "text.json").read_bytes())["entry"][0]["changes"][0]["value"]
    assert message["messages"][0]["timestamp"] == "1767225600"

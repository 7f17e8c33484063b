"""Password policy: not the user name or a variant of it, not a common password, not too
short; for ``gridpilot user add``, the users file and the API alike (scrypt unchanged)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gridpilot.cli import main
from gridpilot.core.errors import ConfigError
from gridpilot.services.web.common_passwords import COMMON
from gridpilot.services.web.users import Role, UserStore, check_password
from tests.web.conftest import Api, login


@pytest.mark.parametrize(
    ("user", "password", "why"),
    [
        ("controller", "controller", "must not contain the user name"),
        ("olga", "olgaolgaolga", "must not contain the user name"),
        ("olga", "Olga-2024!!", "must not contain the user name"),
        ("olga", "agloagloaglo", "must not contain the user name"),
        ("john.smith", "JohnSmith123", "must not contain the user name"),
        ("vic", "password1234", "most common"),
        ("vic", "P@ssw0rd2024!", "most common"),
        ("vic", "qwertyuiop", "most common"),
        ("vic", "1234567890", "most common"),
        ("vic", "Welcome123!", "most common"),
        ("vic", "passwordpassword", "most common"),
        ("vic", "iloveyou!!!!", "most common"),
        ("vic", "short-1", "at least 10 characters"),
        ("vic", "abababababab", "different characters"),
    ],
)
def test_weak_passwords_are_refused_with_the_reason(user: str, password: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        check_password(password, user=user)


def test_good_passwords_pass_and_generated_ones_always_do() -> None:
    for user, password in [
        ("vic", "viewer-pass-1"),
        ("olga", "copper-kettle-dawn"),
        ("ada", "admin-pass-12"),
        ("vic", "a-chosen-password"),
    ]:
        assert check_password(password, user=user) == password
    assert len(COMMON) >= 300


def test_the_users_file_refuses_weak_passwords(tmp_path: Path) -> None:
    users = UserStore(tmp_path)
    with pytest.raises(ConfigError, match="user name"):
        users.add("controller", Role.OPERATOR, "controller")
    assert users.get("controller") is None
    users.add("olga", Role.OPERATOR, "copper-kettle-dawn")
    with pytest.raises(ConfigError, match="most common"):
        users.set_password("olga", "Password123!")
    with pytest.raises(ConfigError, match="user name"):
        users.set_password("olga", "olga-olga-olga")
    assert users.verify("olga", "copper-kettle-dawn") is not None  # unchanged
    for name in ("ab", "bob", "admin"):  # generated one-time passwords pass the same checks
        assert check_password(users.add(name, Role.VIEWER), user=name)


def test_cli_user_add_refuses_the_user_name_as_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("controller\n"))
    d = ["--data-dir", str(tmp_path)]
    assert main(["user", "add", "controller", "--role", "operator", "--password-stdin", *d]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gridpilot: error: ") and "must not contain the user name" in err
    assert "Traceback" not in err


async def test_api_refuses_weak_passwords_with_422(api: Api) -> None:
    admin = await login(api, "ada")
    r = await api.post(
        "/api/users",
        json={"name": "controller", "role": "operator", "password": "controller"},
        headers=admin,
    )
    assert r.status_code == 422 and "must not contain the user name" in r.json()["detail"]
    change = {"old_password": "admin-pass-12", "new_password": "Password2024!"}
    r = await api.post("/api/auth/password", json=change, headers=admin)
    assert r.status_code == 422 and "most common" in r.json()["detail"]

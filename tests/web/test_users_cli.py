"""``gridpilot user`` and the users file: scrypt hashes, one-time passwords, the last admin."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from gridpilot.cli import main
from gridpilot.services.web.users import Role, UserStore


def test_user_add_list_remove(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = ["--data-dir", str(tmp_path)]
    assert main(["user", "add", "olga", "--role", "operator", *d]) == 0
    out = capsys.readouterr().out
    one_time = out.split("one-time password ")[1].split()[0]
    monkeypatch.setattr("sys.stdin", io.StringIO("a-chosen-password\n"))
    assert main(["user", "add", "vic", "--role", "viewer", "--password-stdin", *d]) == 0
    assert main(["user", "list", *d]) == 0
    listing = capsys.readouterr().out
    assert "olga                 operator  (one-time password not changed yet)" in listing
    assert "vic                  viewer\n" in listing

    users = UserStore(tmp_path)
    assert users.verify("olga", one_time) is not None
    assert users.verify("vic", "a-chosen-password") is not None
    assert users.verify("vic", "wrong-password") is None
    assert users.verify("nobody", "a-chosen-password") is None
    path = tmp_path / "users.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "a-chosen-password" not in path.read_text()  # only salts and scrypt hashes
    assert json.loads(path.read_text())["vic"]["role"] == "viewer"

    assert main(["user", "remove", "vic", *d]) == 0
    assert main(["user", "remove", "vic", *d]) == 2
    assert "no user 'vic'" in capsys.readouterr().err
    assert main(["user", "add", "Olga!", "--role", "viewer", *d]) == 2
    assert "lower-case letters" in capsys.readouterr().err


def test_first_admin_once_and_never_the_last_admin_removed(tmp_path: Path) -> None:
    users = UserStore(tmp_path)
    first = users.ensure_first_admin()
    assert first is not None and len(first) >= 12
    assert users.ensure_first_admin() is None  # once only
    admin = users.get("admin")
    assert admin is not None and admin.role is Role.ADMIN and admin.must_change
    with pytest.raises(Exception, match="last admin"):
        users.remove("admin")
    other = UserStore(tmp_path)  # another process (the CLI) sees the same users
    other.add("root2", Role.ADMIN, "another-long-one")
    users.remove("admin")
    assert [u.name for u in users.list()] == ["root2"]

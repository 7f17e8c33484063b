"""How ``gridpilot up`` sets up TLS, the monitoring port and the data dir, short of starting."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gridpilot.core.errors import ConfigError
from gridpilot.platform.broker import render_config
from gridpilot.platform.supervisor import Supervisor
from gridpilot.platform.tls import pki

pytestmark = pytest.mark.security


def _config(sup: Supervisor) -> str:
    broker = sup._embedded()
    assert broker.tls is not None or sup.pki is None
    return render_config(
        data_dir=broker.data_dir, host=broker.host, port=1, monitor_port=None, mqtt_port=2,
        name="x", leaf_port=broker.leaf_port, leaf_host=broker.leaf_host,
        hub_url=broker.hub_url, domain=broker.domain, leaf_tls=broker.leaf_tls,
        hub_ca=broker.hub_ca, tls=broker.tls, leaf_client=broker.leaf_client,
    )  # fmt: skip


def test_an_edge_with_tls_presents_its_certificate_and_verifies_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sup = Supervisor(
        grid="cigre_mv", data_dir=tmp_path, edge="site1", hub="tls://127.0.0.1:17422",
        tls=True,
    )  # fmt: skip
    sup._prepare_tls()
    monkeypatch.setenv("GRIDPILOT_LEAF_PASSWORD", "x")
    text = _config(sup)
    p = pki(tmp_path)
    assert f'cert_file: "{p.edge("site1").cert}"' in text  # on the leaf remote
    assert f'ca_file: "{p.ca}"' in text
    assert "TLS on every port" in sup.transport_note()


def test_a_hub_with_tls_requires_client_certificates_of_edges(tmp_path: Path) -> None:
    sup = Supervisor(grid="cigre_mv", data_dir=tmp_path, leaf_listen=("127.0.0.1", 17422), tls=True)
    sup._prepare_tls()
    text = _config(sup)
    leaf = text[text.index("leafnodes {") :]
    assert "verify: true" in leaf and f'ca_file: "{pki(tmp_path).ca}"' in leaf
    assert "edges need a client certificate" in sup.leaf_listen_note("tls://127.0.0.1:17422")


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"edge": "e", "hub": "nats://127.0.0.1:17422", "tls": True}, "needs a TLS hub"),
        ({"nats_url": "nats://127.0.0.1:4222", "tls": True}, "configure the embedded broker"),
        ({"nats_url": "nats://127.0.0.1:4222", "monitor": True}, "configure the embedded"),
    ],
)
def test_tls_options_that_do_not_fit_are_refused(
    tmp_path: Path, kwargs: dict[str, object], said: str
) -> None:
    with pytest.raises(ConfigError, match=said):
        Supervisor(grid="cigre_mv", data_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_without_tls_up_says_the_ports_are_plain(tmp_path: Path) -> None:
    sup = Supervisor(grid="cigre_mv", data_dir=tmp_path)
    assert sup.transport_note().startswith("plain TCP on 127.0.0.1")
    assert "--tls" in sup.transport_note()


def test_the_data_dir_is_made_private_and_an_open_one_narrowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    umask = os.umask(0o022)
    try:
        fresh = Supervisor(grid="cigre_mv", data_dir=tmp_path / "new")
        fresh._private_data_dir()
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
        assert "now 0700" not in capsys.readouterr().out
        (tmp_path / "old").mkdir(mode=0o755)
        os.chmod(tmp_path / "old", 0o755)
        Supervisor(grid="cigre_mv", data_dir=tmp_path / "old")._private_data_dir()
        assert stat.S_IMODE((tmp_path / "old").stat().st_mode) == 0o700
        assert "was mode 755: now 0700" in capsys.readouterr().out
        (tmp_path / "old" / "file").write_text("x")  # umask 077 from here on
        assert stat.S_IMODE((tmp_path / "old" / "file").stat().st_mode) == 0o600
    finally:
        os.umask(umask)

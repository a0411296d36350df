"""POST /-/reload is off unless `aipulse run --web.enable-lifecycle` (as Prometheus),
and when on, a web page elsewhere cannot fire it through the operator's browser
(real headless Chromium). SIGHUP always reloads."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from helpers import RunningDaemon, start_daemon, wait_for
from ownport import request, serve_app
from targets import Target
from test_page import chromium

LIFECYCLE = ("--web.enable-lifecycle",)


def config(target: Target, checks: int) -> dict[str, Any]:
    return {"defaults": {"interval": "1s", "timeout": "900ms"},
            "services": {"svc": {"checks": {f"c{i}": {"url": target.url("/ok")} for i in range(checks)}}}}


def rewrite(d: RunningDaemon, tmp_path: Path, target: Target, checks: int) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"listen": f"127.0.0.1:{d.port}",
                                                          **config(target, checks)}))


def checks_running(d: RunningDaemon) -> int:
    return len(d.get("/api/v1/status").json()["services"][0]["checks"])


def reloads(d: RunningDaemon) -> int:
    return d.log.read_text().count("config reloaded")


def test_reload_over_http_is_off_by_default_and_sighup_still_works(tmp_path: Path, target: Target) -> None:
    with start_daemon(config(target, 1), tmp_path) as d:
        rewrite(d, tmp_path, target, 2)
        status, headers, body, _ = request(d.port, "/-/reload", "POST")
        assert status == 403 and headers["content-type"].startswith("application/json")
        assert "--web.enable-lifecycle" in yaml.safe_load(body)["error"]
        assert checks_running(d) == 1 and reloads(d) == 0
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: checks_running(d) == 2)


@pytest.mark.parametrize(("headers", "allowed"), [
    ({}, True),  # curl, a script, Prometheus's own tooling: no browser headers
    ({"Sec-Fetch-Site": "same-origin"}, True),
    ({"Sec-Fetch-Site": "none"}, True),  # typed into the address bar
    ({"Origin": "http://127.0.0.1:{port}"}, True),
    ({"Sec-Fetch-Site": "cross-site"}, False),
    ({"Sec-Fetch-Site": "same-site"}, False),  # another port of this host is another origin
    ({"Origin": "http://evil.example"}, False),
    ({"Origin": "http://127.0.0.1:1"}, False),
    ({"Origin": "null"}, False),
], ids=lambda v: str(v))
def test_with_lifecycle_on_cross_site_requests_are_refused(tmp_path: Path, target: Target,
                                                           headers: dict[str, str], allowed: bool) -> None:
    with start_daemon(config(target, 1), tmp_path, run_args=LIFECYCLE) as d:
        sent = {k: v.format(port=d.port) for k, v in headers.items()}
        status, _, body, _ = request(d.port, "/-/reload", "POST", headers=sent)
        assert (status, reloads(d)) == ((200, 1) if allowed else (403, 0)), body


ATTACK = """<!doctype html><title>cat pictures</title>
<form id="f" method="POST" action="{url}" target="sink"></form>
<iframe name="sink"></iframe>
<script>
  (async () => {{
    for (let i = 0; i < 3; i++) {{
      await fetch("{url}", {{method: "POST", mode: "no-cors"}});
      await fetch("/sent");  // the POST went out and was answered
    }}
    await fetch("{url}", {{method: "POST", mode: "no-cors", body: "x",
                           headers: {{"Content-Type": "text/plain"}}}});
    await fetch("/sent");
    document.getElementById("f").submit();
  }})();
</script>"""


@pytest.mark.parametrize("page_host", ["localhost", "127.0.0.1"], ids=["cross-site", "same-site-other-port"])
def test_a_page_in_the_operators_browser_cannot_reload(tmp_path: Path, target: Target,
                                                      page_host: str) -> None:
    """Chromium opens a page served from another origin that POSTs to /-/reload with
    fetch() and a form, as any page on the web could."""
    with start_daemon(config(target, 1), tmp_path, run_args=LIFECYCLE) as d:
        page = ATTACK.format(url=f"http://127.0.0.1:{d.port}/-/reload")
        sent: list[str] = []

        async def sent_one(request: web.Request) -> web.Response:
            sent.append(request.path)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text=page, content_type="text/html"))
        app.router.add_get("/sent", sent_one)
        with serve_app(app) as port:
            chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", f"http://{page_host}:{port}/")
        assert len(sent) == 4  # the browser really sent the POSTs and got answers...
        assert reloads(d) == 0  # ...and none reloaded
        assert "POST /-/reload refused: a cross-site browser request" in d.log.read_text()
        status, _, _, _ = request(d.port, "/-/reload", "POST")  # the operator's own curl still works
        assert status == 200 and reloads(d) == 1

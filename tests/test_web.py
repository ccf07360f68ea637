"""The browser pages, in Debian's Chromium driven by Playwright, against a real uvicorn server.

The browser is ``/usr/bin/chromium`` (``scripts/install-chromium.sh`` installs it when missing;
Playwright downloads no browser of its own). Every test blocks the network: requests to any
host but the server's loopback address are aborted and recorded, and the tests assert that
none was attempted, so the pages are proven to work on a machine with no internet.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("JDT_CHROMIUM", "/usr/bin/chromium"))
API_KEY = "page-test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 with one API key set."""
    base = tmp_path_factory.mktemp("web-server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDT_")}
    env.update(JDT_DEVICE="cpu", JDT_API_KEYS=API_KEY, JDT_TEMP_DIR=str(base))
    log = base / "server.log"
    cmd = [sys.executable, "-m", "uvicorn", "jdt_service.app:create_app", "--factory"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not start:\n" + log.read_text()
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian Chromium, installed by ``scripts/install-chromium.sh`` when missing."""
    if not CHROMIUM.exists():
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "install-chromium.sh")],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            reason = f"no Chromium at {CHROMIUM}: {done.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@dataclass
class Offline:
    """A browser page whose requests leave the loopback server only to be aborted."""

    page: object
    blocked: list[str] = field(default_factory=list)


@pytest.fixture
def offline(browser, server_url) -> Iterator[Offline]:
    server_host = urlsplit(server_url).netloc
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    result = Offline(context.new_page())

    def gate(route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == server_host or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            result.blocked.append(url)
            route.abort()

    context.route("**/*", gate)
    yield result
    context.close()


def test_swagger_ui_shows_the_scores_operation_offline(offline, server_url, tmp_path) -> None:
    page = offline.page
    page.goto(server_url + "/docs")
    operation = page.locator("#operations-scores-create_score_v1_scores_post")
    operation.wait_for(state="visible", timeout=30_000)
    assert "/v1/scores" in operation.inner_text()
    page.screenshot(path=str(tmp_path / "docs.png"))
    assert offline.blocked == []


def test_redoc_shows_the_scores_operation_offline(offline, server_url, tmp_path) -> None:
    page = offline.page
    page.goto(server_url + "/redoc")
    page.get_by_text("/v1/scores").first.wait_for(state="attached", timeout=30_000)
    page.screenshot(path=str(tmp_path / "redoc.png"))
    assert offline.blocked == []


def test_docs_routes_are_counted_under_their_own_labels(server_url) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/static/docs/swagger-ui.css"):
        assert httpx.get(server_url + path).status_code == 200, path
    lines = httpx.get(server_url + "/metrics").text.splitlines()
    counted = {
        line.split('route="')[1].split('"')[0]
        for line in lines
        if line.startswith("jdt_requests_total{")
    }
    assert {"/docs", "/redoc", "/openapi.json", "/static/docs/{name}"} <= counted
    assert "unmatched" not in counted

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


# ---------------------------------------------------------------- the pair page at /

#: the outline colours the page promises in its legend (Okabe & Ito's sky blue and orange)
REFERENCE_RGB = (0x56, 0xB4, 0xE9)
PREDICTION_RGB = (0xE6, 0x9F, 0x00)
VIEWS = ("axial", "coronal", "sagittal")
SPACING = (0.8, 0.8, 2.5)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory, write_nifti) -> dict[str, Path]:
    """Label 1 nearly right (shifted one voxel), label 2 partly missed: the worst label."""
    import numpy as np

    folder = tmp_path_factory.mktemp("pair")
    ref = np.zeros((40, 32, 20), np.uint8)
    ref[5:20, 5:25, 3:17] = 1
    ref[25:35, 10:20, 5:15] = 2
    pred = np.zeros_like(ref)
    pred[6:21, 5:25, 3:17] = 1
    pred[25:33, 10:20, 5:15] = 2
    x, y, z = np.indices(ref.shape, dtype=np.float32)
    image = 100 * x + 40 * y + 300 * z  # every slice differs from its neighbours
    affine = np.diag([*SPACING, 1.0])
    return {
        "prediction": write_nifti(folder / "pred.nii.gz", pred, affine),
        "reference": write_nifti(folder / "ref.nii.gz", ref, affine),
        "image": write_nifti(folder / "ct.nii.gz", image, affine),
    }


def _colour_counts(page, view: str) -> tuple[int, int]:
    """Pixels of the reference and of the prediction colour in a view's canvas."""
    return tuple(
        page.evaluate(
            """([id, ref, pred]) => {
                const canvas = document.getElementById(id);
                const context = canvas.getContext("2d");
                const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
                let nRef = 0, nPred = 0;
                for (let p = 0; p < data.length; p += 4) {
                  const rgb = [data[p], data[p + 1], data[p + 2]];
                  if (rgb.every((v, i) => v === ref[i])) nRef++;
                  if (rgb.every((v, i) => v === pred[i])) nPred++;
                }
                return [nRef, nPred];
            }""",
            [f"{view}-canvas", list(REFERENCE_RGB), list(PREDICTION_RGB)],
        )
    )


def _enter_key(page, key: str) -> None:
    page.get_by_role("textbox", name="API key").fill(key)
    page.get_by_role("button", name="Use this key").click()


def test_a_wrong_key_is_refused_with_a_clear_message(offline, server_url, tmp_path) -> None:
    page = offline.page
    page.goto(server_url + "/")
    assert page.locator("#key-section").is_visible()
    _enter_key(page, "not-the-key")
    message = page.locator("#key-message")
    message.filter(has_text="not valid").wait_for(timeout=10_000)
    assert "This API key is not valid" in message.inner_text()
    page.screenshot(path=str(tmp_path / "wrong-key.png"))
    assert offline.blocked == []


def test_score_a_pair_through_the_page(offline, server_url, pair_files, tmp_path, dice_f64) -> None:
    import numpy as np

    page = offline.page
    page.goto(server_url + "/")
    _enter_key(page, API_KEY)
    page.locator("#key-message").filter(has_text="Key accepted").wait_for(timeout=10_000)
    for field_name, path in pair_files.items():
        page.locator(f"#{field_name}").set_input_files(str(path))
    page.get_by_role("textbox", name="Labels and names").fill("1=liver,2=spleen")
    page.get_by_role("button", name="Score", exact=True).click()
    page.locator("#pictures").wait_for(state="visible", timeout=60_000)

    # the table's Dice is the API's for the same files (and numpy's)
    files = {name: (path.name, path.read_bytes()) for name, path in pair_files.items()}
    del files["image"]
    api = httpx.post(
        server_url + "/v1/scores",
        files=files,
        data={"labels": "1=liver,2=spleen"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    ).json()
    import nibabel as nib

    pred = np.asarray(nib.load(pair_files["prediction"]).dataobj)
    ref = np.asarray(nib.load(pair_files["reference"]).dataobj)
    for row in api["labels"]:
        shown = page.locator(f"tr[data-label='{row['label']}'] td[data-column='dice']")
        assert shown.inner_text() == f"{row['dice']:.4f}"
        assert abs(row["dice"] - dice_f64(pred, ref, row["label"])) < 1e-12
        name = page.locator(f"tr[data-label='{row['label']}'] td[data-column='name']")
        assert name.inner_text() == row["name"]
    # sorting by Dice puts the worst label (2: 8 of its 10 columns found) first
    page.get_by_role("button", name="Dice", exact=True).click()
    first = page.locator("#scores-table tbody tr").first
    assert first.get_attribute("data-label") == "2"
    assert page.locator("th[aria-sort='ascending']").inner_text().startswith("Dice")

    # the pictures open at the worst label, with both outline colours on every view
    assert page.locator("#label-picker").input_value() == "2"
    for view in VIEWS:
        n_ref, n_pred = _colour_counts(page, view)
        assert n_ref > 0 and n_pred > 0, (view, n_ref, n_pred)
    # anisotropic voxels at their true aspect: the coronal picture is 40 x 0.8 mm wide and
    # 20 x 2.5 mm high
    width, height = page.evaluate(
        "() => [document.getElementById('coronal-canvas').width,"
        " document.getElementById('coronal-canvas').height]"
    )
    assert abs(width / height - (40 * 0.8) / (20 * 2.5)) < 0.02
    page.screenshot(path=str(tmp_path / "pair-page.png"), full_page=True)
    if os.environ.get("JDT_UPDATE_SCREENSHOTS"):  # the README's picture: docs/images/
        page.screenshot(path=str(REPO / "docs" / "images" / "pair-page.png"), full_page=True)

    # the slider moves through the slices: the picture changes; past the label, no outline
    before = page.locator("#axial-canvas").evaluate("c => c.toDataURL()")
    slider = page.get_by_role("slider", name="Axial slice")
    slider.focus()
    page.keyboard.press("ArrowRight")
    assert page.locator("#axial-canvas").evaluate("c => c.toDataURL()") != before
    page.keyboard.press("End")
    assert page.locator("#axial-value").inner_text() == "slice 20 of 20"
    assert _colour_counts(page, "axial") == (0, 0)
    # the label picker changes the label (and re-centres the slices on it)
    page.get_by_role("combobox", name="Label shown").select_option("1")
    assert page.locator("#axial-value").inner_text() == "slice 11 of 20"
    assert all(n > 0 for n in _colour_counts(page, "axial"))
    page.screenshot(path=str(tmp_path / "pair-page-label-1.png"), full_page=True)
    assert page.evaluate(_CONTRAST)["worst"] == []
    assert offline.blocked == []


# ---------------------------------------------------------------- the dataset part of the page
# The jobs API (/v1/jobs, /v1/reference-sets) is another part of the service; here the browser
# gets its answers from a stub in the shapes that API defines, and the report is a real
# `monai-jdt score-dir -o` report (a job's report is the same JSON).


@pytest.fixture(scope="module")
def dataset_report(tmp_path_factory, write_nifti) -> dict:
    import json

    import numpy as np

    folder = tmp_path_factory.mktemp("dataset")
    (folder / "preds").mkdir()
    (folder / "refs").mkdir()
    rng = np.random.default_rng(5)
    for case in range(5):
        ref = np.zeros((16, 14, 10), np.uint8)
        ref[2:10, 2:10, 2:8] = 1
        ref[11:15, 3:12, 1:9] = 2
        pred = ref.copy()
        flip = rng.random(ref.shape) < 0.04 * (case + 1)  # worse and worse cases
        pred[flip] = rng.integers(0, 3, int(flip.sum()), dtype=np.uint8)
        write_nifti(folder / "preds" / f"case{case}.nii.gz", pred)
        write_nifti(folder / "refs" / f"case{case}.nii.gz", ref)
    out = folder / "report.json"
    cmd = [sys.executable, "-m", "monai_jdt.cli", "score-dir", str(folder / "preds")]
    cmd += [str(folder / "refs"), "-o", str(out), "--labels", "1=liver,2=spleen"]
    subprocess.run(cmd, check=True, capture_output=True)
    return json.loads(out.read_text())


def test_score_a_dataset_through_the_page(offline, server_url, dataset_report, tmp_path) -> None:
    import json

    import numpy as np

    page = offline.page
    polls = {"n": 0}
    posted: list[bytes] = []
    total = len(dataset_report["cases"])

    def job(status: str, done: int) -> dict:
        progress = {"cases_done": done, "cases_total": total, "failures": 0}
        return {"id": "job1", "status": status, "reference_set": "set1", "progress": progress}

    def answer(route) -> None:
        request = route.request
        path = urlsplit(request.url).path
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            route.fulfill(status=401, json={"detail": {"code": "unauthorized", "message": "x"}})
        elif path == "/v1/reference-sets":
            sets = [{"id": "set1", "name": "abdomen", "version": "0123456789ab", "cases_total": 5}]
            route.fulfill(json={"reference_sets": sets})
        elif path == "/v1/jobs" and request.method == "POST":
            posted.append(request.post_data_buffer or b"")
            route.fulfill(status=202, json=job("queued", 0), headers={"Location": "/v1/jobs/job1"})
        elif path == "/v1/jobs/job1":
            polls["n"] += 1
            route.fulfill(json=job("running", 2) if polls["n"] == 1 else job("done", total))
        elif path == "/v1/jobs/job1/report":
            route.fulfill(json=dataset_report)
        elif path == "/v1/reference-sets/set1/leaderboard":
            entries = [
                {"rank": 1, "team": "team-a", "score": 0.91, "cases": 5, "failures": 0},
                {"rank": 2, "team": "team-b", "score": 0.85, "cases": 5, "failures": 0},
            ]
            route.fulfill(json={"reference_set": "set1", "entries": entries})
        else:
            route.fulfill(status=404, json={"detail": {"code": "not_found", "message": path}})

    page.route("**/v1/reference-sets**", answer)
    page.route("**/v1/jobs**", answer)
    page.goto(server_url + "/")
    _enter_key(page, API_KEY)
    page.locator("#dataset-section").wait_for(state="visible", timeout=10_000)
    assert page.get_by_role("combobox", name="Reference set").input_value() == "set1"
    archive = tmp_path / "preds.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # the stub does not read it
    page.get_by_label("Predictions archive").set_input_files(str(archive))
    page.get_by_role("button", name="Score the dataset").click()
    page.locator("#dataset-results").wait_for(state="visible", timeout=30_000)
    assert b'name="reference_set"' in posted[0] and b"set1" in posted[0]
    assert b'name="predictions"' in posted[0]
    bar = page.locator("#job-progress")
    assert (bar.get_attribute("value"), bar.get_attribute("max")) == (str(total), str(total))
    assert "done, 5 of 5 cases" in page.locator("#job-status").inner_text()

    # a Dice box plot per label, its median and quartiles those of numpy over the cases
    for label in (1, 2):
        values = [
            row["dice"]
            for case in dataset_report["cases"]
            for row in case["labels"]
            if row["label"] == label
        ]
        group = page.locator(f"svg[data-metric='dice'] g[data-label='{label}']")
        assert abs(float(group.get_attribute("data-median")) - np.median(values)) < 1e-12
        q1, q3 = np.percentile(values, [25, 75])
        assert abs(float(group.get_attribute("data-q1")) - q1) < 1e-12
        assert abs(float(group.get_attribute("data-q3")) - q3) < 1e-12
        assert group.locator("circle").count() == total
    # the cases, worst (lowest mean Dice) first
    means = {
        case["case_id"]: float(np.mean([row["dice"] for row in case["labels"]]))
        for case in dataset_report["cases"]
    }
    shown = page.locator("#cases-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.case)"
    )
    assert shown == sorted(means, key=means.get)
    assert shown[0] == "case4"
    page.locator("#leaderboard").wait_for(state="visible", timeout=10_000)
    assert "team-a" in page.locator("#leaderboard-table tbody tr").first.inner_text()
    with page.expect_download() as download:
        page.get_by_role("button", name="report JSON").click()
    assert json.loads(Path(download.value.path()).read_text()) == dataset_report
    page.screenshot(path=str(tmp_path / "dataset-page.png"), full_page=True)
    assert page.evaluate(_CONTRAST)["worst"] == []
    assert offline.blocked == []


_CONTRAST = """() => {
  // WCAG 2 contrast ratio of each visible text's colour against the background behind it
  const luminance = (rgb) => {
    const [r, g, b] = rgb.map((v) => {
      const c = v / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const parse = (text) => text.match(/[\\d.]+/g).map(Number);
  const background = (element) => {
    for (let e = element; e; e = e.parentElement) {
      const rgba = parse(getComputedStyle(e).backgroundColor);
      if (rgba.length < 4 || rgba[3] > 0) return rgba.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const worst = [];
  let checked = 0;
  for (const element of document.querySelectorAll("body *")) {
    const own = [...element.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !element.getClientRects().length) continue;
    const fg = luminance(parse(getComputedStyle(element).color).slice(0, 3));
    const bg = luminance(background(element));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    checked++;
    if (ratio < 4.5) worst.push([element.tagName, element.textContent.trim().slice(0, 40), ratio]);
  }
  return { worst, checked };
}"""


def test_every_control_is_labelled_reachable_by_keyboard_and_readable(offline, server_url) -> None:
    page = offline.page
    page.goto(server_url + "/")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea, button")]
            .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label")
                           && !e.textContent.trim())
            .map((e) => e.id || e.outerHTML)"""
    )
    assert unlabelled == []
    reached = []
    for _ in range(40):  # every control of the pair form, the metric boxes included
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => document.activeElement.id"))
    for control in ("api-key", "prediction", "reference", "image", "labels", "score-button"):
        assert control in reached, (control, reached)
    contrast = page.evaluate(_CONTRAST)
    assert contrast["worst"] == [] and contrast["checked"] > 20, contrast
    assert offline.blocked == []

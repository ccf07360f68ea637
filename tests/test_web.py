"""The browser pages, in Debian's Chromium driven by Playwright, against a real uvicorn server.

The browser is ``/usr/bin/chromium`` (``scripts/install-chromium.sh`` installs it when missing;
Playwright downloads no browser of its own). Every test blocks the network: requests to any
host but the server's loopback address are aborted and recorded, and the tests assert that
none was attempted, so the pages are proven to work on a machine with no internet.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
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
TEAM = "radiology"
ADMIN_KEY = "page-admin-key"


@pytest.fixture(scope="module")
def server_url(tmp_path_factory, free_port) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1: team ``TEAM``'s key, an admin key, the jobs API
    with its SQLite database in a temporary ``JDT_DATA_DIR`` and one job worker process."""
    base = tmp_path_factory.mktemp("web-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDT_")}
    env.update(
        JDT_DEVICE="cpu",
        JDT_API_KEYS=f"{TEAM}:{API_KEY}",
        JDT_ADMIN_KEYS=ADMIN_KEY,
        JDT_TEMP_DIR=str(base),
        JDT_DATA_DIR=str(base / "data"),
        JDT_JOB_WORKERS="1",
    )
    log = base / "server.log"
    cmd = [sys.executable, "-m", "uvicorn", "jdt_service.app:create_app", "--factory"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a job worker left behind, if any


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


def _open_with_files(page, server_url: str, files: dict[str, Path]) -> None:
    """The pair page with the team's key accepted and ``files`` (field id: path) chosen."""
    page.goto(server_url + "/")
    _enter_key(page, API_KEY)
    page.locator("#key-message").filter(has_text="Key accepted").wait_for(timeout=10_000)
    for field_name, path in files.items():
        page.locator(f"#{field_name}").set_input_files(str(path))


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


def test_a_key_with_an_invisible_character_is_refused_saying_so(offline, server_url) -> None:
    page = offline.page
    page.goto(server_url + "/")
    _enter_key(page, API_KEY + "\u200b")  # a zero-width space pasted with it
    message = page.locator("#key-message")
    message.filter(has_text="cannot be sent").wait_for(timeout=10_000)
    assert "invisible or non-Latin character" in message.inner_text()
    _enter_key(page, API_KEY)
    message.filter(has_text="Key accepted").wait_for(timeout=10_000)
    assert offline.blocked == []


def test_label_ids_past_2_53_are_shown_and_downloaded_exactly(
    offline, server_url, tmp_path
) -> None:
    """A JavaScript number rounds 2**53 + 1 onto 2**53: the page keeps the server's ids."""
    import json

    import numpy as np

    big = [2**53 + 1, 2**53 + 2]
    ref = np.zeros((8, 8, 4), np.int64)
    ref[:4, :, :] = big[0]
    ref[4:, :, :] = big[1]
    pred = ref.copy()
    pred[:4, :2, :] = big[1]
    import nibabel as nib

    paths = {"prediction": tmp_path / "pred.nii.gz", "reference": tmp_path / "ref.nii.gz"}
    for path, data in zip(paths.values(), (pred, ref), strict=True):
        nib.save(nib.Nifti1Image(data, np.eye(4), dtype=np.int64), path)
    page = offline.page
    _open_with_files(page, server_url, paths)
    page.get_by_role("checkbox", name="Draw the overlay pictures").uncheck()
    page.get_by_role("button", name="Score", exact=True).click()
    page.locator("#results").wait_for(state="visible", timeout=60_000)
    shown = page.locator("#scores-table tbody td[data-column='label']").all_inner_texts()
    assert shown == [str(label) for label in big]
    api = httpx.post(
        server_url + "/v1/scores",
        files={name: (path.name, path.read_bytes()) for name, path in paths.items()},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    ).json()
    assert [row["label"] for row in api["labels"]] == big
    with page.expect_download() as download:
        page.get_by_role("link", name="JSON").click()
    downloaded = json.loads(Path(download.value.path()).read_text())
    assert [row["label"] for row in downloaded["labels"]] == big
    assert [row["dice"] for row in downloaded["labels"]] == [row["dice"] for row in api["labels"]]
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    csv_labels = [
        line.split(",")[0] for line in Path(download.value.path()).read_text().splitlines()[1:]
    ]
    assert csv_labels == [str(label) for label in big]
    assert offline.blocked == []


#: label 3 is asked for but absent from both volumes: every metric of it is undefined
PAIR_LABELS = "1=liver,2=spleen,3=kidney"
PAIR_REGIONS = "organs=1,2"


def test_score_a_pair_through_the_page(offline, server_url, pair_files, tmp_path, dice_f64) -> None:
    import numpy as np

    page = offline.page
    _open_with_files(page, server_url, pair_files)
    page.get_by_role("textbox", name=re.compile("^Labels and names")).fill(PAIR_LABELS)
    page.get_by_role("textbox", name=re.compile("^Regions")).fill(PAIR_REGIONS)
    page.get_by_role("checkbox", name="hd95", exact=True).check()
    page.get_by_role("button", name="Score", exact=True).click()
    page.locator("#pictures").wait_for(state="visible", timeout=60_000)

    # the table's Dice and HD95 are the API's for the same files (Dice also numpy's)
    files = {name: (path.name, path.read_bytes()) for name, path in pair_files.items()}
    del files["image"]
    api = httpx.post(
        server_url + "/v1/scores",
        files=files,
        data={
            "labels": PAIR_LABELS,
            "regions": PAIR_REGIONS,
            "metrics": "dice,jaccard,precision,recall,hd95",
        },
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    ).json()
    import nibabel as nib

    pred = np.asarray(nib.load(pair_files["prediction"]).dataobj)
    ref = np.asarray(nib.load(pair_files["reference"]).dataobj)
    label_rows = [row for row in api["labels"] if row["label"] is not None]
    assert [row["label"] for row in label_rows] == [1, 2, 3]
    for row in label_rows[:2]:
        shown = page.locator(f"tr[data-label='{row['label']}'] td[data-column='dice']")
        assert shown.inner_text() == f"{row['dice']:.4f}"
        assert abs(row["dice"] - dice_f64(pred, ref, row["label"])) < 1e-12
        hd95 = page.locator(f"tr[data-label='{row['label']}'] td[data-column='hd95']")
        assert hd95.inner_text() == f"{row['hd95']:.4f}"
        name = page.locator(f"tr[data-label='{row['label']}'] td[data-column='name']")
        assert name.inner_text() == row["name"]
    # label 3: undefined, with the report's reason, for the overlap and the boundary metric
    absent = label_rows[2]
    assert absent["dice"] is None and absent["hd95"] is None
    for metric in ("dice", "hd95"):
        shown = page.locator(f"tr[data-label='3'] td[data-column='{metric}']")
        assert shown.locator(".undefined").inner_text() == "undefined"
        assert shown.locator(".reason").inner_text() == absent["reasons"][metric]
    # the region row: its name in the label column, its members, the Dice of the union
    (region,) = [row for row in api["labels"] if row.get("region") == "organs"]
    assert region["label"] is None and region["members"] == [1, 2]
    row = page.locator("tr[data-region='organs']")
    assert row.locator("td[data-column='label']").inner_text() == "organs"
    assert row.locator("td[data-column='name']").inner_text() == "region: labels 1, 2"
    union_dice = 2 * ((pred > 0) & (ref > 0)).sum() / ((pred > 0).sum() + (ref > 0).sum())
    assert abs(region["dice"] - union_dice) < 1e-12
    assert row.locator("td[data-column='dice']").inner_text() == f"{region['dice']:.4f}"
    assert row.locator("td[data-column='hd95']").inner_text() == f"{region['hd95']:.4f}"
    assert page.locator("#scores-table th").all_inner_texts()[2:7] == [
        "Dice",
        "Jaccard",
        "Precision",
        "Recall",
        "HD95 (mm)",
    ]
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
        # the page down to the pictures (the dataset form below has its own picture)
        bottom = page.locator("#pictures").evaluate(
            "e => e.getBoundingClientRect().bottom + window.scrollY"
        )
        page.screenshot(
            path=str(REPO / "docs" / "images" / "pair-page.png"),
            full_page=True,
            clip={"x": 0, "y": 0, "width": 1280, "height": bottom + 16},
        )

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
    # a region is drawn as the outline of its labels' union, centred on it (numpy: the mean
    # voxel of reference or prediction in 1 or 2, z of 0-based index 9.6 -> slice 11 of 20)
    union_z = np.nonzero((pred > 0) | (ref > 0))[2].mean()
    page.get_by_role("combobox", name="Label shown").select_option("region:organs")
    centre = int(np.floor(union_z + 0.5))  # the page rounds half up (Math.round)
    assert page.locator("#axial-value").inner_text() == f"slice {centre + 1} of 20"
    assert all(n > 0 for n in _colour_counts(page, "axial"))
    assert page.evaluate(_CONTRAST)["worst"] == []
    assert offline.blocked == []


def test_the_page_never_shows_a_rounded_or_stale_number(
    offline, server_url, tmp_path, write_nifti
) -> None:
    """What a reviewer saw: a Dice of 0.99996 read "1.0000" (and was called the worst); a
    one-voxel structure read "0.0000" mL; voxel sizes were rounded to 2 decimals; with Dice
    not scored the note still said "lowest Dice"; a downsampled volume's slice counter counted
    shown slices as if they were all; and a failed request left the previous case's scores
    on screen under its error."""
    import numpy as np

    spacing = (0.3, 0.3, 0.30078125)
    ref = np.zeros((40, 32, 40), np.uint8)
    ref[5:25, 5:25, 5:35] = 1  # 12000 voxels
    ref[30:34, 26:30, 30:34] = 2
    ref[36, 2, 2] = 3  # one voxel: 0.3 * 0.3 * 0.30078125 mm3 = 0.00002707 mL
    pred = ref.copy()
    pred[5, 5, 5] = 0  # one voxel of label 1 missed: Dice 23998 / 23999
    files = {
        "prediction": write_nifti(tmp_path / "pred.nii.gz", pred, np.diag([*spacing, 1.0])),
        "reference": write_nifti(tmp_path / "ref.nii.gz", ref, np.diag([*spacing, 1.0])),
    }
    long_ref = np.zeros((300, 12, 8), np.uint8)  # 300 > the pictures' 128 a side: 1 in 3
    long_ref[100:200, 3:9, 2:6] = 1
    long_files = {
        "prediction": write_nifti(tmp_path / "long_pred.nii.gz", long_ref),
        "reference": write_nifti(tmp_path / "long_ref.nii.gz", long_ref),
    }
    page = offline.page
    page.goto(server_url + "/")
    _enter_key(page, API_KEY)
    page.locator("#key-message").filter(has_text="Key accepted").wait_for(timeout=10_000)

    def submit(pair: dict[str, Path], wait_for: str) -> None:
        for field_name, path in pair.items():
            page.locator(f"#{field_name}").set_input_files(str(path))
        page.get_by_role("button", name="Score", exact=True).click()
        page.locator("#status").filter(has_text=wait_for).wait_for(timeout=60_000)

    submit(files, "Scored in")
    page.locator("#pictures").wait_for(state="visible", timeout=60_000)

    def cell(label: int, column: str) -> str:
        row = page.locator(f"tr[data-label='{label}']")
        text: str = row.locator(f"td[data-column='{column}']").inner_text()
        return text

    dice_1 = 2 * 11999 / (11999 + 12000)  # 0.9999583...
    assert cell(1, "dice") == f"{dice_1:.5f}" == "0.99996" and cell(2, "dice") == "1.0000"
    assert cell(3, "reference_ml") == "0.0000271" and cell(3, "dice") == "1.0000"
    assert "voxel 0.3 × 0.3 × 0.300781 mm" in page.locator("#case-summary").inner_text()
    assert page.locator("#label-note").inner_text().endswith("(lowest Dice): 1.")

    for metric in ("dice", "jaccard"):  # recall and precision only
        page.get_by_role("checkbox", name=metric, exact=True).uncheck()
    submit(files, "Scored in")
    page.locator("#pictures").wait_for(state="visible", timeout=60_000)
    note = page.locator("#label-note").inner_text()
    assert note == "Opened at the first label, 1 (neither Dice nor Jaccard was scored)."

    submit(long_files, "Scored in")
    page.locator("#pictures").wait_for(state="visible", timeout=60_000)
    # the sagittal view steps through x (300 voxels, 100 shown)
    counter = page.locator("#sagittal-value").inner_text()
    assert counter.endswith("of 100 shown (1 in 3 of the volume's)"), counter

    (tmp_path / "not.nii.gz").write_bytes(b"not a volume")
    submit({"prediction": tmp_path / "not.nii.gz"}, "Not scored")
    assert "[not_nifti]" in page.locator("#status").inner_text()
    assert page.locator("#results").is_hidden() and page.locator("#pictures").is_hidden()
    assert offline.blocked == []


# ---------------------------------------------------------------- the dataset part of the page
# The real jobs API of the same server: an admin creates a reference set, the page submits
# an archive of predictions, the job runs in the server's worker process.

N_CASES = 5  # scored, and one more whose prediction is not a NIfTI file
DATASET_SPACING = (1.0, 1.0, 2.0)


@pytest.fixture(scope="module")
def dataset_files(nifti_bytes) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``(predictions, references)`` as ``{file name: .nii.gz bytes}``: worse and worse cases;
    in the last one label 2 is not predicted at all (its HD95 is undefined); the prediction
    of one more case, ``broken``, is not a NIfTI file (the case fails)."""
    import numpy as np

    affine = np.diag([*DATASET_SPACING, 1.0])
    rng = np.random.default_rng(5)
    preds, refs = {}, {}
    for case in range(N_CASES):
        ref = np.zeros((16, 14, 10), np.uint8)
        ref[2:10, 2:10, 2:8] = 1
        ref[11:15, 3:12, 1:9] = 2
        pred = ref.copy()
        flip = rng.random(ref.shape) < 0.03 * (case + 1)
        pred[flip] = rng.integers(0, 3, int(flip.sum()), dtype=np.uint8)
        if case == N_CASES - 1:
            pred[pred == 2] = 0
        preds[f"case{case}.nii.gz"] = nifti_bytes(pred, affine)
        refs[f"case{case}.nii.gz"] = nifti_bytes(ref, affine)
    preds["broken.nii.gz"] = b"this is not a NIfTI file " * 20
    refs["broken.nii.gz"] = refs["case0.nii.gz"]
    return preds, refs


_RECORD_PROGRESS = """
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("job-progress");
  new MutationObserver(() => window.__progress.push([bar.value, bar.max]))
    .observe(bar, { attributes: true, attributeFilter: ["value", "max"] });
});
"""


def _box(page, metric: str, label: int):
    return page.locator(f"svg[data-metric='{metric}'] g[data-label='{label}']")


def test_score_a_dataset_through_the_page(
    offline, server_url, dataset_files, tmp_path, archive_bytes
) -> None:
    import json

    import numpy as np

    preds, refs = dataset_files
    team_key = {"Authorization": f"Bearer {API_KEY}"}
    created = httpx.post(
        server_url + "/v1/reference-sets",
        files={"references": ("refs.zip", archive_bytes(refs))},
        data={"name": "abdomen CT", "labels": "1=liver,2=spleen", "metrics": "dice,jaccard,hd95"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    set_id = created.json()["id"]

    page = offline.page
    page.add_init_script(_RECORD_PROGRESS)
    page.goto(server_url + "/")
    _enter_key(page, API_KEY)
    page.locator("#dataset-section").wait_for(state="visible", timeout=10_000)
    # the set is offered, its default metrics ticked, its labels shown as the placeholder
    assert page.get_by_role("combobox", name="Reference set").input_value() == set_id
    assert page.locator("#references-field").is_hidden()
    ticked = page.locator("input[name=dataset-metric]:checked").evaluate_all(
        "boxes => boxes.map(b => b.value)"
    )
    assert ticked == ["dice", "jaccard", "hd95"]
    assert page.get_by_role("checkbox", name="hd95 (dataset)").is_checked()
    assert page.locator("#dataset-labels").get_attribute("placeholder") == "1=liver,2=spleen"
    archive = tmp_path / "predictions.zip"
    archive.write_bytes(archive_bytes(preds))
    page.get_by_label("Predictions archive").set_input_files(str(archive))
    page.get_by_role("button", name="Score the dataset").click()
    # the button is disabled while the page uploads, follows the job and draws its results
    page.wait_for_function(
        "() => !document.getElementById('dataset-button').disabled", timeout=120_000
    )
    status = page.locator("#job-status").inner_text()
    assert ": done" in status, status
    page.locator("#dataset-results").wait_for(state="visible", timeout=10_000)

    # the job, as the API tells this team
    (job,) = httpx.get(server_url + "/v1/jobs", headers=team_key).json()["jobs"]
    assert job["status"] == "done" and job["reference_set"] == set_id
    job_url = f"{server_url}/v1/jobs/{job['id']}"
    report = httpx.get(job_url + "/report", headers=team_key).json()
    assert [case["case_id"] for case in report["cases"]] == [f"case{i}" for i in range(N_CASES)]
    (failure,) = report["failures"]
    assert failure["case_id"] == "broken"
    total = N_CASES + 1
    assert {tuple(case["options"]["metrics"]) for case in report["cases"]} == {
        ("dice", "jaccard", "hd95")
    }

    # the progress bar moved from nothing scored to every case, never back
    progress = page.evaluate("() => window.__progress")
    values = [value for value, top in progress if top == total]
    assert values[0] < total and values[-1] == total
    assert values == sorted(values), progress
    bar = page.locator("#job-progress")
    assert (bar.get_attribute("value"), bar.get_attribute("max")) == (str(total),) * 2
    status = page.locator("#job-status").inner_text()
    assert f"done, {total} of {total} cases scored, 1 failed" in status

    # a Dice and an HD95 box plot per label: median and quartiles those of numpy over the
    # cases where the metric is defined; the missed label's undefined HD95 is left out
    for metric in ("dice", "hd95"):
        for label in (1, 2):
            rows = [
                row for case in report["cases"] for row in case["labels"] if row["label"] == label
            ]
            values = [row[metric] for row in rows if row[metric] is not None]
            group = _box(page, metric, label)
            assert abs(float(group.get_attribute("data-median")) - np.median(values)) < 1e-12
            q1, q3 = np.percentile(values, [25, 75])
            assert abs(float(group.get_attribute("data-q1")) - q1) < 1e-12
            assert abs(float(group.get_attribute("data-q3")) - q3) < 1e-12
            assert group.locator("circle").count() == len(values)
            assert int(group.get_attribute("data-undefined")) == len(rows) - len(values)
    assert _box(page, "hd95", 2).locator("circle").count() == N_CASES - 1
    assert "1 undefined" in (_box(page, "hd95", 2).locator("text").text_content() or "")

    # the cases: the failed one first with its error, then worst (lowest mean Dice) first
    means = {
        case["case_id"]: float(np.mean([row["dice"] for row in case["labels"]]))
        for case in report["cases"]
    }
    shown = page.locator("#cases-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.case)"
    )
    assert shown == ["broken", *sorted(means, key=means.get)]
    assert shown[1] == f"case{N_CASES - 1}"
    rows = page.locator("#cases-table tbody tr")
    failed = rows.nth(0).locator("td").all_inner_texts()
    assert failed == ["broken", "", "", f"{failure['message']} [{failure['code']}]"]
    worst = rows.nth(1).locator("td").all_inner_texts()
    assert worst[1] == f"{means[shown[1]]:.4f}" and worst[2] == "0.0000, label 2 (spleen)"

    # the job failed one case, so it does not rank, and the leaderboard says why
    page.locator("#leaderboard").wait_for(state="visible", timeout=10_000)
    board_url = f"{server_url}/v1/reference-sets/{set_id}/leaderboard"
    board = httpx.get(board_url, headers=team_key).json()
    assert board["entries"] == []
    assert board["excluded"] == [
        {"team": TEAM, "job": job["id"], "differs": [], "failed": 1, "missing": 0}
    ]
    note = page.locator("#leaderboard-excluded")
    not_ranked = (
        "Not ranked (newest job scored with other options than the set's, or not on every case): "
    )
    assert note.inner_text() == f"{not_ranked}{TEAM} (1 case failed)"
    assert page.locator("#leaderboard-table tbody tr").count() == 0

    def finished_job(data: dict[str, str], files: dict[str, bytes]) -> dict:
        submitted = httpx.post(
            f"{server_url}/v1/jobs",
            data={"reference_set": set_id, **data},
            files={"predictions": ("p.zip", archive_bytes(files), "application/zip")},
            headers=team_key,
            timeout=60,
        ).json()
        for _ in range(6):
            done = httpx.get(f"{server_url}/v1/jobs/{submitted['id']}?wait=20",
                             headers=team_key, timeout=30).json()  # fmt: skip
            if done["status"] == "done":
                return done
        raise AssertionError(f"job {submitted['id']} did not finish: {done}")

    # a job of the team on every case ranks, with the API's score (asked for by another
    # metric the job scored: the board asks the API for it)
    whole = {**preds, "broken.nii.gz": preds["case0.nii.gz"]}
    finished_job({}, whole)
    choice = page.get_by_label("Ranked by the mean of")
    assert choice.locator("option").all_inner_texts() == ["Dice", "Jaccard", "HD95 (mm)"]
    choice.select_option("hd95")
    page.locator("#leaderboard-order").filter(has_text="lower").wait_for(timeout=10_000)
    by_hd95 = httpx.get(f"{board_url}?metric=hd95", headers=team_key).json()["entries"][0]
    shown = page.locator("#leaderboard-table tbody tr").first.locator("td").all_inner_texts()
    assert shown == ["1", TEAM, f"{by_hd95['score']:.4f}", str(by_hd95["cases"])]
    assert by_hd95["cases"] == total
    assert page.locator("#leaderboard-excluded").is_hidden()
    choice.select_option("dice")
    page.locator("#leaderboard-order").filter(has_text="higher").wait_for(timeout=10_000)
    entry = httpx.get(board_url, headers=team_key).json()["entries"][0]
    first = page.locator("#leaderboard-table tbody tr").first.locator("td").all_inner_texts()
    assert first == ["1", TEAM, f"{entry['score']:.4f}", str(entry["cases"])]
    assert by_hd95["score"] != entry["score"]
    # a newer job of the team with its own percentile does not rank (the whole one does), and
    # the page says so
    finished_job({"percentile": "90"}, whole)
    choice.select_option("jaccard")
    note.wait_for(state="visible", timeout=10_000)
    assert note.inner_text() == f"{not_ranked}{TEAM} (percentile)"
    shown = page.locator("#leaderboard-table tbody tr").all_inner_texts()
    assert len(shown) == 1 and shown[0].split("\t")[:2] == ["1", TEAM]

    # the downloads are the API's files
    def api_text(name: str) -> str:
        return httpx.get(f"{job_url}/{name}", headers=team_key).text

    expected = {
        "report JSON": json.dumps(report),
        "cases CSV": api_text("cases.csv"),
        "metrics.json (grand-challenge)": api_text("metrics.json"),
    }
    for button, text in expected.items():
        with page.expect_download() as download:
            page.get_by_role("button", name=button).click()
        got = Path(download.value.path()).read_text()
        if button == "cases CSV":
            assert got == text
        else:
            assert json.loads(got) == json.loads(text)

    section = page.locator("#dataset-section")
    section.screenshot(path=str(tmp_path / "dataset-page.png"))
    if os.environ.get("JDT_UPDATE_SCREENSHOTS"):  # the README's picture: docs/images/
        section.screenshot(path=str(REPO / "docs" / "images" / "dataset-page.png"))
    assert page.evaluate(_CONTRAST)["worst"] == []
    assert offline.blocked == []


def test_score_a_dataset_against_uploaded_references(
    offline, server_url, dataset_files, tmp_path, archive_bytes
) -> None:
    """No reference set: the references come as an archive; no leaderboard is shown."""
    preds, refs = dataset_files
    names = ["case0.nii.gz", "case4.nii.gz"]
    # one reference without its prediction, one prediction without its reference
    chosen = {
        "predictions": {**{n: preds[n] for n in names}, "extra.nii.gz": preds["case1.nii.gz"]},
        "references": {**{n: refs[n] for n in names}, "case2.nii.gz": refs["case2.nii.gz"]},
    }
    for kind, files in chosen.items():
        (tmp_path / f"{kind}.tar.gz").write_bytes(archive_bytes(files, kind="tar.gz"))
    page = offline.page
    page.goto(server_url + "/")
    _enter_key(page, API_KEY)
    page.locator("#dataset-section").wait_for(state="visible", timeout=10_000)
    page.get_by_role("combobox", name="Reference set").select_option("")
    assert page.locator("#references-field").is_visible()
    page.get_by_role("checkbox", name="hd95 (dataset)").uncheck()
    page.get_by_label("References archive").set_input_files(str(tmp_path / "references.tar.gz"))
    page.get_by_label("Predictions archive").set_input_files(str(tmp_path / "predictions.tar.gz"))
    page.get_by_role("textbox", name=re.compile("^Dataset labels")).fill("1=liver,2=spleen")
    page.get_by_role("textbox", name=re.compile("^Dataset regions")).fill("organs=1,2")
    page.get_by_role("button", name="Score the dataset").click()
    page.wait_for_function(
        "() => !document.getElementById('dataset-button').disabled", timeout=120_000
    )
    status = page.locator("#job-status").inner_text()
    assert (
        "done, 2 of 2 cases scored, 1 reference without a prediction, "
        "1 prediction without a reference." in status
    ), status
    job_id = status.split(":")[0].removeprefix("Job ").strip()
    report = httpx.get(
        f"{server_url}/v1/jobs/{job_id}/report", headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()
    # the job scored what the form asked: the default metrics (HD95 unticked), the region
    assert report["cases"][0]["options"]["metrics"] == ["dice", "jaccard", "precision", "recall"]
    regions = [row for row in report["cases"][0]["labels"] if row.get("region") == "organs"]
    assert len(regions) == 1
    # Dice box plots for the labels and the region; none of HD95; no leaderboard
    assert page.locator("svg[data-metric='dice'] g[data-label]").count() == 2
    region_box = page.locator("svg[data-metric='dice'] g[data-region='organs']")
    assert region_box.locator("circle").count() == 2
    assert page.locator("svg[data-metric='hd95']").count() == 0
    assert page.locator("#leaderboard").is_hidden()
    # the reference without a prediction is a row that says so; the ignored prediction is named
    assert report["unpaired"] == {"predictions": ["extra.nii.gz"], "references": ["case2.nii.gz"]}
    unpaired = page.locator("#cases-table tbody tr[data-case='case2.nii.gz'] td")
    assert unpaired.all_inner_texts() == [
        "case2.nii.gz",
        "",
        "",
        "no prediction for this reference",
    ]
    assert page.locator("#unpaired-predictions").inner_text() == (
        "Not scored, no reference of that name: extra.nii.gz."
    )
    assert offline.blocked == []


def _fake_dataset_api(page, job: dict, report: dict | None = None, board: dict | None = None):
    """Answer the page's dataset calls with these bodies (a reference set ``set-1`` offered,
    the job created as ``job``, its report and the set's leaderboard): to show the page what
    the API can return but is slow or hard to make a real server produce."""
    import json

    def answer(body: object):
        return lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(body)
        )

    page.route("**/v1/reference-sets", answer({"reference_sets": [
        {"id": "set-1", "name": "a set", "cases_total": 3, "version": "0" * 16, "options": {}}
    ]}))  # fmt: skip
    page.route("**/v1/jobs", answer(job))
    page.route(f"**/v1/jobs/{job['id']}", answer(job))
    if report is not None:
        page.route(f"**/v1/jobs/{job['id']}/report", answer(report))
    if board is not None:
        page.route("**/v1/reference-sets/set-1/leaderboard?*", answer(board))


def _job(status: str, total: int, error: str | None = None) -> dict:
    return {
        "id": "f" * 32,
        "status": status,
        "reference_set": "set-1",
        "progress": {"cases_done": total if status == "done" else 0, "cases_total": total,
                     "failures": 0},
        "unpaired": {"predictions": [], "references": []},
        "error": error,
    }  # fmt: skip


def _case(case_id: str, labels: int, rng) -> dict:
    rows = [
        {"label": k, "dice": float(rng.uniform(0.5, 1.0)), "hd95": float(rng.uniform(0, 30))}
        for k in range(1, labels + 1)
    ]
    return {"case_id": case_id, "options": {"metrics": ["dice", "hd95"]}, "labels": rows}


def _submit_dataset(page, server_url: str, tmp_path: Path) -> None:
    page.goto(server_url + "/")
    _enter_key(page, API_KEY)
    page.locator("#dataset-section").wait_for(state="visible", timeout=10_000)
    archive = tmp_path / "predictions.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))  # never sent: the API is answered above
    page.get_by_label("Predictions archive").set_input_files(str(archive))
    page.get_by_role("button", name="Score the dataset").click()
    page.wait_for_function(
        "() => !document.getElementById('dataset-button').disabled", timeout=60_000
    )


def test_a_job_that_failed_as_a_whole_shows_why(offline, server_url, tmp_path) -> None:
    page = offline.page
    _fake_dataset_api(
        page, _job("failed", 3, "the reference folder changed since it was registered")
    )
    _submit_dataset(page, server_url, tmp_path)
    status = page.locator("#job-status")
    assert status.inner_text() == (
        f"Job {'f' * 32}: failed, 0 of 3 cases scored: "
        "the reference folder changed since it was registered."
    )
    assert "error" in (status.get_attribute("class") or "")
    assert offline.blocked == []


def test_a_large_dataset_is_drawn_and_close_ranks_are_told_apart(
    offline, server_url, tmp_path
) -> None:
    """1000 cases of 140 labels (140 000 values per box-plot metric, past what one call's
    arguments take), and a leaderboard whose two scores agree to six digits."""
    import numpy as np

    rng = np.random.default_rng(3)
    cases = [_case(f"case{i:04d}", 140, rng) for i in range(1000)]
    report = {"cases": cases, "failures": [], "unpaired": {"predictions": [], "references": []},
              "summary": {"metrics": ["dice", "hd95"]}}  # fmt: skip
    board = {"better": "higher", "excluded": [], "entries": [
        {"rank": 1, "team": "radiology", "score": 0.8888917, "cases": 1000},
        {"rank": 2, "team": "other-team", "score": 0.8888889, "cases": 1000},
        {"rank": 3, "team": "third", "score": 0.5, "cases": 1000},
    ]}  # fmt: skip
    page = offline.page
    _fake_dataset_api(page, _job("done", 1000), report, board)
    _submit_dataset(page, server_url, tmp_path)
    status = page.locator("#job-status").inner_text()
    assert status == f"Job {'f' * 32}: done, 1000 of 1000 cases scored.", status
    page.locator("#dataset-results").wait_for(state="visible", timeout=30_000)
    assert page.locator("#cases-table tbody tr").count() == 1000
    top = max(row["hd95"] for case in cases for row in case["labels"])
    axis = page.locator("svg[data-metric='hd95'] > text").last.text_content()
    assert axis == f"{top:.0f}"
    for metric in ("dice", "hd95"):
        groups = page.locator(f"svg[data-metric='{metric}'] g[data-label]")
        assert groups.count() == 140
        values = [case["labels"][6][metric] for case in cases]  # label 7
        shown = float(page.locator(f"svg[data-metric='{metric}'] g[data-label='7']")
                      .get_attribute("data-median"))  # fmt: skip
        assert abs(shown - float(np.median(values))) < 1e-12
    page.locator("#leaderboard").wait_for(state="visible", timeout=10_000)
    scores = page.locator("#leaderboard-table tbody tr td:nth-child(3)").all_inner_texts()
    assert scores == ["0.888892", "0.888889", "0.500000"]
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
    # each control's name (its label's text, or its aria-label, or a button's text) is its own,
    # on both parts of the page, so assistive technology and tests can tell them apart
    names = page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea, button")].map((e) =>
            (e.getAttribute("aria-label") || (e.labels && e.labels.length
              ? [...e.labels].map((l) => l.textContent).join(" ") : e.textContent))
            .replace(/\\s+/g, " ").trim())"""
    )
    assert len(names) > 30
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
    reached = []
    for _ in range(40):  # every control of the pair form, the metric boxes included
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => document.activeElement.id"))
    controls = ("api-key", "prediction", "reference", "image", "labels", "regions", "score-button")
    for control in controls:
        assert control in reached, (control, reached)
    contrast = page.evaluate(_CONTRAST)
    assert contrast["worst"] == [] and contrast["checked"] > 20, contrast
    assert offline.blocked == []

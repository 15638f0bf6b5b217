"""A real browser on the finished demo (issue 8, acceptance 2): headless Chromium (Debian's
`chromium`, driven by Playwright's Python package through `executable_path`: no browser download)
opens the MLflow UI of the session's tracking server, finds the demo's training run, its metrics
chart and the registered model, then opens the live Serve app's `/docs`.

Screenshots are kept in `test-artifacts/browser/` at the repository root (ignored by git) and
their paths printed, so a person can look at what the browser saw.

The machine has no internet: FastAPI's /docs page loads Swagger UI from a CDN, so requests to
that CDN are answered with the same Swagger UI files from the `swagger-ui-bundle-v2` package
(a stand-in for the CDN, which cannot exist here; the app and its OpenAPI schema are real).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import demo_fixture
from tests.demo_fixture import DemoRun

# The shared session fixture: still serving here in any file order (group_demo_items).
demo_run = demo_fixture.demo_run
# The first test to ask for the demo waits for its run (the suite-wide timeout is 600 s).
pytestmark = pytest.mark.timeout(demo_fixture.START_TIMEOUT_S + 300)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


def _chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium (make test does it)")
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    pg = ctx.new_page()
    yield pg
    ctx.close()


def _shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    print(f"screenshot: {path}")
    return path


def test_mlflow_ui_shows_run_metrics_and_registered_model(page, demo_run: DemoRun, mlflow_server):
    from mlflow import MlflowClient

    s = demo_run.summary
    run = MlflowClient(mlflow_server.url).get_run(s["train"]["run_id"])
    run_name = run.info.run_name
    base = f"{mlflow_server.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"

    # The run page: its name and a logged parameter are on screen.
    page.goto(base)
    page.get_by_text(run_name).first.wait_for()
    page.get_by_text("batch_size").first.wait_for()
    assert _shot(page, "01-mlflow-run").stat().st_size > 10_000

    # Its metrics charts (grouped by prefix, drawn lazily): search for the training loss chart.
    page.goto(f"{base}/model-metrics")
    page.get_by_placeholder("Search metric charts").fill("train/loss")
    page.get_by_text("loss", exact=True).first.wait_for()  # the chart's title in section "train"
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for()
    assert chart.bounding_box()["width"] > 100
    assert (
        page.locator(".js-plotly-plot path.js-line, .js-plotly-plot .scatterlayer path").count()
        >= 1
    )
    assert _shot(page, "02-mlflow-metrics").stat().st_size > 10_000

    # The registered model with the version the demo served.
    version = s["serve"]["model_uri"].rsplit("/", 1)[-1]
    page.goto(f"{mlflow_server.url}/#/models/vljepa-demo")
    page.get_by_text(f"Version {version}").first.wait_for()
    assert _shot(page, "03-mlflow-model").stat().st_size > 10_000
    page.goto(f"{mlflow_server.url}/#/models/vljepa-demo/versions/{version}")
    source_run = MlflowClient(mlflow_server.url).get_run(s["decoder"]["run_id"]).info.run_name
    page.get_by_text(source_run).first.wait_for()
    _shot(page, "04-mlflow-model-version")


def _serve_cdn_locally(page) -> None:
    """Answer Swagger UI's CDN requests with the packaged files (no internet here)."""
    import swagger_ui_bundle

    root = Path(swagger_ui_bundle.swagger_ui_path)

    def handle(route):
        name = route.request.url.split("?")[0].rsplit("/", 1)[-1]
        f = root / name
        if f.is_file():
            ctype = "text/css" if name.endswith(".css") else "application/javascript"
            route.fulfill(status=200, body=f.read_bytes(), content_type=ctype)
        else:
            route.abort()

    page.route("https://cdn.jsdelivr.net/**", handle)
    page.route("https://fastapi.tiangolo.com/**", lambda route: route.abort())


def test_serve_docs_lists_the_api(page, demo_run: DemoRun):
    _serve_cdn_locally(page)
    page.goto(f"{demo_run.base_url}/docs")
    page.get_by_text("VL-JEPA serving").first.wait_for()  # the app's description
    for path in ("/v1/streams/{stream_id}/clips", "/v1/embed", "/v1/caption", "/v1/classify"):
        page.locator(f'.opblock-summary-path[data-path="{path}"]').first.wait_for()
    assert _shot(page, "05-serve-docs").stat().st_size > 10_000

"""The pages people open in a browser, served with no network access.

- ``/``: the pair page (``templates/index.html``, ``static/page.js``, ``static/page.css``): a
  person chooses a prediction, a reference (and the image), and sees the per-label table and
  the overlay pictures; where the service has the jobs API it also scores a dataset. The page
  calls the public API only (``POST /v1/scores`` with ``overlays=true``, see
  :mod:`jdt_service.overlays`; ``/v1/jobs``), so it adds no second code path for scores; it
  asks for the API key when the server has keys.
- ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load their scripts and styles from this server:
  the files ship in the ``fastapi-offline`` wheel (its code is MIT; the bundled Swagger UI is
  Apache-2.0, ReDoc MIT), served under ``/static/docs/{name}``. FastAPI's own pages load them
  from a CDN, which hospital clusters often cannot reach.
- ``/openapi.json``: the schema those pages read.

Every route here is a FastAPI route, so the access log and ``/metrics`` count each under its
own path (FastAPI's built-in docs routes are plain Starlette routes, counted as ``unmatched``).
The routes are left out of the OpenAPI schema and need no API key.
"""

from __future__ import annotations

import mimetypes
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates

from jdt_service.auth import key_table
from jdt_service.errors import ApiError
from jdt_service.teams import KeyTable
from monai_jdt import __version__
from monai_jdt.scoring.options import BOUNDARY_METRICS, DEFAULT_METRICS, METRICS

__all__ = ["DOCS_ASSETS", "OPENAPI_URL", "PAGE_ASSETS", "router"]

OPENAPI_URL = "/openapi.json"
_DOCS_STATIC = "/static/docs"
_CACHE = {"Cache-Control": "public, max-age=3600"}
#: the pages may load nothing from other hosts (ReDoc's menu would fetch a logo from its CDN;
#: the inline scripts are FastAPI's page set-up, blob: is ReDoc's search worker)
_SAME_ORIGIN_ONLY = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
}
#: the pair page runs only its own script and style
_PAGE_POLICY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
}
#: the dataset form's metrics before a reference set is picked: the defaults and hd95, whose
#: box plots the page draws next to Dice's
_DATASET_METRICS = (*DEFAULT_METRICS, "hd95")
_HERE = Path(__file__).parent
_TEMPLATES = Jinja2Templates(directory=str(_HERE / "templates"))
#: (view, title, the direction its slider moves)
_VIEWS = (
    ("axial", "Axial", "inferior to superior"),
    ("coronal", "Coronal", "posterior to anterior"),
    ("sagittal", "Sagittal", "left to right"),
)


def _assets(folder: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """``name -> path`` for the files a route may serve (an allow-list: nothing else is)."""
    return {name: folder / name for name in names}


#: the Swagger UI and ReDoc files shipped in the ``fastapi-offline`` wheel
DOCS_ASSETS = _assets(
    Path(str(files("fastapi_offline") / "static")),
    ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"),
)

#: the pair page's own script and style
PAGE_ASSETS = _assets(_HERE / "static", ("page.js", "page.css"))

router = APIRouter(include_in_schema=False)


def _file(assets: dict[str, Path], name: str) -> FileResponse:
    """The asset ``name`` with its media type; 404 ``not_found`` for any other name."""
    path = assets.get(name)
    if path is None:
        raise ApiError(404, "not_found", f"no static file named {name!r}")
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=_CACHE)


@router.get("/")
async def pair_page(
    request: Request, table: Annotated[KeyTable, Depends(key_table)]
) -> HTMLResponse:
    return _TEMPLATES.TemplateResponse(
        request,
        "index.html",
        {
            "root": request.scope.get("root_path", ""),
            "version": __version__,
            "auth_required": not table.open,  # as /v1/info says: admin keys alone count
            "metrics": METRICS + BOUNDARY_METRICS,
            "default_metrics": DEFAULT_METRICS,
            "dataset_metrics": _DATASET_METRICS,
            "views": _VIEWS,
        },
        headers=_PAGE_POLICY,
    )


@router.get("/static/{name}")
async def page_asset(name: str) -> FileResponse:
    return _file(PAGE_ASSETS, name)


@router.get(_DOCS_STATIC + "/{name}")
async def docs_asset(name: str) -> FileResponse:
    return _file(DOCS_ASSETS, name)


@router.get(OPENAPI_URL)
async def openapi_schema(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=root + OPENAPI_URL,
        title=request.app.title + " - Swagger UI",
        swagger_js_url=f"{root}{_DOCS_STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{_DOCS_STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{root}{_DOCS_STATIC}/favicon.png",
        # validatorUrl: no badge fetched from swagger.io's online validator
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers.update(_SAME_ORIGIN_ONLY)
    return page


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=root + OPENAPI_URL,
        title=request.app.title + " - ReDoc",
        redoc_js_url=f"{root}{_DOCS_STATIC}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{_DOCS_STATIC}/favicon.png",
        with_google_fonts=False,
    )
    page.headers.update(_SAME_ORIGIN_ONLY)
    return page

"""The officers' pages as route handlers, and their static files."""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

from labeval.web.dashboard import DashboardController
from labeval.web.imports import ImportPagesController
from labeval.web.lab_page import LabPageController, SamplePageController
from labeval.web.labs import LabTableController
from labeval.web.runs import RunPagesController
from labeval.web.selection import DrawPages, PlanPages
from labeval.web.signin import SignInController

STATIC_DIR = Path(__file__).parent / "static"


def static_files() -> Router:
    # Shipped inside the package: the pages work with no network at all (no CDN).
    return create_static_files_router(path="/static", directories=[STATIC_DIR], opt={"public": True},
                                      cache_control=CacheControlHeader(max_age=3600), include_in_schema=False)


PAGE_HANDLERS = [
    SignInController,
    DashboardController,
    LabTableController,
    RunPagesController,
    LabPageController,
    SamplePageController,
    ImportPagesController,
    DrawPages,
    PlanPages,
]

"""The dashboard: server-rendered pages that update themselves with plain
JavaScript (polling the JSON API and the job's event stream). No build step."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, redirect, render_template, request, send_from_directory
from werkzeug.wrappers import Response as WResponse

from api.assets import asset_json
from api.auth import SESSION_COOKIE, owner_scope, require_admin
from api.display import output_links, stage_label, time_tag
from api.errors import Forbidden, error_response
from api.inspect import tenant_queue_json
from api.serialize import job_json
from api.services import services
from storage import Status
from storage.access import SESSION_TTL, AccessStore
from storage.assets import AssetStore
from storage.batches import BatchNotFound, BatchStore
from storage.serialize import batch_json
from storage.stats import Inspector

bp = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

CHART_WIDTH, CHART_HEIGHT = 720, 180
#: A batch page's jobs per page.
BATCH_PAGE = 100
STATIC = Path(__file__).parent / "static"
#: The icon never changes within a release; browsers may keep it a day.
FAVICON_MAX_AGE = 86400

bp.add_app_template_filter(time_tag, "time_tag")
bp.add_app_template_filter(stage_label, "stage_label")


@bp.errorhandler(BatchNotFound)
def _no_batch(exc: BatchNotFound) -> Response:
    # As a job page's unknown job: the API's one error shape.
    return error_response(404, "batch_not_found", "no such batch")


@bp.context_processor
def _session() -> dict[str, bool]:
    # No principal on the public pages of a locked API: nobody is signed in there.
    who = g.get("principal")
    return {
        "signed_in": bool(request.cookies.get(SESSION_COOKIE)),
        "admin": who is not None and who.admin,
    }


def _safe_next(target: str | None) -> str:
    r"""Only a path on this site (never ``//host`` or a scheme): no open redirect.

    Control characters are refused outright: browsers drop tabs and newlines
    from a URL, so ``/\t/evil.example`` would leave as ``//evil.example``,
    and a newline cannot go in a ``Location`` header at all."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ch < " " or ch == "\x7f" for ch in target)
    ):
        return "/"
    return target


@bp.get("/favicon.svg")
def favicon() -> Response:
    """The dashboard's icon: public (it holds no data) and cacheable."""
    return send_from_directory(
        STATIC, "favicon.svg", mimetype="image/svg+xml", max_age=FAVICON_MAX_AGE
    )


@bp.get("/favicon.ico")
def favicon_ico() -> WResponse:
    """Where browsers look for an icon on pages that name none (the API's
    JSON, a video opened in a tab)."""
    response = redirect("/favicon.svg", code=301)
    response.headers["Cache-Control"] = f"public, max-age={FAVICON_MAX_AGE}"
    return response


@bp.get("/login")
def login() -> str:
    """The sign-in form."""
    return render_template("login.html", error=None, next=_safe_next(request.args.get("next")))


def _cross_site() -> bool:
    """A form posted from another site (the browser says so in Origin or
    Sec-Fetch-Site): refused, so no site can sign a visitor in or out."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc != request.host


@bp.post("/login")
def login_submit() -> WResponse | tuple[str, int]:
    """Trade a key (sent in the form body, never the URL) for a session cookie."""
    if _cross_site():
        raise Forbidden("sign in from this site's own form")
    access = AccessStore(services().store)
    who = access.verify((request.form.get("key") or "").strip())
    target = _safe_next(request.form.get("next"))
    if who is None:
        return render_template("login.html", error="That key is not valid.", next=target), 401
    response = redirect(target, code=303)
    response.set_cookie(
        SESSION_COOKIE,
        access.create_session(who),
        max_age=int(SESSION_TTL.total_seconds()),
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
        path="/",
    )
    return response


@bp.post("/logout")
def logout() -> WResponse:
    """End the session and forget its cookie."""
    if _cross_site():
        raise Forbidden("sign out from this site's own page")
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        AccessStore(services().store).end_session(token)
    response = redirect("/login", code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@bp.get("/")
def jobs_page() -> str:
    """The job list, newest first (every tenant's, with a tenant column, for an admin)."""
    status = request.args.get("status") or ""
    search = request.args.get("q") or ""
    page = services().store.list_jobs(
        status=Status(status) if status in {s.value for s in Status} else None,
        search=search[:200].replace("\x00", "") or None,
        limit=50,
        owner=owner_scope(),
    )
    return render_template(
        "jobs.html",
        jobs=[job_json(j) for j in page.jobs],
        statuses=[s.value for s in Status],
        status=status,
        search=search,
        next_cursor=page.next_cursor,
        active="jobs",
    )


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    """One job, followed live through its event stream."""
    store = services().store
    job = store.get(job_id, owner=owner_scope())
    assets = AssetStore(store, services().settings.output_dir).for_job(job.id)
    return render_template(
        "job.html",
        job=job_json(job),
        assets=[asset_json(a) for a in assets],
        active="jobs",
        stale_after=services().settings.stale_after,
        outputs=output_links(job),
    )


@bp.get("/batches")
def batches_page() -> str:
    """Batches, newest first (every tenant's, with a tenant column, for an admin)."""
    cursor = request.args.get("cursor") or None
    page = BatchStore(services().store).list_batches(owner=owner_scope(), limit=50, cursor=cursor)
    return render_template(
        "batches.html",
        batches=[batch_json(b) for b in page.batches],
        next_cursor=page.next_cursor,
        active="batches",
    )


@bp.get("/batches/<batch_id>")
def batch_page(batch_id: str) -> str:
    """One batch: counts, progress, times, its webhook, and its jobs in order."""
    batches = BatchStore(services().store)
    batch = batches.get(batch_id, owner=owner_scope())
    raw_from = request.args.get("from", "0")
    first = int(raw_from) if raw_from.isascii() and raw_from.isdigit() and len(raw_from) < 6 else 0
    page = batches.list_jobs(
        batch.id, owner=owner_scope(), limit=BATCH_PAGE, cursor=request.args.get("cursor") or None
    )
    return render_template(
        "batch.html",
        batch=batch_json(batch),
        jobs=[job_json(j) for j in page.jobs],
        next_cursor=page.next_cursor,
        first_index=first,
        page_size=BATCH_PAGE,
        active="batches",
    )


@bp.get("/workers")
def workers_page() -> str:
    """The workers, alive, stale and stopped (admins only)."""
    require_admin()
    return render_template("workers.html", active="workers")


@bp.get("/overview")
def overview_page() -> str:
    """Counts, queue depth, throughput and recent failures (admins only)."""
    require_admin()
    svc = services()
    inspector = Inspector(svc.store)
    stats = inspector.stats()
    failures = [job_json(j) for j in inspector.recent_failures(10)]
    return render_template(
        "overview.html",
        stats=stats,
        failures=failures,
        tenants=[tenant_queue_json(t, svc.settings.max_running) for t in stats.tenants],
        queue_depth=svc.dispatcher.queue_depth(),
        active="overview",
    )


@bp.get("/overview/throughput.svg")
def throughput_chart() -> Response:
    """Jobs completed per minute over the last hour, as an SVG bar chart."""
    require_admin()
    per_minute = Inspector(services().store).stats().per_minute
    top = max(max(per_minute), 1)
    bar = CHART_WIDTH / len(per_minute)
    bars = []
    for i, count in enumerate(per_minute):
        h = (CHART_HEIGHT - 30) * count / top
        bars.append(
            f'<rect x="{i * bar + 1:.1f}" y="{CHART_HEIGHT - 20 - h:.1f}" '
            f'width="{bar - 2:.1f}" height="{h:.1f}" fill="#2563eb">'
            f"<title>{60 - i} min ago: {count}</title></rect>"
        )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" '
        f'height="{CHART_HEIGHT}" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
        f'font-family="sans-serif" font-size="11">'
        f'<line x1="0" y1="{CHART_HEIGHT - 20}" x2="{CHART_WIDTH}" y2="{CHART_HEIGHT - 20}" '
        f'stroke="#9ca3af"/>{"".join(bars)}'
        f'<text x="0" y="{CHART_HEIGHT - 5}" fill="#6b7280">60 min ago</text>'
        f'<text x="{CHART_WIDTH}" y="{CHART_HEIGHT - 5}" text-anchor="end" '
        f'fill="#6b7280">now</text>'
        f'<text x="0" y="12" fill="#6b7280">max {top}/min</text></svg>'
    )
    response = Response(svg, mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "no-store"
    return response

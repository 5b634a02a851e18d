"""The dashboard: server-rendered pages that update themselves with plain
JavaScript (polling the JSON API and the job's event stream). No build step."""

from __future__ import annotations

from flask import Blueprint, Response, render_template, request

from api.serialize import job_json
from api.services import services
from storage import Status
from storage.stats import Inspector

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")

CHART_WIDTH, CHART_HEIGHT = 720, 180


@bp.get("/")
def jobs_page() -> str:
    status = request.args.get("status") or ""
    search = request.args.get("q") or ""
    page = services().store.list_jobs(
        status=Status(status) if status in {s.value for s in Status} else None,
        search=search or None, limit=50)
    return render_template("jobs.html", jobs=[job_json(j) for j in page.jobs],
                           statuses=[s.value for s in Status], status=status, search=search,
                           next_cursor=page.next_cursor, active="jobs")


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    store = services().store
    job = store.get(job_id)
    return render_template("job.html", job=job_json(job), active="jobs",
                           stale_after=services().settings.stale_after)


@bp.get("/workers")
def workers_page() -> str:
    return render_template("workers.html", active="workers")


@bp.get("/overview")
def overview_page() -> str:
    svc = services()
    inspector = Inspector(svc.store)
    stats = inspector.stats()
    failures = [job_json(j) for j in inspector.recent_failures(10)]
    return render_template("overview.html", stats=stats, failures=failures,
                           queue_depth=svc.dispatcher.queue_depth(), active="overview")


@bp.get("/overview/throughput.svg")
def throughput_chart() -> Response:
    """Jobs completed per minute over the last hour, as an SVG bar chart."""
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

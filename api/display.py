"""How the dashboard's pages show a job's values to a person: times, stages
and links to produced files. ``static/dashboard.js`` shows the same values the
same way when it redraws a page from the JSON API, so the two stay in step."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flask import url_for
from markupsafe import Markup

from storage import Job, Status
from storage.files import SUBTITLES_SRT, SUBTITLES_VTT, THUMBNAIL_FILE, VIDEO_FILE, slide_file

#: Statuses that end a job before it completes; the stage then says where.
_STOPPED = frozenset({Status.FAILED.value, Status.CANCELLED.value})


def time_tag(value: str | None, relative: bool = False) -> Markup:
    """A ``<time>`` element for the ISO timestamp ``value``, the ISO value on
    hover. Its text is readable UTC until the script rewrites it in the
    browser's own time zone and language (the server knows neither);
    ``relative`` asks the script for "2 min ago" instead."""
    if value is None:
        return Markup("–")
    moment = datetime.fromisoformat(value)
    text = f"{moment.day} {moment:%b %Y, %H:%M:%S} UTC"
    extra = Markup(' data-relative="1"') if relative else ""
    return Markup('<time datetime="{0}" title="{0}"{1}>{2}</time>').format(value, extra, text)


def stage_label(job: Mapping[str, Any]) -> str:
    """The stage as a person reads it, never at odds with the status: the
    store leaves a job cancelled in the queue at stage ``queued``, which
    shows as "cancelled while queued" ("while scheduled" if it was cancelled
    before its ``run_at``); a scheduled job waits for its start time."""
    status, stage = job["status"], str(job["stage"]).replace("_", " ")
    if status == Status.COMPLETED.value:
        return "done"
    if status == Status.SCHEDULED.value:
        return "waiting for its start time"
    if status in _STOPPED:
        run_at, ended = job.get("run_at"), job.get("completed_at")
        if (
            job.get("started_at") is None
            and run_at
            and ended
            and datetime.fromisoformat(run_at) > datetime.fromisoformat(ended)
        ):
            stage = Status.SCHEDULED.value  # cancelled before it ever reached the queue
        return f"{status} while {stage}"
    return stage


def output_links(job: Job) -> dict[str, str]:
    """Every file ``job`` can produce, by its path in the job's folder, and the
    API route that serves it (to whoever may read the job, once it completed)."""
    links = {
        VIDEO_FILE: url_for("jobs.video", job_id=job.id),
        THUMBNAIL_FILE: url_for("jobs.thumbnail", job_id=job.id),
    }
    for name, endpoint in (
        (SUBTITLES_VTT, "jobs.subtitles_vtt"),
        (SUBTITLES_SRT, "jobs.subtitles_srt"),
    ):
        if name in job.created_files:
            links[name] = url_for(endpoint, job_id=job.id)
    for n in range(1, job.slide_count + 1):
        links[slide_file(n)] = url_for("jobs.slide", job_id=job.id, n=n)
    return links

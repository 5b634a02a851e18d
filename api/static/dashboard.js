// slidefarm dashboard: plain JavaScript, no build step. Every page keeps
// itself current by polling the JSON API (the job page follows the job's
// Server-Sent Events stream). User text is always set with textContent.
"use strict";

const slidefarm = (() => {
  const el = (tag, attrs = {}, children = []) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  };

  const seconds = (value) => {
    if (value === null || value === undefined) return "–";
    if (value < 60) return `${value.toFixed(1)} s`;
    if (value < 3600) return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
    return `${Math.floor(value / 3600)} h ${Math.floor((value % 3600) / 60)} min`;
  };
  const since = (iso) => (iso ? (Date.now() - Date.parse(iso)) / 1000 : null);
  const between = (a, b) => (a && b ? (Date.parse(b) - Date.parse(a)) / 1000 : null);
  // Times in the browser's own language and zone ("29 Nov 2026, 14:03:12"),
  // the ISO value on hover. api/display.py writes the same <time> elements
  // (in UTC, for a page without script) and this file rewrites them.
  const absolute = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short",
    year: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const ago = (iso) => {
    const s = Math.max(since(iso), 0);
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  };
  const showTime = (node) => {
    const iso = node.getAttribute("datetime");
    const local = absolute.format(new Date(iso));
    if (node.dataset.relative) {
      node.textContent = ago(iso);
      node.title = `${local} (${iso})`;
    } else {
      node.textContent = local;
      node.title = iso;
    }
    return node;
  };
  const when = (iso, relative = false) => (iso
    ? showTime(el("time", relative ? { datetime: iso, "data-relative": "1" } : { datetime: iso }))
    : document.createTextNode("–"));
  // The stage as a person reads it, never at odds with the status (as api/display.py).
  const stageLabel = (job) => {
    let stage = job.stage.replaceAll("_", " ");
    if (job.status === "completed") return "done";
    if (job.status === "scheduled") return "waiting for its start time";
    if (job.status === "failed" || job.status === "cancelled") {
      // Cancelled before its run_at: it never reached the queue.
      if (!job.started_at && job.run_at && job.completed_at
          && Date.parse(job.run_at) > Date.parse(job.completed_at)) stage = "scheduled";
      return `${job.status} while ${stage}`;
    }
    return stage;
  };
  const bytes = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB`
    : `${(n / 1048576).toFixed(1)} MiB`);

  const getJSON = async (url, options = {}) => {
    // X-Slidefarm-Request: the session cookie only counts for writes that carry it.
    const response = await fetch(url, {
      headers: { Accept: "application/json", "X-Slidefarm-Request": "1" },
      credentials: "same-origin", ...options });
    const body = response.status === 204 ? null : await response.json();
    if (!response.ok) throw new Error(body && body.error ? body.error.message : response.statusText);
    return body;
  };

  const badge = (status) => el("span", { class: `badge ${status}`, text: status });
  const bar = (progress) => el("span", { class: "bar" },
    [el("span", { style: `width: ${(progress * 100).toFixed(1)}%` })]);

  const stamp = (text) => {
    const node = document.getElementById("updated");
    if (node) node.textContent = text;
  };

  // -- jobs -----------------------------------------------------------------
  function jobsPage(firstCursor, showTenant) {
    const tbody = document.querySelector("#jobs tbody");
    const status = document.getElementById("status");
    const search = document.getElementById("q");
    let cursor = null; // null: the newest page
    let nextCursor = firstCursor;

    const row = (job) => el("tr", { "data-job-id": job.job_id, "data-status": job.status }, [
      el("td", {}, [el("a", { href: `/jobs/${job.job_id}` }, [el("code", { text: job.job_id.slice(0, 8) })])]),
      ...(showTenant ? [el("td", { text: job.owner })] : []),
      el("td", { text: job.title }),
      el("td", {}, [badge(job.status)]),
      el("td", {}, [bar(job.progress)]),
      el("td", { text: stageLabel(job) }),
      el("td", { text: String(job.attempts) }),
      el("td", { text: job.worker || "" }),
      el("td", {}, [when(job.created_at, true)]),
      el("td", { text: seconds(between(job.started_at, job.completed_at || (job.started_at ? new Date().toISOString() : null))) }),
    ]);

    const refresh = async () => {
      const params = new URLSearchParams({ limit: "50" });
      if (status.value) params.set("status", status.value);
      if (search.value) params.set("q", search.value);
      if (cursor) params.set("cursor", cursor);
      try {
        const page = await getJSON(`/v1/jobs?${params}`);
        tbody.replaceChildren(...page.jobs.map(row));
        nextCursor = page.next_cursor;
        document.getElementById("older").disabled = !nextCursor;
        stamp(`updated ${new Date().toLocaleTimeString()}`);
      } catch (error) {
        stamp(`update failed: ${error.message}`);
      }
    };
    document.getElementById("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      cursor = null;
      history.replaceState(null, "", `/?status=${encodeURIComponent(status.value)}&q=${encodeURIComponent(search.value)}`);
      refresh();
    });
    status.addEventListener("change", () => { cursor = null; refresh(); });
    document.getElementById("newest").addEventListener("click", () => { cursor = null; refresh(); });
    document.getElementById("older").addEventListener("click", () => {
      if (nextCursor) { cursor = nextCursor; refresh(); }
    });
    refresh();
    setInterval(refresh, 1000);
  }

  // -- one job ------------------------------------------------------------
  function jobPage(jobId, staleAfter, showTenant, outputs) {
    let job = null;
    const fields = document.getElementById("fields");
    const timings = document.getElementById("timings");

    const dl = (node, pairs) => node.replaceChildren(...pairs.flatMap(([key, value]) => [
      el("dt", { text: key }),
      value instanceof Node ? el("dd", {}, [value])
        : el("dd", { text: value === null || value === undefined ? "–" : String(value) })]));
    // A produced file links to the route that serves it, once the job completed
    // (only then does the API serve its files).
    // A document deck's pages are counted while it renders, after this page
    // was made: its slides' routes sit beside the thumbnail's.
    const outputLink = (path) => {
      const page = /^slides\/(\d+)\.png$/.exec(path);
      if (outputs[path] || !page || !outputs["thumbnail.jpg"]) return outputs[path];
      return outputs["thumbnail.jpg"].replace(/thumbnail$/, `slides/${Number(page[1])}`);
    };
    const fileName = (job, path) => (job.status === "completed" && outputLink(path)
      ? el("a", { href: outputLink(path) }, [el("code", { text: path })]) : el("code", { text: path }));
    // Every slide, small, in order: the contact sheet of a completed job.
    const sheet = document.getElementById("slides");
    const showSheet = (job) => {
      const pages = (job.files || []).map((f) => f.path).filter((p) => /^slides\/\d+\.png$/.test(p)).sort();
      if (job.status !== "completed" || !pages.length) { sheet.hidden = true; return; }
      if (!sheet.hidden && sheet.childElementCount === pages.length) return;
      sheet.replaceChildren(...pages.map((path, i) => el("figure", {}, [
        el("a", { href: outputLink(path) }, [el("img", { src: outputLink(path), loading: "lazy", alt: `Slide ${i + 1}` })]),
        el("figcaption", { text: String(i + 1) })])));
      sheet.hidden = false;
    };

    const render = (data) => {
      job = data;
      document.getElementById("title").textContent = job.title;
      document.getElementById("status").replaceWith(Object.assign(badge(job.status), { id: "status" }));
      document.getElementById("progress").textContent = `${(job.progress * 100).toFixed(1)}%`;
      document.getElementById("stage").textContent = stageLabel(job);
      dl(fields, [
        ["job id", job.job_id], ...(showTenant ? [["tenant", job.owner]] : []),
        ["status", job.status], ["stage", stageLabel(job)],
        ["attempts", `${job.attempts} of ${job.max_attempts}`], ["worker", job.worker],
        ["error", job.error], ["cancel requested", job.cancel_requested ? "yes" : "no"],
        ["priority", job.priority], ["run at", job.run_at ? when(job.run_at) : "at once"],
        ["slides", job.slide_count],
        ["options", `${job.options.resolution}, ${job.options.theme}, ${job.options.fps} fps, ${job.options.transition}`],
        ["created", when(job.created_at)], ["started", when(job.started_at)],
        ["completed", when(job.completed_at)], ["last heartbeat", when(job.last_heartbeat)],
      ]);
      dl(timings, [
        ["waiting in the queue", seconds(job.timings.queue_wait_seconds)],
        ["rendering slides", seconds(job.timings.render_seconds)],
        ["synthesizing speech", seconds(job.timings.synth_seconds)],
        ["encoding video", seconds(job.timings.encode_seconds)],
        ["mixing sound", seconds(job.timings.mix_seconds)],
        ["total", seconds(between(job.started_at, job.completed_at))],
      ]);
      document.querySelector("#files tbody").replaceChildren(...(job.files || []).map((f) =>
        el("tr", {}, [el("td", {}, [fileName(job, f.path)]), el("td", { text: bytes(f.size_bytes) })])));
      const thumbnail = document.getElementById("thumbnail-figure");
      const video = document.getElementById("video-figure");
      const completed = job.status === "completed";
      if (completed && thumbnail.hidden) {
        document.getElementById("thumbnail").src = job.thumbnail_url;
        thumbnail.hidden = false;
      }
      if (completed && video.hidden) {
        const player = document.getElementById("video");
        player.poster = job.thumbnail_url; // the first slide, not a black frame, until it plays
        player.src = job.video_url;
        // A narrated deck: its subtitles as a track the player can show, and links.
        const vtt = outputs["subtitles.vtt"];
        const hasSubtitles = vtt && (job.files || []).some((f) => f.path === "subtitles.vtt");
        if (hasSubtitles && !player.querySelector("track")) {
          // The voice's language (espeak-ng:fr, piper:en_US-joe-medium); the host's default is English.
          const voice = (job.options && job.options.voice) || "espeak-ng:en";
          const lang = voice.split(":")[1].split(/[-_]/)[0] || "en";
          player.append(el("track", { kind: "subtitles", src: vtt, srclang: lang, label: "Narration" }));
        }
        const links = document.getElementById("subtitle-links");
        if (hasSubtitles) {
          document.getElementById("subtitles-vtt").href = vtt;
          document.getElementById("subtitles-srt").href = outputs["subtitles.srt"];
          links.hidden = false;
        }
        document.getElementById("video-download").href = job.video_url;
        video.hidden = false;
      }
      if (!completed) { thumbnail.hidden = true; video.hidden = true; }
      showSheet(job);
      document.getElementById("output-pending").hidden = completed;
      document.getElementById("cancel").disabled = !["scheduled", "queued", "processing"].includes(job.status);
      document.getElementById("retry").disabled = !["failed", "cancelled"].includes(job.status);
    };

    const loadHistory = async () => {
      const data = await getJSON(`/v1/jobs/${jobId}?include=history`);
      render(data);
      document.querySelector("#history tbody").replaceChildren(...data.history.map((e) =>
        el("tr", {}, [el("td", {}, [when(e.at)]), el("td", { text: e.from || "–" }), el("td", {}, [badge(e.to)]),
          el("td", { text: String(e.attempt) }), el("td", { text: e.worker || "–" }), el("td", { text: e.reason || "" })])));
    };

    const follow = () => {
      const source = new EventSource(`/v1/jobs/${jobId}/events`);
      let lastStatus = null;
      source.addEventListener("job", (event) => {
        const data = JSON.parse(event.data);
        render({ ...job, ...data });
        if (data.status !== lastStatus) { lastStatus = data.status; loadHistory(); }
      });
      source.addEventListener("end", () => { source.close(); loadHistory(); });
    };

    setInterval(() => {
      const age = job && job.status === "processing" ? since(job.last_heartbeat) : null;
      const node = document.getElementById("heartbeat-age");
      node.textContent = age === null ? "–" : seconds(Math.max(age, 0));
      node.style.color = age !== null && age > staleAfter ? "#b91c1c" : "";
    }, 500);

    const act = (name, method, url) => document.getElementById(name).addEventListener("click", async () => {
      const result = document.getElementById("action-result");
      if (name === "delete" && !confirm("Delete this job and its files?")) return;
      try {
        await getJSON(url, { method });
        if (name === "delete") { window.location = "/"; return; }
        result.textContent = `${name}: ok`;
        await loadHistory();
        if (name === "retry") follow();
      } catch (error) {
        result.textContent = `${name} refused: ${error.message}`;
      }
    });
    act("cancel", "POST", `/v1/jobs/${jobId}/cancel`);
    act("retry", "POST", `/v1/jobs/${jobId}/retry`);
    act("delete", "DELETE", `/v1/jobs/${jobId}`);

    loadHistory().then(follow);
  }

  // -- workers --------------------------------------------------------------
  const WORKER_STATES = {
    alive: "takes jobs",
    draining: "asked to stop: claims nothing more, finishes its render or hands it back",
    stopped: "stopped and deregistered",
    stale: "not seen lately, and never said it stopped",
  };

  function workersPage() {
    const tbody = document.querySelector("#workers tbody");
    // The server's count of seconds, not this browser's clock, which may be off.
    const lastSeen = (w) => Object.assign(when(w.last_seen, true),
      { textContent: `${seconds(w.last_seen_seconds_ago)} ago` });
    const refresh = async () => {
      try {
        const data = await getJSON("/v1/workers");
        tbody.replaceChildren(...data.workers.map((w) => el("tr", { "data-worker": w.name, "data-state": w.state }, [
          el("td", { text: w.name }), el("td", { text: w.host }), el("td", { text: String(w.pid) }),
          el("td", {}, [Object.assign(badge(w.state), { title: WORKER_STATES[w.state] || "" })]), el("td", {}, [lastSeen(w)]),
          el("td", {}, w.current_job ? [el("a", { href: `/jobs/${w.current_job}` }, [el("code", { text: w.current_job.slice(0, 8) })])] : []),
          el("td", { text: String(w.jobs_done) }), el("td", { text: String(w.jobs_failed) }),
          el("td", { text: seconds(w.uptime_seconds) }),
        ])));
        stamp(`updated ${new Date().toLocaleTimeString()}`);
      } catch (error) {
        stamp(`update failed: ${error.message}`);
      }
    };
    refresh();
    setInterval(refresh, 1000);
  }

  // -- overview -------------------------------------------------------------
  function overviewPage() {
    const refresh = async () => {
      try {
        const stats = await getJSON("/v1/stats");
        for (const [status, count] of Object.entries(stats.counts)) {
          const node = document.querySelector(`[data-status="${status}"]`);
          if (node) node.textContent = String(count);
        }
        document.getElementById("queue-depth").textContent = stats.queue_depth === null ? "?" : String(stats.queue_depth);
        document.getElementById("oldest-queued").textContent = seconds(stats.oldest_queued_seconds);
        document.getElementById("last-hour").textContent = String(stats.completed_last_hour);
        const tenants = document.querySelector("#tenants tbody");
        tenants.replaceChildren(...(stats.tenants.length ? stats.tenants.map((t) => el("tr", { "data-tenant": t.tenant }, [
          el("td", { text: t.tenant }), el("td", { text: String(t.queued) }),
          el("td", {}, Object.entries(t.queued_by_priority).sort((a, b) => Number(b[0]) - Number(a[0])).map(([p, n]) => el("span", { class: "badge", text: `${p}: ${n}` }))),
          el("td", { text: String(t.running) }), el("td", { text: t.max_running === null ? "–" : String(t.max_running) }),
          el("td", { text: String(t.scheduled) }), el("td", { text: seconds(t.oldest_eligible_seconds) }),
          el("td", { text: String(t.weight) }),
        ])) : [el("tr", {}, [el("td", { colspan: "8", class: "muted", text: "nothing waits or runs" })])]));
      } catch (error) { /* the next poll tries again */ }
    };
    setInterval(refresh, 2000);
    setInterval(() => { document.getElementById("chart").src = `/overview/throughput.svg?t=${Date.now()}`; }, 15000);
  }

  // -- a batch --------------------------------------------------------------
  function batchPage(batchId, finished) {
    const result = document.getElementById("action-result");
    document.getElementById("cancel").addEventListener("click", async () => {
      try {
        const answer = await getJSON(`/v1/batches/${batchId}/cancel`, { method: "POST" });
        result.textContent = `cancel: ${answer.cancelled} cancelled, ${answer.stopping} stopping, ${answer.unchanged} already ended`;
        setTimeout(() => window.location.reload(), 1000);
      } catch (error) {
        result.textContent = `cancel refused: ${error.message}`;
      }
    });
    // The page is drawn by the server; while the batch runs, it is drawn again.
    if (!finished) setTimeout(() => window.location.reload(), 3000);
  }

  for (const node of document.querySelectorAll("time[datetime]")) showTime(node);

  return { jobsPage, jobPage, workersPage, overviewPage, batchPage };
})();

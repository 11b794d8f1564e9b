// The LUKHAS Context console: one script, no framework, no build step (processors/console.py).
//
// It reads the cluster through the worker's public HTTP API only (/v1/...). Every value from
// the API -- context ids, documents, reasons, URLs -- reaches the page as text: nodes are made
// with document.createElement and filled with append(string) / textContent, never innerHTML.
// The Content-Security-Policy the worker sends allows this file and nothing inline.
"use strict";

(function () {
  const TOKEN_KEY = "lukhas-console-token";
  const POLL_MS = 2000;
  const REQUEST_TIMEOUT_MS = 10000;
  // A read of the dead-letter queue: the worker gives it up to 25 s.
  const DLQ_READ_MS = 30000;
  const PAGE = 50;
  const HISTORY_PAGE = 100;

  // Bumped by every view change: a view's pending work (a poll, a page) stops when it moved on.
  let generation = 0;
  let timer = null;
  // What the current view must stop when another replaces it (an open stream).
  let leave = null;

  const view = () => document.getElementById("view");
  const status = (text, kind) => {
    const node = document.getElementById("status");
    node.textContent = text || "";
    node.className = kind || "";
  };

  // el("td", {class: "num"}, "text", otherNode): attributes set one by one, children as text.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function table(caption, headings, rows) {
    const head = el("tr", {}, ...headings.map((h) => el("th", { scope: "col" }, h)));
    const body = el("tbody", {}, ...rows);
    // A table wider than a phone scrolls inside its own box, reachable by the keyboard.
    return el("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": caption },
      el("table", {}, el("caption", { class: "sr-only" }, caption), el("thead", {}, head), body));
  }

  const num = (value) => el("td", { class: "num" }, value === null || value === undefined ? "—" : value);
  const when = (ms) => (ms === null || ms === undefined ? "never" : new Date(ms).toISOString());
  const contextHref = (id) => "#/context/" + encodeURIComponent(id);

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  // A request to a path of the API (relative to the console's page): GET unless
  // options.method says; options.body is sent as JSON; options.timeoutMs bounds the wait.
  // The parsed JSON, or an ApiError whose message is the problem's detail.
  async function api(path, options) {
    const opts = options || {};
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    // A worker that stops answering without closing the connection is not waited for
    // for ever: the views say so and keep what they had.
    const init = {
      headers, cache: "no-store", method: opts.method || "GET",
      // A write (a checkpoint) may take the worker's whole 30 s to be acknowledged; a read of
      // the dead-letter queue up to 25 s.
      signal: AbortSignal.timeout(opts.timeoutMs ||
        (opts.method === "POST" ? 6 * REQUEST_TIMEOUT_MS : REQUEST_TIMEOUT_MS)),
    };
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "the worker did not answer (" + e.message + ")");
    }
    const text = await response.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      let detail = body && typeof body.detail === "string" ? body.detail : text.slice(0, 300);
      if (response.status === 401) detail += " (enter the API token above)";
      throw new ApiError(response.status, response.status + ": " + detail);
    }
    return body;
  }

  // A dialog that says what an action will do and runs it only on "confirm" (Cancel has the
  // focus: the safe choice is the default one). open(text) shows it.
  function confirmation(title, confirmLabel, onConfirm) {
    const what = el("p", { id: "confirm-text" });
    const confirmButton = el("button", { type: "button", id: "confirm" }, confirmLabel);
    const cancel = el("button", { type: "button", id: "cancel" }, "Cancel");
    const dialog = el("dialog", { id: "confirm-dialog", "aria-labelledby": "confirm-title" },
      el("h2", { id: "confirm-title" }, title), what,
      el("div", { class: "search" }, confirmButton, cancel));
    cancel.addEventListener("click", () => dialog.close());
    confirmButton.addEventListener("click", () => {
      dialog.close();
      onConfirm();
    });
    const open = (text) => {
      what.textContent = text;
      dialog.showModal();
      cancel.focus();
    };
    return { dialog, open };
  }

  // ---- Cluster ------------------------------------------------------------------------------

  function renderCluster(data) {
    const workers = data.workers.map((w) => el("tr", {},
      el("td", { class: "mono" }, w.api),
      el("td", { class: w.reachable ? (w.status === "ok" ? "good" : "warn") : "error" }, w.status),
      el("td", {}, w.partitions.map((p) => p.partition).join(", ") || "—"),
      el("td", { class: w.restoring.length ? "warn" : "" }, w.restoring.join(", ") || "—"),
      el("td", {}, w.standbys.map((s) => s.partition).join(", ") || "—"),
      el("td", { class: w.error ? "error" : "muted" }, w.error || "—")));
    const verdictClass = { equal: "good", single: "muted", behind: "warn", differ: "error", unknown: "warn" };
    const partitions = data.partitions.map((p) => el("tr", {},
      num(p.partition),
      el("td", { class: p.owner ? "mono" : "error" }, p.owner || "unowned"),
      num(p.next_offset), num(p.end), num(p.lag),
      el("td", { class: "mono" }, p.digest || "—"),
      el("td", { class: verdictClass[p.digests] || "" }, p.digests),
      el("td", { class: "mono" },
        p.standbys.map((s) => s.api + " @" + s.next_offset).join("; ") || "—"),
      el("td", { class: p.restoring.length ? "warn" : "" },
        p.restoring.length ? "restoring on " + p.restoring.join(", ") : "—")));
    const down = data.workers.filter((w) => !w.reachable).length;
    const restoring = data.partitions.filter((p) => p.restoring.length).length;
    const summary = data.workers.length + " worker(s), " + data.partition_count + " partition(s)" +
      (down ? ", " + down + " not answering" : "") +
      (restoring ? ", " + restoring + " restoring" : "") +
      "; updated " + new Date().toLocaleTimeString();
    return [
      el("p", { id: "cluster-summary", class: down ? "error" : "" }, summary),
      el("h2", {}, "Workers"),
      table("Workers", ["Worker", "Status", "Serves", "Restoring", "Standbys", "Error"], workers),
      el("h2", {}, "Partitions"),
      table("Partitions",
        ["Partition", "Owner", "Next offset", "WAL end", "Lag", "Digest", "Copies' digests",
          "Standby copies", "Restore"], partitions),
    ];
  }

  function showCluster(mine) {
    const root = view();
    root.replaceChildren(el("h1", { tabindex: "-1" }, "Cluster"),
      el("p", { class: "muted" }, "As the worker serving this page sees it; refreshed every 2 s."),
      el("div", { id: "cluster" }));
    const poll = async () => {
      try {
        const data = await api("v1/cluster");
        if (mine !== generation) return;
        document.getElementById("cluster").replaceChildren(...renderCluster(data));
        status("");
      } catch (e) {
        if (mine !== generation) return;
        // The last tables stay: what was known, with why it is not newer.
        status("Cluster: " + e.message, "error");
      }
      if (mine === generation) timer = setTimeout(poll, POLL_MS);
    };
    poll();
  }

  // ---- Contexts -----------------------------------------------------------------------------

  function showContexts(mine, params) {
    const prefix = params.get("prefix");
    const input = el("input", { id: "prefix", type: "search", name: "prefix", autocomplete: "off",
      spellcheck: "false" });
    input.value = prefix || "";
    const form = el("form", { class: "search", role: "search" },
      el("label", { for: "prefix" }, "Id prefix"), input, el("button", { type: "submit" }, "Search"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      location.hash = "#/contexts?prefix=" + encodeURIComponent(input.value);
    });
    const results = el("div", { id: "results" });
    view().replaceChildren(el("h1", { tabindex: "-1" }, "Contexts"), form, results);
    if (prefix !== null) listPage(mine, prefix, null, results);
  }

  async function listPage(mine, prefix, after, results) {
    let path = "v1/contexts?limit=" + PAGE + "&prefix=" + encodeURIComponent(prefix);
    if (after !== null) path += "&after=" + encodeURIComponent(after);
    let data;
    try {
      data = await api(path);
    } catch (e) {
      if (mine === generation) results.append(el("p", { class: "error" }, "Listing: " + e.message));
      return;
    }
    if (mine !== generation) return;
    if (data.incomplete.length) {
      results.append(el("p", { class: "warn" }, "Partitions " + data.incomplete.join(", ") +
        " did not answer (restoring, unowned, or their worker is down): contexts there are " +
        "not listed."));
    }
    if (!data.contexts.length && after === null) {
      results.append(el("p", {}, "No live context has an id starting with \u201c" + prefix + "\u201d."));
      return;
    }
    const rows = data.contexts.map((c) => el("tr", {},
      el("td", {}, el("a", { href: contextHref(c.context_id) }, c.context_id)),
      num(c.version), num(c.partition), el("td", {}, when(c.expires_at_ms))));
    results.append(table(after === null ? "Contexts" : "Contexts after " + after,
      ["Context id", "Version", "Partition", "Expires"], rows));
    if (data.more) {
      const next = el("button", { type: "button" }, "Next " + PAGE);
      next.addEventListener("click", () => {
        next.remove();
        listPage(mine, prefix, data.next_after, results);
      });
      results.append(next);
    }
  }

  // ---- One context --------------------------------------------------------------------------

  function showContext(mine, id) {
    const current = el("section", { id: "current", "aria-label": "Current state" });
    const history = el("section", { id: "history", "aria-label": "History" });
    view().replaceChildren(
      el("p", {}, el("a", { href: "#/contexts?prefix=" + encodeURIComponent(id) }, "\u2190 Contexts")),
      el("h1", { tabindex: "-1" }, "Context ", el("code", { id: "context-id" }, id)),
      current, history);
    loadCurrent(mine, id, current);
    history.append(el("h2", {}, "History"));
    historyPage(mine, id, null, history);
  }

  async function loadCurrent(mine, id, section) {
    let c;
    try {
      c = await api("v1/contexts/" + encodeURIComponent(id));
    } catch (e) {
      if (mine !== generation) return;
      const text = e.status === 404
        ? "No live context has this id (never written, deleted, or expired); its history follows."
        : "Reading it: " + e.message;
      section.append(el("p", { class: e.status === 404 ? "warn" : "error" }, text));
      return;
    }
    if (mine !== generation) return;
    const facts = [["Version", c.version], ["Checksum", c.checksum], ["Expires", when(c.expires_at_ms)],
      ["Partition", c.partition], ["Offset", c.offset]];
    section.append(
      el("dl", { class: "facts" }, ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      el("h2", {}, "Document"),
      // The document is shown as JSON text: whatever it holds is never markup here.
      el("pre", { class: "doc", id: "document", tabindex: "0" }, JSON.stringify(c.doc, null, 2)));
  }

  async function historyPage(mine, id, after, section) {
    let path = "v1/contexts/" + encodeURIComponent(id) + "/history?limit=" + HISTORY_PAGE;
    if (after !== null) path += "&after=" + after;
    let h;
    try {
      h = await api(path);
    } catch (e) {
      if (mine === generation) section.append(el("p", { class: "error" }, "History: " + e.message));
      return;
    }
    if (mine !== generation) return;
    if (after === null) {
      const notes = [];
      if (h.pruned_below) notes.push("entries below offset " + h.pruned_below + " were pruned with the WAL");
      if (h.covered_from === null) notes.push("the history index has no entries yet");
      else notes.push("the index holds every record from offset " + h.covered_from);
      section.append(el("p", { class: "muted" }, "Partition " + h.partition + "; " + notes.join("; ") + "."));
      if (!h.events.length) {
        section.append(el("p", {}, "No event of this context is in the history."));
        return;
      }
    }
    const outcomeClass = { applied: "good", duplicate: "muted" };
    const rows = h.events.map((e) => el("tr", {},
      num(e.offset),
      el("td", { class: outcomeClass[e.status] || "error" }, e.status),
      num(e.version === null ? e.duplicate_of : e.version),
      el("td", {}, e.status === "duplicate" ? "a retry of version " + e.duplicate_of : e.reason || "—")));
    section.append(table("Events", ["Offset", "Outcome", "Version", "Reason"], rows));
    if (h.more) {
      const next = el("button", { type: "button" }, "Later events");
      next.addEventListener("click", () => {
        next.remove();
        historyPage(mine, id, h.events[h.events.length - 1].offset, section);
      });
      section.append(next);
    }
  }

  // ---- Live changes -------------------------------------------------------------------------

  // The change stream (GET /v1/changes, server-sent events) read with fetch, not EventSource:
  // EventSource cannot send the Authorization header. Every event's id is kept; a pause ends
  // the request, and a resume -- or a reconnect after the stream broke -- starts a new one at
  // that id (start=TOKEN), so no change is missed or shown twice.
  function showChanges(mine, params) {
    const prefix = params.get("prefix");
    const input = el("input", { id: "live-prefix", type: "search", autocomplete: "off",
      spellcheck: "false" });
    input.value = prefix || "";
    const form = el("form", { class: "search", role: "search" },
      el("label", { for: "live-prefix" }, "Id prefix"), input,
      el("button", { type: "submit" }, "Watch"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      location.hash = "#/changes?prefix=" + encodeURIComponent(input.value);
    });
    view().replaceChildren(el("h1", { tabindex: "-1" }, "Live changes"),
      el("p", { class: "muted" }, "Changes as they are folded, newest first, from the moment " +
        "you start watching. An empty prefix watches every context."), form);
    if (prefix === null) return;
    const state = el("p", { id: "stream-state", role: "status" }, "connecting\u2026");
    const toggle = el("button", { type: "button", id: "pause", "aria-pressed": "false" }, "Pause");
    const rows = el("tbody", { id: "changes" });
    view().append(el("div", { class: "search" }, toggle, state),
      el("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": "Changes" },
        el("table", {}, el("caption", { class: "sr-only" }, "Changes"),
          el("thead", {}, el("tr", {}, ...["Log time", "Context id", "Kind", "Version",
            "Document"].map((h) => el("th", { scope: "col" }, h)))), rows)));

    let lastId = null;
    let controller = null;
    let paused = false;
    let retry = null;
    const say = (text, kind) => {
      state.textContent = text;
      state.className = kind || "";
    };
    const add = (row) => {
      rows.prepend(row);
      while (rows.rows.length > 200) rows.lastChild.remove();
    };
    const onEvent = (block) => {
      let kind = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;  // a keepalive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") lastId = value;
        else if (field === "event") kind = value;
        else if (field === "data") data += value;
      }
      if (!data) return;
      const item = JSON.parse(data);
      if (kind === "gap") {
        const g = item.gap;
        add(el("tr", { class: "error" }, el("td", { colspan: "5" }, "Gap: partition " + g.partition +
          ", change offsets " + g.first_offset + " to " + g.end_offset + " (" + g.kind + "): " + g.reason)));
        return;
      }
      const doc = item.doc === null ? "\u2014" : JSON.stringify(item.doc);
      add(el("tr", {}, el("td", {}, when(item.log_time_ms)),
        el("td", {}, el("a", { href: contextHref(item.context_id) }, item.context_id)),
        el("td", {}, item.kind), num(item.version),
        el("td", { class: "mono" }, doc.length > 160 ? doc.slice(0, 160) + "\u2026" : doc)));
    };
    const connect = async () => {
      retry = null;
      controller = new AbortController();
      const start = lastId === null ? "latest" : lastId;
      const path = "v1/changes?prefix=" + encodeURIComponent(prefix) + "&start=" +
        encodeURIComponent(start);
      const headers = {};
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) headers.Authorization = "Bearer " + token;
      let why = "the stream ended";
      try {
        const response = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
        if (!response.ok) {
          const text = await response.text();
          let detail = text.slice(0, 300);
          try {
            detail = JSON.parse(text).detail || detail;
          } catch (e) { /* not a problem document: its text */ }
          throw new ApiError(response.status, response.status + ": " + detail);
        }
        say(lastId === null ? "live" : "live (resumed after the last change seen)", "good");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            onEvent(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (e) {
        if (e.name === "AbortError") return;  // paused, or the view was left
        why = e.message;
        // Refused for what was asked (a bad position, a token missing or refused): asking
        // again every 2 s would only start the same refusal again.
        if (e instanceof ApiError && e.status >= 400 && e.status < 500 &&
            e.status !== 408 && e.status !== 429) {
          say("stopped: " + why, "bad");
          return;
        }
      }
      if (mine !== generation || paused) return;
      say("reconnecting in 2 s (" + why + "); it resumes after the last change seen", "warn");
      retry = setTimeout(connect, POLL_MS);
    };
    const stop = () => {
      clearTimeout(retry);
      if (controller) controller.abort();
    };
    toggle.addEventListener("click", () => {
      paused = !paused;
      toggle.setAttribute("aria-pressed", String(paused));
      toggle.textContent = paused ? "Resume" : "Pause";
      if (paused) {
        stop();
        say("paused; Resume shows every change since, none missed");
      } else {
        say("connecting\u2026");
        connect();
      }
    });
    leave = stop;
    connect();
  }

  // ---- Checkpoints --------------------------------------------------------------------------

  function showCheckpoints(mine) {
    const box = el("div", { id: "checkpoints" });
    const refresh = el("button", { type: "button", id: "refresh" }, "Refresh");
    const controls = el("div", { id: "checkpoint-controls" });
    view().replaceChildren(el("h1", { tabindex: "-1" }, "Checkpoints"),
      el("p", { class: "muted" }, "The checkpoints the workers hold, newest first: each " +
        "partition's manifest, the workers that hold it, and whether their digests agree."),
      controls, el("div", { class: "search" }, refresh), box);
    // The list (null when it could not be read: the status line says why).
    const load = async () => {
      let data;
      try {
        data = await api("v1/checkpoints");
      } catch (e) {
        if (mine === generation) status("Checkpoints: " + e.message, "error");
        return null;
      }
      if (mine !== generation) return null;
      box.replaceChildren(...renderCheckpoints(data));
      return data;
    };
    refresh.addEventListener("click", load);
    load().then((data) => {
      if (mine === generation && data) controls.replaceChildren(...startControls(mine, data, load));
    });
  }

  // Starting a checkpoint: only on a worker with a write token (else it says it is
  // read-only), and only after a dialog that says what it will do.
  function startControls(mine, data, load) {
    if (!data.writable) {
      return [el("p", { id: "read-only", class: "muted" }, "Read-only: this worker takes no " +
        "writes through its API (start it with --api-write-token-file to start checkpoints " +
        "here, or run `lukhas checkpoint`).")];
    }
    const id = el("input", { id: "checkpoint-id", autocomplete: "off", spellcheck: "false",
      placeholder: "ck-<UTC time>-<4 hex>" });
    const start = el("button", { type: "button", id: "start-checkpoint" }, "Start a checkpoint\u2026");
    start.addEventListener("click", async () => {
      const now = await load();  // the partitions as they are now, not as when the page opened
      if (!now || mine !== generation) return;
      if (!now.partition_count) {
        status("The worker has no partitions yet (it is joining its group): try again soon.", "warn");
        return;
      }
      const name = id.value.trim() ? "checkpoint \u201c" + id.value.trim() + "\u201d" :
        "a new checkpoint (its id made from the time)";
      confirm.open("This appends a barrier of " + name + " to each of the " +
        now.partition_count + " WAL partitions. Every worker folding a partition then " +
        "checkpoints its store at that offset: a copy on its disk and a manifest on the " +
        "checkpoints topic. No context changes.");
    });
    const confirm = confirmation("Start a checkpoint?", "Start checkpoint", async () => {
      const body = id.value.trim() ? { checkpoint_id: id.value.trim() } : {};
      let started;
      try {
        started = await api("v1/checkpoints", { method: "POST", body });
      } catch (e) {
        if (mine === generation) status("Starting a checkpoint: " + e.message, "error");
        return;
      }
      if (mine !== generation) return;
      status("Checkpoint " + started.checkpoint_id + " started: barriers at " +
        Object.entries(started.barriers).map(([p, o]) => p + ":" + o).join(", ") +
        "; it is listed once the workers took it.", "good");
      id.value = "";
      // The workers take it as they fold the barriers: look again a few times.
      for (let i = 0; i < 15 && mine === generation; i++) {
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        const now = await load();
        const listed = now && now.checkpoints.find((c) => c.checkpoint_id === started.checkpoint_id);
        if (listed && listed.partitions.length === now.partition_count) break;
      }
    });
    return [el("div", { class: "search" }, el("label", { for: "checkpoint-id" }, "Id (optional)"),
      id, start), confirm.dialog];
  }

  function renderCheckpoints(data) {
    const parts = [];
    for (const w of data.unreachable) {
      parts.push(el("p", { class: "warn" }, "Worker " + w.api + " did not answer (" + w.error +
        "): the checkpoints it holds are not listed."));
    }
    if (!data.checkpoints.length) {
      parts.push(el("p", { id: "no-checkpoints" }, "No worker holds a checkpoint."));
      return parts;
    }
    for (const c of data.checkpoints) {
      const rows = c.partitions.map((p) => el("tr", {},
        num(p.partition), num(p.next_offset), num(p.records), num(p.documents),
        el("td", { class: "mono" }, p.digest),
        el("td", { class: { equal: "good", single: "muted" }[p.digests] || "error" }, p.digests),
        el("td", { class: "mono" }, p.held_by.join(", "))));
      const missing = data.partition_count - c.partitions.length;
      parts.push(el("section", { class: "checkpoint", "aria-label": c.checkpoint_id },
        el("h2", {}, el("code", {}, c.checkpoint_id), " ",
          el("span", { class: "muted" }, when(c.created_at_ms))),
        missing > 0 ? el("p", { class: "warn" }, missing + " partition(s) have no manifest " +
          "of it on any worker that answered.") : null,
        table("Checkpoint " + c.checkpoint_id, ["Partition", "Next offset", "Records",
          "Documents", "Digest", "Digests", "Held by"], rows)));
    }
    return parts;
  }

  // ---- Dead letters -------------------------------------------------------------------------

  const letterHref = (position) => "#/dead-letter/" + encodeURIComponent(position);

  function showDeadLetters(mine, params) {
    const reason = el("input", { id: "dlq-reason", type: "search", autocomplete: "off",
      spellcheck: "false", placeholder: "e.g. UnknownSchemaError" });
    const context = el("input", { id: "dlq-context", type: "search", autocomplete: "off",
      spellcheck: "false" });
    const partition = el("input", { id: "dlq-partition", type: "number", min: "0", step: "1",
      inputmode: "numeric", class: "narrow" });
    const filters = { reason, context_id: context, partition };
    for (const [name, input] of Object.entries(filters)) input.value = params.get(name) || "";
    const form = el("form", { class: "search", role: "search" },
      el("label", { for: "dlq-reason" }, "Reason contains"), reason,
      el("label", { for: "dlq-context" }, "Context id"), context,
      el("label", { for: "dlq-partition" }, "Partition"), partition,
      el("button", { type: "submit" }, "Filter"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const query = new URLSearchParams();
      for (const [name, input] of Object.entries(filters)) if (input.value) query.set(name, input.value);
      location.hash = "#/dead-letters?" + query.toString();
    });
    const box = el("div", { id: "dead-letters" });
    view().replaceChildren(el("h1", { tabindex: "-1" }, "Dead letters"),
      el("p", { class: "muted" }, "WAL records the fold could not read as events (they do not " +
        "decode, their key is not their context, or their event id was used for other bytes), " +
        "partition by partition, oldest first in each. Open one to decode it, dry-run it, and " +
        "re-drive it."),
      form, box);
    const query = new URLSearchParams({ limit: String(PAGE) });
    for (const name of Object.keys(filters)) if (params.get(name)) query.set(name, params.get(name));
    (async () => {
      let data;
      try {
        data = await api("v1/dead-letters?" + query.toString(), { timeoutMs: DLQ_READ_MS });
      } catch (e) {
        if (mine === generation) box.append(el("p", { class: "error" }, "Dead letters: " + e.message));
        return;
      }
      if (mine !== generation) return;
      if (!data.dead_letters.length) {
        box.append(el("p", { id: "no-dead-letters" }, "No dead letter" +
          (query.size > 1 ? " matches." : ": the fold read every record.")));
        return;
      }
      const rows = data.dead_letters.map((d) => el("tr", {},
        el("td", {}, el("a", { href: letterHref(d.position) }, d.position)),
        el("td", {}, d.log_time),
        el("td", { class: "mono" }, d.context_id === null ? "(no key)" : d.context_id),
        el("td", { class: "mono" }, d.source),
        el("td", {}, d.kind || d.event || "—"),
        el("td", { class: "error" }, d.reason)));
      box.append(table("Dead letters", ["DLQ position", "Logged", "Key", "From WAL", "Event",
        "Reason"], rows));
      if (data.dead_letters.length >= data.limit) {
        box.append(el("p", { class: "muted" }, "The first " + data.limit + " shown (the lowest " +
          "partitions first): filter by partition, reason or context to see others (or " +
          "`lukhas dlq list --since`)."));
      }
    })();
  }

  function showDeadLetter(mine, position) {
    const facts = el("section", { id: "letter", "aria-label": "Dead letter" });
    const redrive = el("section", { id: "redrive", "aria-label": "Re-drive" });
    view().replaceChildren(
      el("p", {}, el("a", { href: "#/dead-letters" }, "\u2190 Dead letters")),
      el("h1", { tabindex: "-1" }, "Dead letter ", el("code", {}, position)),
      facts, redrive);
    (async () => {
      let d;
      try {
        d = await api("v1/dead-letters/" + position.split(":").map(encodeURIComponent).join("/"),
          { timeoutMs: DLQ_READ_MS });
      } catch (e) {
        if (mine !== generation) return;
        facts.append(el("p", { class: e.status === 404 ? "warn" : "error" }, e.status === 404
          ? "No dead letter at " + position + " (pruned, or never there)." : "Reading it: " + e.message));
        return;
      }
      if (mine !== generation) return;
      const rows = [["Reason", d.reason], ["From WAL position", d.source], ["Logged", d.log_time],
        ["Key", d.key === null ? "(none)" : d.key], ["Size", d.value_bytes + " bytes"],
        ["First bytes (hex)", d.value_head || "—"]];
      facts.append(
        el("dl", { class: "facts" }, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
        el("h2", {}, "Headers"),
        table("Headers", ["Header", "Value"], Object.entries(d.headers).map(([k, v]) =>
          el("tr", {}, el("td", { class: "mono" }, k), el("td", { class: "mono" }, v)))),
        el("h2", {}, "Event"),
        d.decoded
          // Shown as JSON text: whatever the event holds is never markup here.
          ? el("pre", { class: "doc", id: "decoded", tabindex: "0" }, JSON.stringify(d.decoded, null, 2))
          : el("p", { id: "undecodable", class: "error" }, "Does not decode: " + d.undecodable));
      redrive.append(...redriveControls(mine, d));
    })();
  }

  // Re-driving appends the letter's original bytes to the WAL again, under its key: first a
  // dry run (what the fold would do now; reads only), then -- on a worker with a write
  // token, and after a dialog that says what it will do -- the append and the fold's outcome.
  function redriveControls(mine, d) {
    const verdict = el("p", { id: "dry-run-result", "aria-live": "polite" });
    const dry = el("button", { type: "button", id: "dry-run" }, "Dry run");
    const go = el("button", { type: "button", id: "redrive-button", disabled: "" }, "Re-drive\u2026");
    const done = el("div", { id: "redrive-result", "aria-live": "polite" });
    let now = null;
    const confirm = confirmation("Re-drive this dead letter?", "Re-drive", async () => {
      go.disabled = true;
      let report;
      try {
        report = await api("v1/dead-letters/redrive", { method: "POST", body: { position: d.position } });
      } catch (e) {
        if (mine === generation) status("Re-drive: " + e.message, "error");
        go.disabled = false;
        return;
      }
      if (mine !== generation) return;
      const entry = report.records[0];
      if (entry.skipped) {
        done.replaceChildren(el("p", { class: "warn" }, "Not appended: " + entry.skipped));
        return;
      }
      const o = entry.outcome;
      const said = o.status + (o.version !== null ? " (version " + o.version + ")" : "") +
        (o.duplicate_of !== null ? ", a duplicate of offset " + o.duplicate_of : "") +
        (o.reason ? ": " + o.reason : "");
      done.replaceChildren(el("p", { class: o.status === "applied" ? "good" : "warn" },
        "Appended at WAL position " + entry.wal_position + "; the fold: " + said + "."),
        d.context_id !== null && o.status !== "dead_lettered"
          ? el("p", {}, el("a", { href: contextHref(d.context_id) }, "Open context " + d.context_id))
          : null);
    });
    dry.addEventListener("click", async () => {
      verdict.textContent = "Asking the owner of its context\u2026";
      let report;
      try {
        report = await api("v1/dead-letters/dry-run", { method: "POST", body: { position: d.position } });
      } catch (e) {
        if (mine === generation) verdict.textContent = "Dry run: " + e.message;
        return;
      }
      if (mine !== generation) return;
      const entry = report.records[0];
      now = entry.skipped ? null : entry.now;
      verdict.className = now && now.status === "applied" ? "good" : "warn";
      verdict.textContent = entry.skipped ? "It cannot be re-driven: " + entry.skipped
        : "Re-driven now, the fold would: " + now.status + (now.reason ? " (" + now.reason + ")" : "") + ".";
      go.disabled = !d.writable || entry.skipped !== undefined;
    });
    go.addEventListener("click", () => {
      confirm.open("This appends the dead letter's original " + d.value_bytes + " bytes to the WAL " +
        "again, under its key \u201c" + d.key + "\u201d. The dry run said the fold would: " +
        (now ? now.status : "(no dry run)") + ". Its event id is the original one: if it was " +
        "re-driven before, the fold journals a duplicate and changes nothing; if it still cannot " +
        "be read, it is dead-lettered again.");
    });
    const parts = [el("h2", {}, "Re-drive"), el("div", { class: "search" }, dry, go), verdict, done,
      confirm.dialog];
    if (!d.writable) {
      parts.splice(2, 0, el("p", { id: "read-only", class: "muted" }, "Read-only: this worker " +
        "takes no writes through its API (start it with --api-write-token-file to re-drive " +
        "here, or run `lukhas dlq redrive`). The dry run still answers."));
    }
    return parts;
  }

  // ---- Metrics ------------------------------------------------------------------------------

  const mib = (bytes) => (bytes / 1048576).toFixed(1) + " MiB";
  // One style per worker: a colour and a dash pattern, so two workers' lines differ without
  // colour too. A worker keeps its style while the page is open.
  const STYLES = [["#0550ae", ""], ["#bc4c00", "6 3"], ["#1a7f37", "2 3"], ["#8250df", "8 3 2 3"],
    ["#57606a", "1 2"], ["#0a7d8c", "10 4"]];
  const style = (index) => STYLES[index % STYLES.length];

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  // A small plot of the last values, one line per worker (series: [{values, index, legend,
  // kind}], a value null where there is none then), its scale from 0 to the largest value or
  // the highest of `ceilings` (budget lines, dashed), whichever is higher. `now` is the
  // figure in the caption; each worker's legend entry says its own, as text.
  function plot(id, title, unit, series, now, ceilings) {
    const W = 300;
    const H = 80;
    const known = series.flatMap((s) => s.values.filter((v) => v !== null));
    const top = Math.max(...(ceilings || []), ...known, 1e-9);
    const y = (v) => H - (v / top) * (H - 4) - 2;
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, width: "100%", height: H,
      role: "img", "aria-label": title, preserveAspectRatio: "none", class: "plot" });
    chart.append(svg("rect", { x: 0, y: 0, width: W, height: H, fill: "#f6f8fa" }));
    for (const ceiling of ceilings || []) {
      chart.append(svg("line", { x1: 0, x2: W, y1: y(ceiling), y2: y(ceiling), stroke: "#a40e26",
        "stroke-dasharray": "4 3", "vector-effect": "non-scaling-stroke" }));
    }
    for (const s of series) {
      const x = (i) => (s.values.length < 2 ? 0 : (i * W) / (s.values.length - 1));
      const points = s.values.map((v, i) => (v === null ? null : x(i).toFixed(1) + "," + y(v).toFixed(1)))
        .filter((p) => p !== null);
      if (!points.length) continue;
      const [colour, dash] = style(s.index);
      chart.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: colour,
        "stroke-width": 2, "stroke-dasharray": dash || "none", "vector-effect": "non-scaling-stroke" }));
      // the newest value, seen even while it is the only one
      const [cx, cy] = points[points.length - 1].split(",");
      chart.append(svg("circle", { cx, cy, r: 3, fill: colour }));
    }
    const legend = el("ul", { class: "legend" }, ...series.map((s) => {
      const [colour, dash] = style(s.index);
      const swatch = svg("svg", { width: 24, height: 8, "aria-hidden": "true", class: "swatch" });
      swatch.append(svg("path", { d: "M0 4H24", stroke: colour, "stroke-width": 2,
        "stroke-dasharray": dash || "none" }));
      return el("li", {}, swatch, el("span", { class: "mono" }, s.api), " ",
        el("span", { class: s.kind || "" }, s.legend));
    }));
    return el("figure", { id, class: "metric" }, el("figcaption", {},
      el("strong", {}, title), " ", el("span", { class: "now" }, now === null ? "no value yet" : now),
      el("span", { class: "muted" }, " " + unit)), chart, legend);
  }

  function showMetrics(mine) {
    const box = el("div", { id: "metrics" });
    view().replaceChildren(el("h1", { tabindex: "-1" }, "Metrics"),
      el("p", { class: "muted" }, "Every worker's figures (/v1/cluster/metrics), read every 2 s; " +
        "the last two minutes since this page opened, one line per worker."), box);
    const history = [];
    const styles = new Map(); // api -> style index: the lowest no worker shown now has
    const poll = async () => {
      try {
        const data = await api("v1/cluster/metrics");
        if (mine !== generation) return;
        const reading = new Map();
        for (const api of [...styles.keys()]) {
          if (!data.workers.some((w) => w.api === api)) styles.delete(api);  // gone: its style free
        }
        for (const w of data.workers) {
          if (!styles.has(w.api)) {
            const used = new Set(styles.values());
            let index = 0;
            while (used.has(index)) index++;
            styles.set(w.api, index);
          }
          reading.set(w.api, w);
        }
        history.push(reading);
        if (history.length > 61) history.shift();
        box.replaceChildren(...renderMetrics(history, data.workers, styles));
        status("");
      } catch (e) {
        if (mine !== generation) return;
        status("Metrics: " + e.message, "error");
      }
      if (mine === generation) timer = setTimeout(poll, POLL_MS);
    };
    poll();
  }

  // The last value that is not null (null when there is none).
  const lastKnown = (values) => {
    const known = values.filter((v) => v !== null);
    return known.length ? known[known.length - 1] : null;
  };

  // history: a Map api -> that worker's entry per reading; workers: the last reading's.
  function renderMetrics(history, workers, styles) {
    const answered = (reading, api) => {
      const w = reading.get(api);
      return w && w.reachable ? w : null;
    };
    const steps = history.length - 1;
    // Per worker: its fold rate and read latency between two readings (its own clock's
    // times), and its resident memory at each. The cluster's: the rates' sum, the mean of
    // every read, the highest resident.
    const sum = { rate: new Array(steps).fill(null), seconds: new Array(steps).fill(0),
      reads: new Array(steps).fill(0) };
    const per = workers.map((w) => {
      const rate = [];
      const latency = [];
      for (let i = 1; i < history.length; i++) {
        const a = answered(history[i - 1], w.api);
        const b = answered(history[i], w.api);
        // A counter that went down is a worker that restarted in between: no figure there.
        const restarted = a && b && (b.folded < a.folded || b.reads < a.reads ||
          b.read_seconds < a.read_seconds);
        const seconds = a && b && !restarted ? (b.at_ms - a.at_ms) / 1000 : 0;
        const r = seconds > 0 ? (b.folded - a.folded) / seconds : null;
        const reads = seconds > 0 ? b.reads - a.reads : 0;
        rate.push(r);
        latency.push(reads > 0 ? ((b.read_seconds - a.read_seconds) / reads) * 1000 : null);
        if (r !== null) sum.rate[i - 1] = (sum.rate[i - 1] || 0) + r;
        if (reads > 0) {
          sum.seconds[i - 1] += b.read_seconds - a.read_seconds;
          sum.reads[i - 1] += reads;
        }
      }
      const memory = history.map((h) => (answered(h, w.api) ? answered(h, w.api).memory_resident_bytes : null));
      return { w, index: styles.get(w.api), rate, latency, memory };
    });
    const latency = sum.reads.map((n, i) => (n > 0 ? (sum.seconds[i] / n) * 1000 : null));
    const highest = history.map((h) => {
      const resident = workers.map((w) => answered(h, w.api)).filter((w) => w && w.memory_budget_bytes !== null)
        .map((w) => w.memory_resident_bytes);
      return resident.length ? Math.max(...resident) : null;
    });
    const entry = (p, values, format) => {
      // (why it is unreachable is said once, above the plots)
      if (!p.w.reachable) return { api: p.w.api, index: p.index, values, kind: "error", legend: "unreachable" };
      const last = lastKnown(values);
      return { api: p.w.api, index: p.index, values, legend: last === null ? "no value yet" : format(last) };
    };
    const one = workers.length === 1;
    const rate = (v) => v.toFixed(1);
    const ms = (v) => v.toFixed(2);
    const down = workers.filter((w) => !w.reachable);
    const parts = [el("p", { id: "metrics-summary", class: down.length ? "warn" : "" },
      workers.length + " worker(s)" + (down.length ? ", " + down.length + " not answering" : ""))];
    if (down.length) {
      parts.push(el("ul", { id: "metrics-unreachable" }, ...down.map((w) => el("li", {},
        el("span", { class: "mono" }, w.api), " ", el("span", { class: "error" },
          "unreachable: " + w.error)))));
    }
    if (history.length < 2) parts.push(el("p", { class: "muted" }, "Rates need two readings\u2026"));
    const nowRate = lastKnown(sum.rate);
    const nowLatency = lastKnown(latency);
    parts.push(
      plot("fold-rate", "Fold rate", "records/s" + (one ? "" : ", all workers together"),
        per.map((p) => entry(p, p.rate, rate)), nowRate === null ? null : rate(nowRate)),
      plot("read-latency", "Read latency", "ms, mean of the reads in each 2 s" +
        (one ? "" : ", all workers together"), per.map((p) => entry(p, p.latency, ms)),
        nowLatency === null ? null : ms(nowLatency)));
    const budgets = [...new Set(workers.filter((w) => w.reachable && w.memory_budget_bytes !== null)
      .map((w) => w.memory_budget_bytes))];
    if (!budgets.length) {
      parts.push(el("p", { id: "memory", class: "muted" }, one
        ? "Memory: this worker has no memory budget (--memory-budget), so it reports no memory figures."
        : "Memory: no memory budget (--memory-budget) on any worker that answered, so none reports memory figures."));
      return parts;
    }
    const budgeted = per.filter((p) => !p.w.reachable || p.w.memory_budget_bytes !== null);
    const unbudgeted = per.filter((p) => p.w.reachable && p.w.memory_budget_bytes === null);
    const of = budgets.length === 1 ? "a budget of " + mib(budgets[0]) : "each worker's budget";
    const nowMemory = lastKnown(highest);
    const memory = budgeted.map((p) => {
      const e = entry(p, p.memory, mib);
      if (p.w.reachable && budgets.length > 1) e.legend += " of " + mib(p.w.memory_budget_bytes);
      return e;
    });
    memory.push(...unbudgeted.map((p) => ({ api: p.w.api, index: p.index, values: [], kind: "muted",
      legend: "no memory budget" })));
    parts.push(plot("memory", "Memory", (one ? "resident" : "resident (the highest of any worker)") +
      ", of " + of + " (dashed)", memory, nowMemory === null ? null : mib(nowMemory), budgets));
    return parts;
  }

  // ---- Routing and the token ----------------------------------------------------------------

  function route(moveFocus) {
    generation += 1;
    clearTimeout(timer);
    if (leave) leave();
    leave = null;
    status("");
    const mine = generation;
    const hash = location.hash || "#/cluster";
    const [path, query] = hash.slice(1).split(/\?(.*)/s);
    const params = new URLSearchParams(query || "");
    let name = "cluster";
    if (path.startsWith("/context/")) {
      name = "contexts";
      showContext(mine, decodeURIComponent(path.slice("/context/".length)));
    } else if (path === "/contexts") {
      name = "contexts";
      showContexts(mine, params);
    } else if (path === "/checkpoints") {
      name = "checkpoints";
      showCheckpoints(mine);
    } else if (path === "/dead-letters") {
      name = "dead-letters";
      showDeadLetters(mine, params);
    } else if (path.startsWith("/dead-letter/")) {
      name = "dead-letters";
      showDeadLetter(mine, decodeURIComponent(path.slice("/dead-letter/".length)));
    } else if (path === "/metrics") {
      name = "metrics";
      showMetrics(mine);
    } else if (path === "/changes") {
      name = "changes";
      showChanges(mine, params);
    } else {
      showCluster(mine);
    }
    for (const link of document.querySelectorAll("nav a")) {
      if (link.dataset.view === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    // After a navigation, keyboard and screen-reader users start at the new view's heading.
    if (moveFocus) view().querySelector("h1").focus();
  }

  function setUpToken() {
    const form = document.getElementById("token-form");
    const input = document.getElementById("token");
    const state = document.getElementById("token-state");
    const show = () => {
      state.textContent = sessionStorage.getItem(TOKEN_KEY) ? "token set (this tab only)" : "no token";
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
      else sessionStorage.removeItem(TOKEN_KEY);
      input.value = "";
      show();
      route(false);
    });
    show();
  }

  document.addEventListener("DOMContentLoaded", () => {
    setUpToken();
    window.addEventListener("hashchange", () => route(true));
    route(false);
  });
})();

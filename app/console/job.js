// One job: progress, live curves, hyperparameters, checkpoints, events, and cancel / pause / resume.
// The curves are seeded from GET …/metrics, then fed by the event stream (GET …/events?stream=true), read
// with fetch() and resumed with Last-Event-ID after a drop (sse.js). The job itself is polled for its
// status and progress, which the worker updates between events.

import { api, download, modelPath } from "./api.js";
import { MetricChart, keysOf } from "./chart.js";
import { age, cellText, duration, facts, h, number, progressBar, replace, statusBadge, table } from "./dom.js";
import { actionButton } from "./page.js";
import { follow } from "./sse.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const REFRESH_MS = 2000;
const MAX_EVENT_ROWS = 500;

export function jobPage(main, ctx, jobId) {
  const base = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
  const series = new Map();  // step → point, merged as the server merges its series
  const lossChart = new MetricChart("loss-chart", "No loss logged yet.",
    (points) => keysOf(points).filter((k) => k === "train_loss" || k === "eval_loss"));
  const evalChart = new MetricChart("eval-chart", "No evaluation yet.",
    // Scores only: evaluation timings (eval_model_preparation_time…) are not a curve worth watching.
    (points) => keysOf(points).filter((k) => k.startsWith("eval_") && k !== "eval_loss" && !/_(time|runtime)$/.test(k)));
  ctx.signal.addEventListener("abort", () => { lossChart.destroy(); evalChart.destroy(); });

  const header = h("div"), summary = h("div"), progress = h("div", { id: "job-progress" });
  const latest = h("div"), hyperparameters = h("div"), checkpoints = h("div", { id: "checkpoints" });
  const streamState = h("span", { id: "stream-state", class: "badge" }, "connecting");
  const events = h("tbody", { id: "events" });
  const panel = (title, ...body) => h("div", { class: "panel" }, h("h2", {}, title), ...body);
  main.append(header, h("div", { class: "panel" }, progress),
    h("div", { class: "columns" }, panel("Loss", lossChart.element), panel("Evaluation", evalChart.element)),
    h("div", { class: "columns" }, panel("Job", summary), panel("Latest metrics", latest)),
    h("div", { class: "columns" }, panel("Hyperparameters (resolved)", hyperparameters),
      panel("Checkpoints", checkpoints)),
    h("h2", {}, "Events ", streamState),
    h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {},
      ["#", "Time", "Level", "Message"].map((t) => h("th", {}, t)))), events)));

  const redraw = () => {
    const points = [...series.values()].sort((a, b) => a.step - b.step);
    lossChart.update(points);
    evalChart.update(points);
  };
  const merge = (data) => {
    const step = Number(data.step || 0);
    const point = series.get(step) || { step };
    for (const [k, v] of Object.entries(data)) if (typeof v === "number" && k !== "step") point[k] = v;
    series.set(step, point);
  };

  let job = null;
  const refresh = async () => {
    job = await api(base, { signal: ctx.signal });
    renderJob(ctx, job, { header, summary, progress, latest, hyperparameters }, refresh);
    replace(checkpoints, checkpointTable(ctx,
      (await api(`${base}/checkpoints?limit=100`, { signal: ctx.signal })).data, job.task));
    return !TERMINAL.has(job.status);  // a finished job needs no more polling
  };
  ctx.poll(REFRESH_MS, refresh);

  ctx.guard(async () => {
    for (const point of (await api(`${base}/metrics`, { signal: ctx.signal })).data) merge(point);
    redraw();
    await follow(`${base}/events?stream=true`, {
      signal: ctx.signal,
      isLast: (event) => TERMINAL.has(event.data?.status),
      onState: (state) => {
        streamState.textContent = state;
        streamState.className = `badge status-${state}`;
        if (state === "reconnecting") {
          streamState.dataset.reconnects = String(Number(streamState.dataset.reconnects || 0) + 1);
          streamState.title = `reconnected ${streamState.dataset.reconnects} times, resuming after the last event seen`;
        }
      },
      onEvent: (event) => {
        events.prepend(eventRow(event));
        while (events.rows.length > MAX_EVENT_ROWS) events.lastChild.remove();
        if (event.type === "metrics" && event.data) { merge(event.data); redraw(); }
        if (event.data?.status && event.data.status !== job?.status) ctx.guard(refresh);
      },
    });
  });
}

function renderJob(ctx, job, parts, refresh) {
  const control = (verb, allowed) => actionButton(verb[0].toUpperCase() + verb.slice(1), ctx, async () => {
    await api(`/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/${verb}`, { method: "POST", signal: ctx.signal });
    await refresh();
  }, { id: `job-${verb}`, disabled: !allowed, class: verb === "cancel" ? "danger" : "" });
  const model = job.fine_tuned_model;
  replace(parts.header, h("h1", {}, "Job ", h("code", {}, job.id), h("span", { id: "job-status" }, statusBadge(job.status))),
    h("div", { class: "actions" },
      control("cancel", ["queued", "running", "paused"].includes(job.status)),
      control("pause", ["queued", "running"].includes(job.status)),
      control("resume", job.status === "paused"),
      model ? h("a", { class: "button", id: "open-playground", href: `#/models/${encodeURIComponent(model)}` },
        "Open in playground") : null,
      model ? actionButton("Download model", ctx, () => download(`${modelPath(model)}/download`, archiveName(model)))
        : null));
  replace(parts.summary, facts([
    ["Model", job.model], ["Base model", job.base_model !== job.model ? job.base_model : null], ["Task", job.task],
    ["Column mapping", Object.entries(job.column_mapping || {}).map(([r, c]) => `${r} ← ${c}`).join(", ")],
    ["Training file", h("a", { href: `#/files/${job.training_file}` }, job.training_file)],
    ["Validation file", job.validation_file && h("a", { href: `#/files/${job.validation_file}` }, job.validation_file)],
    ["Fine-tuned model", model && h("code", {}, model)],
    ["Created", age(job.created_at)], ["Finished", job.finished_at && age(job.finished_at)],
    ["Attempt", job.attempt], ["Seed", job.seed],
    ["Error", job.error && h("span", { class: "error-text" }, `${job.error.code}: ${job.error.message}`)],
    ["Before → after", job.evaluation?.summary], ["Note", job.evaluation?.note],
  ]));
  const p = job.progress || {};
  const percent = job.status === "succeeded" ? 100 : p.percent || 0;
  replace(parts.progress, progressBar(percent), h("div", { class: "progress-line" },
    h("strong", { id: "progress-percent" }, `${number(percent, 3)}%`),
    h("span", {}, `step ${p.step ?? 0}${p.total_steps ? ` / ${p.total_steps}` : ""}`),
    h("span", {}, `epoch ${number(p.epoch ?? 0, 3)}`),
    h("span", {}, `ETA ${TERMINAL.has(job.status) ? "–" : duration(p.eta_seconds)}`),
    h("span", {}, `${number(p.samples_per_second ?? 0, 3)} samples/s`),
    p.tokens_per_second ? h("span", {}, `${number(p.tokens_per_second, 3)} tokens/s`) : null,
    job.estimated_finish && !TERMINAL.has(job.status)
      ? h("span", {}, `finishes about ${new Date(job.estimated_finish * 1000).toLocaleTimeString()}`) : null));
  const metrics = Object.entries(job.metrics || {}).filter(([, v]) => typeof v === "number");
  replace(parts.latest, metrics.length ? facts(metrics.map(([k, v]) => [k, number(v)]))
    : h("p", { class: "muted" }, "None yet."));
  replace(parts.hyperparameters, table([["Name", ([k]) => k], ["Value", ([, v]) => cellText(v)]],
    Object.entries(job.hyperparameters || {}), { id: "hyperparameters" }));
}

function checkpointTable(ctx, checkpoints, task) {
  if (!checkpoints.length) return h("p", { class: "muted" }, "No checkpoint yet.");
  return table([
    ["Step", (c) => c.step_number],
    ["Metrics", (c) => Object.entries(c.metrics || {}).filter(([k, v]) => k !== "step" && typeof v === "number")
      .map(([k, v]) => `${k}=${number(v, 3)}`).join(", ")],
    ["Saved", (c) => age(c.created_at)],
    ["", (c) => {
      const id = c.fine_tuned_model_checkpoint;
      return h("span", { class: "actions" },
        h("a", { href: `#/models/${encodeURIComponent(id)}?task=${encodeURIComponent(task)}` }, "Playground"),
        actionButton("Download", ctx, () => download(`${modelPath(id)}/download`, archiveName(id)), { class: "link" }));
    }],
  ], checkpoints, { id: "checkpoint-table" });
}

function eventRow(event) {
  return h("tr", { dataset: { seq: event.seq }, class: `level-${event.level}` },
    h("td", {}, event.seq), h("td", {}, new Date(event.created_at * 1000).toLocaleTimeString()),
    h("td", {}, event.level), h("td", {}, event.message));
}

const archiveName = (modelId) => `${modelId.replace(/[/:]/g, "_")}.tar.gz`;

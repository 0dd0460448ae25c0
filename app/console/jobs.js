// Jobs: the project's jobs, refreshed every few seconds while the page is open.

import { api } from "./api.js";
import { age, h, number, progressBar, replace, statusBadge, table } from "./dom.js";

const REFRESH_MS = 3000;

export function jobsPage(main, ctx) {
  const list = h("div", { id: "job-list" }, h("p", { class: "muted" }, "Loading…"));
  main.append(
    h("h1", {}, "Fine-tuning jobs"),
    h("div", { class: "actions" }, h("a", { class: "button primary", href: "#/jobs/new", id: "new-job" }, "New job…")),
    list);
  ctx.poll(REFRESH_MS, async () => {
    const page = await api("/v1/fine_tuning/jobs?limit=100", { signal: ctx.signal });
    replace(list, page.data.length ? table([
      ["Job", (j) => h("a", { href: `#/jobs/${j.id}` }, h("code", {}, j.id))],
      ["Status", (j) => statusBadge(j.status)],
      ["Model", (j) => j.fine_tuned_model || j.model],
      ["Task", (j) => j.task],
      ["Progress", (j) => progressCell(j)],
      ["Created", (j) => age(j.created_at)],
    ], page.data, { id: "jobs-table" }) : h("p", { class: "muted" }, "No jobs yet."));
  });
}

function progressCell(job) {
  const p = job.progress;
  if (!p || (!p.step && job.status !== "succeeded")) return h("span", { class: "muted" }, "–");
  const percent = job.status === "succeeded" ? 100 : p.percent;
  return [progressBar(percent), ` ${number(percent, 3)}%`];
}

// Files: upload with progress, the list, and one file's scan: validation report, preview, detected task.

import { api, uploadFile } from "./api.js";
import { age, append, bytes, cellText, facts, h, number, replace, statusBadge, table } from "./dom.js";
import { actionButton, flash } from "./page.js";

const PREVIEW_ROWS = 20;

export function filesPage(main, ctx) {
  const list = h("div", { id: "file-list" }, h("p", { class: "muted" }, "Loading…"));
  main.append(h("h1", {}, "Files"), uploadPanel(ctx), h("h2", {}, "Uploaded files"), list);
  ctx.guard(async () => {
    const page = await api("/v1/files?limit=100", { signal: ctx.signal });
    replace(list, page.data.length ? table([
      ["File", (f) => h("a", { href: `#/files/${f.id}` }, f.filename)],
      ["Status", (f) => statusBadge(f.status)],
      ["Task", (f) => f.detected_task || h("span", { class: "muted" }, "none detected")],
      ["Rows", (f) => number(f.rows)],
      ["Format", (f) => f.format],
      ["Size", (f) => bytes(f.bytes)],
      ["Uploaded", (f) => age(f.created_at)],
    ], page.data) : h("p", { class: "muted" }, "No files yet: upload a CSV, TSV, JSONL or Parquet file."));
  });
}

function uploadPanel(ctx) {
  const input = h("input", { type: "file", id: "upload-input", accept: ".csv,.tsv,.jsonl,.json,.parquet,.txt" });
  const bar = h("progress", { id: "upload-progress", max: 100, value: 0, hidden: true });
  const label = h("span", { class: "muted", id: "upload-label" });
  const button = actionButton("Upload", ctx, async () => {
    const file = input.files[0];
    if (!file) { flash("Choose a file first."); return; }
    bar.hidden = false;
    const uploaded = await uploadFile(file, (fraction) => {
      bar.value = Math.round(fraction * 100);
      label.textContent = fraction < 1 ? `${bar.value}% of ${bytes(file.size)}` : "Scanning…";
    }).finally(() => { bar.hidden = true; label.textContent = ""; });
    location.hash = `#/files/${uploaded.id}`;
  }, { class: "primary", id: "upload-button" });
  return h("div", { class: "panel" },
    h("div", { class: "actions" }, input, button, label), bar,
    h("p", { class: "muted" }, "CSV, TSV, JSONL or Parquet, recognised by content. Each file is scanned once: ",
      "its problems are listed with line and column, and its task is detected from its columns."));
}

export function fileDetailPage(main, ctx, fileId) {
  ctx.guard(async () => {
    const file = await api(`/v1/files/${encodeURIComponent(fileId)}`, { signal: ctx.signal });
    const preview = h("div", { id: "preview" }, h("p", { class: "muted" }, "Loading…"));
    const train = h("a", { class: "button primary", id: "train-on-file",
                           href: `#/jobs/new?file=${encodeURIComponent(file.id)}` }, "Train on this file…");
    const remove = actionButton("Delete", ctx, async () => {
      if (!confirm(`Delete ${file.filename}?`)) return;
      await api(`/v1/files/${encodeURIComponent(file.id)}`, { method: "DELETE", signal: ctx.signal });
      location.hash = "#/files";
    }, { class: "danger" });
    append(main, [
      h("h1", {}, file.filename, statusBadge(file.status)),
      h("div", { class: "actions" }, file.status === "processed" ? train : null, remove),
      h("div", { class: "columns" },
        h("div", { class: "panel" }, h("h2", {}, "File"), facts([
          ["Id", h("code", {}, file.id)], ["Format", file.format], ["Rows", number(file.rows)],
          ["Columns", file.columns.join(", ")], ["Size", bytes(file.bytes)], ["Uploaded", age(file.created_at)],
          ["SHA-256", h("code", {}, file.sha256)], ["Problem", file.status_details],
        ])),
        h("div", { class: "panel" }, h("h2", {}, "Detected task"), detected(file))),
      h("h2", {}, "Validation"), validationReport(file.validation),
      h("h2", {}, `Preview (first ${PREVIEW_ROWS} rows, as training reads them)`), preview]);
    const rows = await api(`/v1/files/${encodeURIComponent(file.id)}/preview?limit=${PREVIEW_ROWS}`,
                           { signal: ctx.signal });
    replace(preview, h("div", { class: "scroll" }, table(
      [["#", (r) => r.index], ...rows.columns.map((c) => [c, (r) => cellText(r.row[c])])],
      rows.rows.map((row, index) => ({ index: index + 1, row })), { id: "preview-table" })));
  });
}

function detected(file) {
  if (!file.detected_task) {
    return h("p", { class: "muted" }, "No task fits these columns; name the task and the column mapping ",
      "when you create the job.");
  }
  const mapping = file.detected_column_mapping || {};
  return [
    h("p", {}, h("strong", { id: "detected-task" }, file.detected_task)),
    table([["Role", ([role]) => role], ["Column", ([, column]) => h("code", {}, column)]],
      Object.entries(mapping), { id: "detected-mapping" }),
    h("p", { class: "muted" }, "You can change the mapping in the new-job form."),
  ];
}

function validationReport(validation) {
  const errors = validation?.errors || [], warnings = validation?.warnings || [];
  const problems = [...errors.map((p) => ({ ...p, kind: "error" })), ...warnings.map((p) => ({ ...p, kind: "warning" }))];
  const report = table([
    ["Kind", (p) => h("span", { class: `badge status-${p.kind === "error" ? "error" : "paused"}` }, p.kind)],
    ["Line", (p) => p.line ?? ""], ["Column", (p) => p.column ?? ""], ["Message", (p) => p.message],
  ], problems, { id: "validation-table" });
  if (!problems.length) {
    report.tBodies[0].append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No problems found.")));
  }
  const more = validation?.errors_not_listed ? h("p", { class: "muted" },
    `${validation.errors_not_listed} more errors not listed.`) : null;
  return [h("div", { class: "scroll" }, report), more];
}

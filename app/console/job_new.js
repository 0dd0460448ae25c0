// A new job: pick the model and files, check the task and column mapping, estimate, then create.
// The estimate comes first (same checks as a create, nothing created); any change to the form asks for
// a new one before "Create" is allowed again.

import { api } from "./api.js";
import { duration, facts, h, number, replace, table } from "./dom.js";
import { actionButton, flash } from "./page.js";

// Column roles of each task (docs/api.md, "Tasks"); the file's detected mapping may add others
// (a preference file's input / preferred_output / non_preferred_output).
const ROLES = {
  "text-classification": ["text", "text_pair", "label"],
  "multi-label-classification": ["text", "text_pair", "label"],
  "text-regression": ["text", "text_pair", "label"],
  "token-classification": ["tokens", "tags"],
  "question-answering": ["question", "context", "answers"],
  "summarization": ["source", "target"],
  "text-generation": ["prompt", "completion", "messages"],
};
const HYPERPARAMETERS = [
  ["n_epochs", "Epochs", "int"], ["batch_size", "Batch size", "int"], ["learning_rate", "Learning rate", "float"],
  ["warmup_ratio", "Warm-up ratio", "float"], ["beta", "DPO beta", "float"],
];

function idempotencyKey() {  // crypto.randomUUID needs a secure context; a plain-http deployment has none
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function newJobPage(main, ctx) {
  ctx.guard(async () => {
    const [models, files] = await Promise.all([api("/v1/models", { signal: ctx.signal }),
                                               api("/v1/files?limit=100&purpose=fine-tune", { signal: ctx.signal })]);
    render(main, ctx, models.data, files.data.filter((f) => f.status === "processed"));
  });
}

function render(main, ctx, models, files) {
  const trainable = models.filter((m) => m.kind === "fine-tuned" || m.fine_tunable);
  const field = (tag, id, param, attrs = {}, ...children) =>
    h(tag, { id, ...attrs, dataset: { param, ...attrs.dataset } }, ...children);
  const model = field("select", "job-model", "model", {}, trainable.map((m) =>
    h("option", { value: m.id, selected: m.id === ctx.params.get("model") },
      m.kind === "base" ? m.id : `${m.id} (train on)`)));
  const fileOptions = (none) => [none ? h("option", { value: "" }, none) : null,
    ...files.map((f) => h("option", { value: f.id }, `${f.filename} — ${f.rows} rows (${f.id})`))];
  const training = field("select", "job-training-file", "training_file", {}, fileOptions(null));
  training.value = ctx.params.get("file") || files[0]?.id || "";
  const validation = field("select", "job-validation-file", "validation_file", {}, fileOptions("(hold out 5% of the training rows)"));
  const method = field("select", "job-method", "method.type", {},
    h("option", { value: "supervised" }, "supervised"), h("option", { value: "dpo" }, "DPO (preference pairs)"));
  const task = field("select", "job-task", "task", {}, h("option", { value: "auto" }, "auto (detected)"),
    Object.keys(ROLES).map((t) => h("option", { value: t }, t)));
  const mapping = h("div", { id: "mapping-editor", class: "full" });
  const suffix = field("input", "job-suffix", "suffix", { placeholder: "optional, goes into the model id", maxlength: 64 });
  const hyper = HYPERPARAMETERS.map(([name, label, kind]) => [label, field("input", `hp-${name}`, `hyperparameters.${name}`,
    { type: "number", step: kind === "int" ? "1" : "any", min: 0, placeholder: "auto", dataset: { kind, name } })]);
  const lora = field("input", "job-lora", "adapter", { type: "checkbox" });
  const loraRank = field("input", "job-lora-r", "adapter.r", { type: "number", min: 1, max: 512, placeholder: "16" });
  const estimateBox = h("div", { id: "estimate" });

  const fileById = (id) => files.find((f) => f.id === id);
  let selections = {};
  const renderMapping = () => {
    const file = fileById(training.value);
    if (!file) { replace(mapping, h("p", { class: "muted" }, "Upload a file first.")); return; }
    const detected = file.detected_column_mapping || {};
    const chosenTask = task.value === "auto" ? file.detected_task : task.value;
    const roles = [...new Set([...(ROLES[chosenTask] || []), ...(task.value === "auto" ? Object.keys(detected) : [])])];
    replace(mapping, h("h2", {}, "Column mapping ",
      h("span", { class: "muted" }, `task: ${chosenTask || "none detected: choose one"}`)),
      roles.length ? table([["Role", (r) => r], ["Column", (r) => {
        const select = h("select", { id: `mapping-${r}`, dataset: { param: `column_mapping.${r}`, role: r } },
          h("option", { value: "" }, "(not used)"), file.columns.map((c) => h("option", { value: c }, c)));
        select.value = selections[r] ?? detected[r] ?? "";
        select.addEventListener("change", () => { selections[r] = select.value; });
        return select;
      }]], roles, { id: "mapping-table" }) : null);
    if (detected.preferred_output && task.value === "auto") method.value = "dpo";
  };
  training.addEventListener("change", () => { selections = {}; renderMapping(); });
  task.addEventListener("change", renderMapping);
  renderMapping();

  const body = () => {
    const hyperparameters = {};
    for (const [, input] of hyper) {
      if (input.value === "" || (input.dataset.name === "beta" && method.value !== "dpo")) continue;
      hyperparameters[input.dataset.name] = input.dataset.kind === "int" ? parseInt(input.value, 10) : Number(input.value);
    }
    const columnMapping = Object.fromEntries([...mapping.querySelectorAll("select[data-role]")]
      .filter((s) => s.value).map((s) => [s.dataset.role, s.value]));
    const request = { model: model.value, training_file: training.value, task: task.value,
                      method: { type: method.value, [method.value]: { hyperparameters } } };
    if (validation.value) request.validation_file = validation.value;
    if (suffix.value) request.suffix = suffix.value;
    if (Object.keys(columnMapping).length) request.column_mapping = columnMapping;
    if (lora.checked) request.adapter = { type: "lora", ...(loraRank.value ? { r: parseInt(loraRank.value, 10) } : {}) };
    return request;
  };

  let estimated = null;  // the body the shown estimate is for
  const create = actionButton("Create job", ctx, async () => {
    const job = await api("/v1/fine_tuning/jobs", { method: "POST", body: estimated.body,
                                                    headers: { "Idempotency-Key": estimated.key }, signal: ctx.signal });
    location.hash = `#/jobs/${job.id}`;
  }, { class: "primary", id: "create-job", disabled: true });
  const refuse = (error) => {
    const input = error.param && [...main.querySelectorAll("[data-param]")].find((el) =>
      error.param === el.dataset.param || error.param.endsWith(`.${el.dataset.param}`));
    input?.classList.add("invalid");
    throw error;
  };
  const estimate = actionButton("Estimate", ctx, async () => {
    main.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
    const request = body();
    const answer = await api("/v1/fine_tuning/jobs/estimate", { method: "POST", body: request, signal: ctx.signal })
      .catch(refuse);
    estimated = { body: request, key: idempotencyKey() };
    replace(estimateBox, estimateView(answer));
    create.disabled = false;
  }, { id: "estimate-job" });
  // Changing anything voids the estimate: "Create" waits for a new one.
  const voidEstimate = () => { estimated = null; create.disabled = true; };

  if (!files.length) flash("No processed file yet: upload a dataset on the Files page first.", "info");
  main.append(h("h1", {}, "New fine-tuning job"), h("form", { class: "grid", id: "new-job-form",
    onsubmit: (e) => e.preventDefault(), oninput: voidEstimate, onchange: voidEstimate },
    h("label", { for: "job-model" }, "Model"), model,
    h("label", { for: "job-training-file" }, "Training file"), training,
    h("label", { for: "job-validation-file" }, "Validation file"), validation,
    h("label", { for: "job-method" }, "Method"), method,
    h("label", { for: "job-task" }, "Task"), task,
    mapping,
    h("label", { for: "job-suffix" }, "Suffix"), suffix,
    hyper.map(([label, input]) => [h("label", { for: input.id }, label), input]),
    h("label", { for: "job-lora" }, "LoRA adapter"), h("span", {}, lora, " rank ", loraRank),
    h("div", { class: "full actions" }, estimate, create)), estimateBox);
}

function estimateView(e) {
  const seconds = Object.entries(e.estimated_seconds || {});
  return [
    h("h2", {}, "Estimate"),
    facts([["Task", e.task], ["Steps", number(e.steps)], ["Examples per epoch", number(e.examples_per_epoch)],
      ["Trained tokens", number(e.trained_tokens)], ["Parameters", number(e.parameters)],
      ["Training FLOPs", e.training_flops?.toExponential(2)],
      ["Hyperparameters", Object.entries(e.hyperparameters || {}).filter(([, v]) => v !== null && typeof v !== "object")
        .map(([k, v]) => `${k}=${v}`).join(", ")]]),
    table([["Device", ([device]) => device], ["Time", ([, s]) => duration(s)],
      ["Basis", ([device]) => h("span", { class: "muted" }, (e.basis || {})[device] || "")]], seconds,
      { id: "estimate-table" }),
  ];
}

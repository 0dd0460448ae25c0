// Models: the base models on offer and the project's fine-tuned models.

import { api } from "./api.js";
import { age, bytes, h, replace, table } from "./dom.js";

export function modelsPage(main, ctx) {
  const list = h("div", { id: "model-list" }, h("p", { class: "muted" }, "Loading…"));
  main.append(h("h1", {}, "Models"), list);
  ctx.guard(async () => {
    const models = (await api("/v1/models", { signal: ctx.signal })).data;
    const fineTuned = models.filter((m) => m.kind === "fine-tuned"), base = models.filter((m) => m.kind === "base");
    replace(list,
      h("h2", {}, "Fine-tuned models"),
      fineTuned.length ? table([
        ["Model", (m) => h("a", { href: `#/models/${encodeURIComponent(m.id)}` }, h("code", {}, m.id))],
        ["Task", (m) => m.task],
        ["Trained on from", (m) => m.parent || h("span", { class: "muted" }, m.base_model)],
        ["Job", (m) => m.job_id && h("a", { href: `#/jobs/${m.job_id}` }, m.job_id)],
        ["Size", (m) => bytes(m.bytes)],
        ["Created", (m) => age(m.created)],
      ], fineTuned, { id: "fine-tuned-models" }) : h("p", { class: "muted" }, "None yet: a job that succeeds adds one."),
      h("h2", {}, "Base models"),
      table([
        ["Model", (m) => h("code", {}, m.id)],
        ["Architecture", (m) => m.model_type],
        ["Fine-tunable", (m) => (m.fine_tunable
          ? h("a", { href: `#/jobs/new?model=${encodeURIComponent(m.id)}` }, "Fine-tune…")
          : h("span", { class: "muted" }, m.problem || "no"))],
      ], base, { id: "base-models" }));
  });
}

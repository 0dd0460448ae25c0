// A model's playground: a form chosen by its task. Predictions use the Hugging Face wire format
// (POST /v1/models/{model}/predict); chat streams from POST /v1/chat/completions (stream: true).

import { api, modelPath, request } from "./api.js";
import { append, h, number, replace, table } from "./dom.js";
import { actionButton } from "./page.js";
import { readEvents } from "./sse.js";

const FORMS = {
  "text-classification": classification, "multi-label-classification": classification,
  "text-regression": classification, "token-classification": entities, "question-answering": questionAnswering,
  "summarization": summarization, "text-generation": generation,
};

export function playgroundPage(main, ctx, modelId) {
  ctx.guard(async () => {
    let model;
    try {
      model = await api(modelPath(modelId), { signal: ctx.signal });
    } catch (error) {
      // Checkpoints are not listed as models; the job page links them with their task.
      if (error.status !== 404 || !ctx.params.get("task")) throw error;
      model = { id: modelId, kind: "checkpoint", task: ctx.params.get("task") };
    }
    main.append(h("h1", {}, "Playground ", h("code", {}, model.id)));
    if (model.kind === "base") {
      main.append(h("p", {}, "Base models do not answer predictions. ",
        h("a", { href: `#/jobs/new?model=${encodeURIComponent(model.id)}` }, "Fine-tune it"), " first."));
      return;
    }
    const form = FORMS[model.task];
    append(main, [h("p", { class: "muted" }, `Task: ${model.task}`),
      form ? form(ctx, model) : h("p", {}, `No playground for the task ${model.task}.`)]);
  });
}

const predict = (ctx, model, inputs, parameters = {}) =>
  api(`${modelPath(model.id)}/predict`, { method: "POST", body: { inputs, parameters }, signal: ctx.signal });
const single = (answer) => (Array.isArray(answer) && Array.isArray(answer[0]) ? answer[0] : answer);
const textarea = (id, placeholder, rows = 4) => h("textarea", { id, placeholder, rows });

function classification(ctx, model) {
  const text = textarea("pg-text", "A text to classify");
  const pair = h("input", { id: "pg-text-pair", placeholder: "optional second text (text pair)", size: 60 });
  const topK = h("input", { id: "pg-top-k", type: "number", min: 0, placeholder: "all", size: 6 });
  const result = h("div", { id: "pg-result" });
  const run = actionButton("Predict", ctx, async () => {
    const input = pair.value ? { text: text.value, text_pair: pair.value } : text.value;
    const answer = single(await predict(ctx, model, input, topK.value ? { top_k: Number(topK.value) } : {}));
    replace(result, table([["Label", (s) => s.label],
      ["Score", (s) => [h("progress", { max: 1, value: Math.max(0, Math.min(1, s.score)) }), ` ${number(s.score, 4)}`]]],
    answer, { id: "pg-scores", class: "scores" }));
  }, { class: "primary", id: "pg-predict" });
  return [text, h("div", { class: "actions" }, pair, h("label", {}, "top k ", topK), run), result];
}

function entities(ctx, model) {
  const text = textarea("pg-text", "A text to tag");
  const result = h("div", { id: "pg-result" });
  const run = actionButton("Find entities", ctx, async () => {
    const source = text.value;
    const spans = single(await predict(ctx, model, source)).slice().sort((a, b) => a.start - b.start);
    const pieces = [];
    let at = 0;
    for (const span of spans) {
      if (span.start < at) continue;  // overlapping spans: keep the first
      pieces.push(source.slice(at, span.start),
        h("mark", { title: `${span.entity_group} ${number(span.score, 3)}` }, source.slice(span.start, span.end),
          h("span", { class: "tag" }, span.entity_group)));
      at = span.end;
    }
    pieces.push(source.slice(at));
    replace(result, h("div", { class: "highlighted", id: "pg-highlighted" }, pieces),
      table([["Entity", (s) => s.entity_group], ["Text", (s) => s.word], ["Score", (s) => number(s.score, 4)],
        ["Characters", (s) => `${s.start}–${s.end}`]], spans));
  }, { class: "primary", id: "pg-predict" });
  return [text, h("div", { class: "actions" }, run), result];
}

function questionAnswering(ctx, model) {
  const question = h("input", { id: "pg-question", placeholder: "Question", size: 80 });
  const context = textarea("pg-context", "Context: the text that holds the answer", 6);
  const result = h("div", { id: "pg-result" });
  const run = actionButton("Answer", ctx, async () => {
    const source = context.value;
    const answer = await predict(ctx, model, { question: question.value, context: source });
    const best = Array.isArray(answer) ? answer[0] : answer;
    replace(result, h("p", {}, h("strong", {}, best.answer || "(no answer)"), ` — score ${number(best.score, 4)}`),
      h("div", { class: "highlighted", id: "pg-highlighted" }, source.slice(0, best.start),
        best.end > best.start ? h("mark", {}, source.slice(best.start, best.end)) : null, source.slice(best.end)));
  }, { class: "primary", id: "pg-predict" });
  return [question, context, h("div", { class: "actions" }, run), result];
}

function summarization(ctx, model) {
  const text = textarea("pg-text", "A text to summarise", 6);
  const result = h("div", { id: "pg-result" });
  const run = actionButton("Summarise", ctx, async () => {
    const [answer] = await predict(ctx, model, text.value);
    replace(result, h("div", { class: "answer" }, answer.summary_text));
  }, { class: "primary", id: "pg-predict" });
  return [text, h("div", { class: "actions" }, run), result];
}

function generation(ctx, model) {
  const pane = h("div");
  const tabs = [["Chat", () => chat(ctx, model)], ["Complete", () => completion(ctx, model)]];
  const buttons = tabs.map(([label, build]) => h("button", { type: "button", id: `pg-tab-${label.toLowerCase()}`,
    onclick: (event) => {
      buttons.forEach((b) => b.classList.toggle("active", b === event.currentTarget));
      replace(pane, build());
    } }, label));
  buttons[0].click();
  return [h("div", { class: "tabs" }, buttons), pane];
}

function sampling() {
  const maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: 1, max: 4096, value: 64, size: 6 });
  const temperature = h("input", { id: "pg-temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0, size: 5 });
  return { maxTokens, temperature, controls: [h("label", {}, "max tokens ", maxTokens),
    h("label", {}, "temperature ", temperature)] };
}

function completion(ctx, model) {
  const prompt = textarea("pg-prompt", "A prompt to continue");
  const { maxTokens, temperature, controls } = sampling();
  const result = h("div", { id: "pg-result" });
  const run = actionButton("Generate", ctx, async () => {
    const [answer] = await predict(ctx, model, prompt.value,
      { max_new_tokens: Number(maxTokens.value), temperature: Number(temperature.value) });
    replace(result, h("div", { class: "answer" }, h("span", { class: "muted" }, prompt.value), answer.generated_text));
  }, { class: "primary", id: "pg-predict" });
  return [prompt, h("div", { class: "actions" }, run, controls), result];
}

function chat(ctx, model) {
  const messages = [];
  const log = h("div", { class: "chat", id: "pg-chat" });
  const system = h("input", { id: "pg-system", placeholder: "optional system message", size: 80 });
  const input = textarea("pg-message", "Your message", 3);
  const { maxTokens, temperature, controls } = sampling();
  let streaming = null;  // the AbortController of the answer being streamed
  const stop = h("button", { type: "button", id: "pg-stop", disabled: true,
                             onclick: () => streaming?.abort() }, "Stop");
  const send = actionButton("Send", ctx, async () => {
    if (!input.value.trim()) return;
    messages.push({ role: "user", content: input.value });
    log.append(h("div", { class: "message user" }, input.value));
    input.value = "";
    const bubble = h("div", { class: "message assistant" });
    log.append(bubble);
    streaming = new AbortController();
    ctx.signal.addEventListener("abort", () => streaming?.abort(), { once: true });
    stop.disabled = false;
    try {
      const response = await request("/v1/chat/completions", { method: "POST", signal: streaming.signal, body: {
        model: model.id, stream: true, max_tokens: Number(maxTokens.value), temperature: Number(temperature.value),
        messages: [...(system.value ? [{ role: "system", content: system.value }] : []), ...messages] } });
      for await (const event of readEvents(response)) {
        if (event.data === "[DONE]") break;
        const delta = JSON.parse(event.data).choices?.[0]?.delta?.content;
        if (delta) bubble.textContent += delta;
      }
    } catch (error) {
      if (error.name !== "AbortError") { bubble.remove(); messages.pop(); throw error; }
    } finally {
      stop.disabled = true;
      streaming = null;
    }
    messages.push({ role: "assistant", content: bubble.textContent });
  }, { class: "primary", id: "pg-send" });
  return [system, log, input, h("div", { class: "actions" }, send, stop, controls)];
}

// The console's entry point: sign-in, navigation and the hash router. Routes live in the URL's hash
// (#/jobs/ftjob-…), which the server never sees; the key never appears in a URL.

import { api, session } from "./api.js";
import { h, replace } from "./dom.js";
import { fileDetailPage, filesPage } from "./files.js";
import { jobPage } from "./job.js";
import { newJobPage } from "./job_new.js";
import { jobsPage } from "./jobs.js";
import { modelsPage } from "./models.js";
import { playgroundPage } from "./playground.js";
import { PageContext, flash } from "./page.js";

const ROUTES = [
  [/^\/files$/, filesPage],
  [/^\/files\/([^/]+)$/, fileDetailPage],
  [/^\/jobs$/, jobsPage],
  [/^\/jobs\/new$/, newJobPage],
  [/^\/jobs\/([^/]+)$/, jobPage],
  [/^\/models$/, modelsPage],
  [/^\/models\/(.+)$/, playgroundPage],
];

const main = document.getElementById("main");
let current = null;

function route() {
  current?.close();
  flash(null);
  if (!session.key) { signInPage(); return; }
  document.getElementById("nav").hidden = false;
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", path.startsWith(`/${a.dataset.section}`));
  }
  for (const [pattern, page] of ROUTES) {
    const match = pattern.exec(path);
    if (match) {
      current = new PageContext(params);
      replace(main);
      page(main, current, ...match.slice(1).map(decodeURIComponent));
      return;
    }
  }
  replace(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs")));
}

function signInPage(reason) {
  document.getElementById("nav").hidden = true;
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", spellcheck: "false",
                             placeholder: "sk-ft-…", required: true });
  const problem = h("p", { class: "error-text", id: "sign-in-error" }, reason || "");
  const form = h("form", { class: "signin", id: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key of your project. It stays in this browser tab only ",
      "(session storage) and is sent as an Authorization header; closing the tab forgets it."),
    h("label", { for: "api-key" }, "API key"), input, problem,
    h("button", { type: "submit", class: "primary" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    session.signIn(input.value);
    try {
      await api("/v1/models");  // any key scope may list models: proves the key without side effects
    } catch (error) {
      session.signOut();
      replace(problem, error.status === 401 ? "This key was refused: check it, or ask an admin for a new one."
                                            : error.message);
      return;
    }
    if (!location.hash || location.hash === "#/") location.hash = "#/jobs";
    else route();
  });
  replace(main, form);
  input.focus();
}

document.getElementById("sign-out").addEventListener("click", () => {
  session.signOut();
  current?.close();
  location.hash = "";
  signInPage();
});

window.addEventListener("console:unauthorized", () => {
  session.signOut();
  current?.close();
  signInPage("The API refused the key (revoked or expired?). Sign in again.");
});
window.addEventListener("hashchange", route);
route();

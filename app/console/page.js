// What every page shares: the flash bar for errors, and a context that stops a page's polls, streams
// and pending calls when the user leaves it.

import { h, replace } from "./dom.js";

const flashBar = () => document.getElementById("flash");

/** Shows an error (an ApiError names the field to change) or a notice above the page. */
export function flash(messageOrError, kind = "error") {
  const bar = flashBar();
  if (!messageOrError) { bar.hidden = true; return; }
  const error = messageOrError instanceof Error ? messageOrError : null;
  const text = error ? error.message : String(messageOrError);
  replace(bar, error?.param ? h("strong", {}, `${error.param}: `) : null, text);
  bar.className = `flash ${kind === "error" ? "" : "info"}`;
  bar.hidden = false;
}

export const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

export class PageContext {
  constructor(params = {}) {
    this.controller = new AbortController();
    this.params = params;  // the route's query string, as URLSearchParams
  }

  get signal() { return this.controller.signal; }
  get closed() { return this.signal.aborted; }

  /** Runs an async action; its error shows in the flash bar, unless the page was left meanwhile. */
  async guard(action) {
    try {
      return await action();
    } catch (error) {
      if (!this.closed && error.name !== "AbortError") flash(error);
      return undefined;
    }
  }

  /** Calls `action` now and every `ms` until the page is left or `action` answers false. A hidden tab
   *  skips its turns: nobody is looking. */
  poll(ms, action) {
    (async () => {
      let failing = false;
      while (!this.closed) {
        if (!document.hidden) {
          try {
            const again = await action();
            if (failing) flash(null);  // the error it showed is over
            failing = false;
            if (again === false) return;
          } catch (error) {
            if (this.closed || error.name === "AbortError") return;
            failing = true;
            flash(error);
          }
        }
        await sleep(ms, this.signal);
      }
    })();
  }

  close() { this.controller.abort(); }
}

/** A button that runs an async action once at a time (disabled meanwhile), errors in the flash bar. */
export function actionButton(label, ctx, action, attrs = {}) {
  const button = h("button", { type: "button", ...attrs }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    flash(null);
    try { await ctx.guard(action); } finally { button.disabled = false; }
  });
  return button;
}

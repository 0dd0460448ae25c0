// Server-Sent Events over fetch(). EventSource cannot send an Authorization header, so streams are read
// from a fetch() body and parsed here, as the SSE specification (HTML §9.2) parses them.

import { request } from "./api.js";

/** Yields `{id, event, data}` for each event of a text/event-stream Response. `id` is the last id seen
 *  (the stream's `lastEventId`), as EventSource keeps it. */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", data = [], event = "", lastId = null;
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // A '\r' ending the chunk may be half of a "\r\n" (the server's separator): wait for what follows.
      const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
      const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
      buffer = lines.pop() + buffer.slice(cut);  // an unfinished line waits for the next chunk
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield { id: lastId, event: event || "message", data: data.join("\n") };
          data = []; event = "";
          continue;
        }
        if (line.startsWith(":")) continue;  // a comment: the server's keep-alive ping
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "event") event = value;
        else if (field === "id" && !value.includes("\0")) lastId = value;
      }
    }
  } finally {
    // A reader left early (the page moved on) closes the connection rather than leave it open.
    reader.cancel().catch(() => {});
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

/** Follows a resumable event stream (a job's events): on a dropped connection it reconnects with
 *  `Last-Event-ID: <the last id seen>`, so the server replays exactly what was missed, backing off up to
 *  15 s. Stops when `isLast(event)` says the stream's last event came, on a 4xx other than 429, or when
 *  `signal` aborts. `onState` hears "live", "reconnecting" or "ended". */
export async function follow(path, { onEvent, onState = () => {}, isLast = () => false, signal }) {
  let lastId = null, failures = 0;
  while (!signal?.aborted) {
    let finished = false, received = 0;
    try {
      const headers = lastId === null ? {} : { "Last-Event-ID": lastId };
      const response = await request(path, { headers: { Accept: "text/event-stream", ...headers }, signal });
      onState("live");
      for await (const message of readEvents(response)) {
        if (message.id !== null) lastId = message.id;
        failures = 0;
        received++;
        const parsed = JSON.parse(message.data);
        onEvent(parsed);
        if (isLast(parsed)) finished = true;
      }
      // The server ends the stream after the job's last event, or at once when there is nothing left to
      // replay; a stream that ends otherwise was cut, and is resumed.
      if (finished || received === 0) { onState("ended"); return; }
    } catch (error) {
      if (signal?.aborted) return;
      if (error.status && error.status !== 429 && error.status < 500) { onState("ended", error); throw error; }
      failures++;
      onState("reconnecting", error);
      await sleep(error.retryAfter ? error.retryAfter * 1000 : Math.min(15_000, 500 * 2 ** failures), signal);
      continue;
    }
    failures++;
    onState("reconnecting");
    await sleep(Math.min(15_000, 500 * 2 ** failures), signal);
  }
}

// The JavaScript client (service/web/static/client/genstream.js) in Node, with the npm
// `eventsource` package, against a real genstream. tests/test_js_client.py starts it, the
// faulty proxy in front of it (tests/proxy.py) and a control server, then runs one test of
// this file by name:
//   GENSTREAM_URL          genstream itself
//   GENSTREAM_PROXY_URL    the same through the proxy (cuts streams, 502 while down, ...)
//   GENSTREAM_CONTROL_URL  POST /faults {field: value} sets the proxy's faults; GET /seen
//                          what went through it; POST /restart stops genstream, waits for
//                          the proxy to answer streams 502 twice, starts it again
// Every test ends by comparing what the client delivered with /events: each id once, in order.
import assert from "node:assert/strict";
import { test } from "node:test";

import { EventSource } from "eventsource";

import { createClient, GenerationError } from "../../service/web/static/client/genstream.js";

const DIRECT = process.env.GENSTREAM_URL;
const PROXY = process.env.GENSTREAM_PROXY_URL;
const CONTROL = process.env.GENSTREAM_CONTROL_URL;
const TERMINAL = new Set(["generation.completed", "generation.failed", "generation.cancelled"]);
// Short backoffs, so that the tests see several reopens in a few seconds.
const FAST = { reopenBaseMs: 100, reopenMaxMs: 400, pollIntervalMs: 200, submitRetryBaseMs: 50 };

const direct = createClient({ baseUrl: DIRECT, EventSource, ...FAST });

async function control(method, path, body) {
  const response = await fetch(CONTROL + path, {
    method,
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

async function newProject() {
  return (await direct.request("POST", "/api/projects", {})).id;
}

async function stored(projectId, after) {
  const events = [];
  await direct.replay(projectId, after, (event) => events.push(event));
  return events;
}

async function lastId(projectId) {
  return (await direct.request("GET", `/api/projects/${projectId}`)).last_event_id;
}

// Resolves when `check()` holds, polled every 20 ms, or fails after `ms`.
async function until(what, check, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

// Iterate the stream until `count` generations have ended (or time runs out).
async function collect(iterator, ends, { onEvent = () => {}, ms = 30_000 } = {}) {
  const got = [];
  let ended = 0;
  const timer = setTimeout(() => iterator.return(), ms);
  for await (const event of iterator) {
    got.push(event);
    await onEvent(event, got);
    if (TERMINAL.has(event.type) && (ended += 1) === ends) break;
  }
  clearTimeout(timer);
  return got;
}

function assertExactlyOnce(got, expected) {
  const ids = got.map((e) => e.id);
  const repeated = ids.length - new Set(ids).size;
  assert.equal(repeated, 0, `${repeated} events delivered twice`);
  assert.deepEqual(ids, expected.map((e) => e.id));
  assert.deepEqual(got, expected);
}

test("generate routes each event of the generation to its callbacks, once", async () => {
  const projectId = await newProject();
  const seen = { created: [], stages: [], deltas: "", files: [], events: [] };
  const run = await direct.generate(projectId, "a todo api", {
    onMessageCreated: (message) => seen.created.push(message.role),
    onStage: (event) => seen.stages.push(`${event.stage}:${event.status}`),
    onDelta: (delta) => {
      seen.deltas += delta;
    },
    onFile: (event) => seen.files.push(event.type),
    onEvent: (event) => seen.events.push(event),
  });
  assert.match(run.id, /^gen_/);
  assert.equal(run.created, true);
  const completed = await run.done;
  assert.equal(completed.type, "generation.completed");
  const expected = (await stored(projectId, 0)).filter((e) => e.generation_id === run.id);
  assertExactlyOnce(seen.events, expected);
  assert.deepEqual(seen.created, ["user", "assistant"]);
  assert.ok(seen.stages.includes("generating:active"), seen.stages);
  assert.ok(seen.files.includes("file.completed"));
  const final = (await direct.request("GET", `/api/projects/${projectId}/messages`)).messages.at(-1);
  assert.ok(final.content.length > 0 && seen.deltas.length > 0);
});

test("stream delivers every event once through a proxy that cuts connections", async () => {
  const projectId = await newProject();
  const start = await lastId(projectId);
  // And a broken proxy that sends the reconnects Last-Event-ID: 0: the client drops
  // what it already has.
  await control("POST", "/faults", { cut_stream_after: 2500, cut_streams: 6, replay_from_zero: true });
  const client = createClient({ baseUrl: PROXY, EventSource, ...FAST });
  const iterator = client.stream(projectId, { lastEventId: start });
  const got = collect(iterator, 2);
  await direct.generate(projectId, "a todo api");
  // The second generation once the first has ended (one at a time per project).
  await until("the first generation's end", async () => (await stored(projectId, start)).some((e) => TERMINAL.has(e.type)));
  await direct.generate(projectId, "a landing page");
  const events = await got;
  assert.ok((await control("GET", "/seen")).cut >= 2, "the proxy cut streams");
  assertExactlyOnce(events, await stored(projectId, start));
});

test("stream delivers every event once across a restart that answers 502s", async () => {
  const projectId = await newProject();
  const states = [];
  const client = createClient({ baseUrl: PROXY, EventSource, ...FAST });
  // No cursor: the stream says where it starts (stream.cursor), and the client keeps it.
  const start = await lastId(projectId);
  const opened = new Promise((resolve) => {
    states.resolveLive = resolve;
  });
  const iterator = client.stream(projectId, {
    onState: (state) => {
      states.push(state);
      if (state === "live") states.resolveLive();
    },
  });
  let restarted = false;
  let second = null;
  const got = collect(iterator, 2, {
    onEvent: async (event) => {
      if (!restarted && event.type === "file.delta") {
        restarted = true;
        // In the middle of the first generation: it ends as interrupted.
        await control("POST", "/restart");
        second = direct.generate(projectId, "a landing page");
      }
    },
  });
  await opened;
  await direct.generate(projectId, "a todo api");
  const events = await got;
  await second;
  assert.ok(restarted);
  assert.ok((await control("GET", "/seen")).bad_gateway >= 2, "the proxy answered 502s");
  assert.ok(states.filter((s) => s === "live").length >= 2, states.join(" "));
  assertExactlyOnce(events, await stored(projectId, start));
});

test("an aborted signal cancels the generation", async () => {
  const projectId = await newProject();
  const controller = new AbortController();
  const errors = [];
  const run = await direct.generate(projectId, "a todo api", {
    signal: controller.signal,
    onDelta: () => controller.abort(),
    onError: (error) => errors.push(error),
  });
  await assert.rejects(run.done, (error) => error instanceof GenerationError && error.code === "cancelled");
  assert.equal(errors.length, 1);
  const generation = await direct.request("GET", `/api/generations/${run.id}`);
  assert.equal(generation.status, "cancelled");
  const events = (await stored(projectId, 0)).filter((e) => e.generation_id === run.id);
  assert.equal(events.at(-1).type, "generation.cancelled");
});

test("streams refused: the client polls, then streams again once it can", async () => {
  const projectId = await newProject();
  const start = await lastId(projectId);
  await control("POST", "/faults", { refuse_streams: true });
  const client = createClient({ baseUrl: PROXY, EventSource, ...FAST });
  const got = [];
  const states = [];
  const feed = client.follow(projectId, {
    after: start,
    onEvent: (event, via) => got.push({ event, via }),
    onState: (state) => states.push(state),
  });
  try {
    await until("polling", () => states.includes("polling"));
    const first = await direct.generate(projectId, "a todo api");
    await until("the first generation's end by polling", () => got.some(({ event }) => event.generation_id === first.id && TERMINAL.has(event.type)));
    await control("POST", "/faults", { refuse_streams: false });
    await until("a stream again", () => feed.state === "live");
    const second = await direct.generate(projectId, "a landing page");
    await until("the second generation's end", () => got.some(({ event }) => event.generation_id === second.id && TERMINAL.has(event.type)));
    assertExactlyOnce(got.map(({ event }) => event), await stored(projectId, start));
    const vias = (id) => new Set(got.filter(({ event }) => event.generation_id === id).map(({ via }) => via));
    assert.deepEqual(vias(first.id), new Set(["poll"]));
    assert.deepEqual(vias(second.id), new Set(["stream"]));
    assert.ok((await control("GET", "/seen")).refused >= 3);
  } finally {
    feed.stop();
  }
});

test("a submit whose answer was lost is sent again with the same client_request_id", async () => {
  const projectId = await newProject();
  await control("POST", "/faults", { lose_first_submit_reply: true });
  const client = createClient({ baseUrl: PROXY, EventSource, ...FAST });
  const run = await client.generate(projectId, "a todo api", { clientRequestId: "retry-1" });
  assert.equal(run.created, false, "the second submit found the generation the first made");
  await run.done;
  assert.equal((await control("GET", "/seen")).submits, 2);
  const messages = (await direct.request("GET", `/api/projects/${projectId}/messages`)).messages;
  assert.equal(messages.length, 2, "one generation: a user and an assistant message");
});

test("a token goes as ?token= on the stream and a 401 takes a fresh one", { skip: !process.env.GENSTREAM_TOKEN }, async () => {
  const token = process.env.GENSTREAM_TOKEN;
  const asked = [];
  const client = createClient({
    baseUrl: PROXY,
    EventSource,
    token: "stale",
    tokenSource: async (context) => {
      asked.push(context.reason);
      return token;
    },
    ...FAST,
  });
  const projectId = (await client.request("POST", "/api/projects", {})).id;
  assert.deepEqual(asked, ["unauthorized"]);
  const run = await client.generate(projectId, "a todo api");
  await run.done;
  const seen = await control("GET", "/seen");
  assert.ok(seen.stream_queries.every((query) => query.includes(`token=${token}`)), seen.stream_queries);
});

// Unit tests of the JavaScript SDK, run natively by node's test runner:
// `node --import ./guest-sdk/js/node-wit-stub.mjs --test guest-sdk/js/test/`
// (scripts/test runs them).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Config, JsonPath, MISSING, Message, Output, PermanentError, RetryableError,
  asText, decodeBatch, log, plugin, runBatch,
} from "../kwasm.js";

const enc = new TextEncoder();

/** A WIT batch as the host lays it out (columns + one data buffer). */
function batch(rows) {
  const parts = [];
  const b = { topic: "orders", partition: 3, offsets: [], timestamps: [], keyLengths: [], valueLengths: [], headerCounts: [], headerLengths: [] };
  const push = (v) => {
    if (v === null) return -1;
    const bytes = enc.encode(v);
    parts.push(...bytes);
    return bytes.length;
  };
  for (const [offset, ts, key, value, headers] of rows) {
    b.offsets.push(BigInt(offset));
    b.timestamps.push(BigInt(ts));
    b.headerCounts.push(headers.length);
    for (const [n, v] of headers) b.headerLengths.push(push(n), push(v));
    b.keyLengths.push(push(key));
    b.valueLengths.push(push(value));
  }
  b.offsets = BigInt64Array.from(b.offsets);
  b.timestamps = BigInt64Array.from(b.timestamps);
  b.keyLengths = Int32Array.from(b.keyLengths);
  b.valueLengths = Int32Array.from(b.valueLengths);
  b.headerCounts = Uint32Array.from(b.headerCounts);
  b.headerLengths = Int32Array.from(b.headerLengths);
  b.data = Uint8Array.from(parts);
  return b;
}

const text = (b) => (b === null ? null : new TextDecoder().decode(b));

test("decode gives one message per row, with nulls and headers", () => {
  const [m, t] = decodeBatch(batch([[10, 1700, "k1", "v1", [["a", "1"], ["b", null]]], [11, -1, null, null, []]]));
  assert.deepEqual([m.topic, m.partition, m.offset, m.timestampMs], ["orders", 3, 10, 1700]);
  assert.deepEqual([text(m.key), text(m.value)], ["k1", "v1"]);
  assert.deepEqual(m.headers.map(([n, v]) => [n, text(v)]), [["a", "1"], ["b", null]]);
  assert.equal(m.header("b").length, 0);
  assert.equal(m.header("c"), undefined);
  assert.deepEqual([t.offset, t.timestampMs, t.key, t.value, t.headers], [11, null, null, null, []]);
});

test("outcomes encode counts, errors, topics and data", () => {
  const msgs = [0, 1, 2, 3].map((offset) => new Message({ value: "v", key: "k", offset, timestampMs: 5, headers: [["h", "1"]] }));
  const r = runBatch(msgs, (msg) => {
    if (msg.offset === 1) return null;
    if (msg.offset === 2) throw new RetryableError("busy");
    if (msg.offset === 3) throw new PermanentError("bad");
    return [Output.forward(msg), new Output().withTopic("audit").withKey("x").withValue(null)];
  });
  assert.deepEqual([...r.recordCounts], [2, 0, 0, 0]);
  assert.deepEqual(r.errors, [{ index: 2, kind: "retryable", message: "busy" }, { index: 3, kind: "permanent", message: "bad" }]);
  assert.deepEqual([...r.recordTopics], [-1, 0]);
  assert.deepEqual(r.topics, ["audit"]);
  assert.deepEqual([...r.timestamps], [5n, -1n]);
  assert.deepEqual([...r.headerCounts], [1, 0]);
  assert.deepEqual([...r.headerLengths], [1, 1]);
  assert.deepEqual([...r.keyLengths], [1, 1]);
  assert.deepEqual([...r.valueLengths], [1, -1]);
  assert.equal(text(r.data), "h1kvx");
});

test("one output buffer serves every batch, and a huge one is not kept", () => {
  const forward = (msg) => Output.forward(msg);
  const first = runBatch([new Message({ value: "first" })], forward);
  const firstBuffer = first.data.buffer;
  assert.equal(text(first.data), "first");
  const second = runBatch([new Message({ value: "2nd" })], forward);
  // The glue copies an answer into the host's memory as handle-batch
  // returns, so the next batch reusing the buffer loses nothing.
  assert.equal(second.data.buffer, firstBuffer);
  assert.equal(text(second.data), "2nd");
  const huge = "x".repeat((8 << 20) + 1);
  const big = runBatch([new Message({ value: huge })], forward);
  assert.notEqual(big.data.buffer, firstBuffer);
  assert.equal(big.data.length, huge.length);
  assert.equal(runBatch([new Message({ value: "after" })], forward).data.buffer, firstBuffer);
});

test("other exceptions propagate, so the batch traps", () => {
  assert.throws(() => runBatch([new Message({ value: "1" })], () => { throw new TypeError("boom"); }), TypeError);
});

test("text and JSON errors are permanent", () => {
  assert.throws(() => new Message({ value: Uint8Array.of(0xff) }).valueStr(), (e) => e instanceof PermanentError && e.message.startsWith("invalid UTF-8: "));
  assert.throws(() => new Message({ value: "not json" }).json(), (e) => e instanceof PermanentError && e.message.startsWith("invalid JSON: "));
  assert.throws(() => new Message().json(), { message: "expected a JSON value, got a null value" });
  assert.deepEqual(new Message({ value: '{"a":[1,{"b":2}]}' }).json(), { a: [1, { b: 2 }] });
});

test("config messages match the Rust SDK", () => {
  const c = new Config([["field", "a"], ["mod", "x"]]);
  assert.equal(c.require("field"), "a");
  assert.throws(() => c.require("equals"), { message: "missing required config key `equals`" });
  assert.throws(() => c.denyUnknown(["field", "equals", "mode"]), { message: "unknown config key `mod` (known keys: field, equals, mode)" });
  assert.deepEqual(new Config({ l: " a, ,b " }).list("l"), ["a", "b"]);
});

test("JSON paths and as-text", () => {
  const p = new JsonPath("items.0.qty");
  assert.equal(p.get({ items: [{ qty: 3 }] }), 3);
  assert.equal(p.get({ items: [] }), MISSING);
  assert.deepEqual(["x", 3, true, null, [1, 2]].map(asText), ["x", "3", "true", "null", "[1,2]"]);
  assert.throws(() => new JsonPath("a..b"), { message: 'invalid JSON field path "a..b": use dotted names like `user.email`' });
});

test("init errors are thrown as the config message; handle-batch before init traps", () => {
  const h = plugin(() => null, { init: (c) => c.require("x") });
  assert.throws(() => h.handleBatch(batch([])), /before a successful init/);
  assert.throws(() => h.init([]), (e) => e === "missing required config key `x`");
  const simple = plugin((m) => Output.forward(m));
  simple.init([["anything", "goes"]]);
  assert.deepEqual([...simple.handleBatch(batch([[1, 2, "k", "v", []]])).recordCounts], [1]);
});

test("log lines carry the offset of the message being handled", () => {
  globalThis.kwasmLogLines = [];
  runBatch([new Message({ offset: 42 })], () => { log.info("seen"); return null; });
  log.warn("outside");
  assert.deepEqual(globalThis.kwasmLogLines, [["info", 42n, "seen"], ["warn", undefined, "outside"]]);
});

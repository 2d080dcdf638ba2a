// kwasm: write kwasm plugins in JavaScript, Kafka message handlers that run as
// WebAssembly components inside the kwasm host (built with componentize-js).
//
// A plugin is one plain function, called once per message, in order per
// partition. `plugin` turns it into the component's `handler` export; the
// columnar batch of the WIT contract (guest-sdk/wit/0.1.0) never reaches your
// code, exactly as with the Rust SDK (kwasm_guest):
//
//   import { Output, plugin } from "./kwasm.js";
//   function setup(config) {
//     config.denyUnknown(["suffix"]);
//     return config.get("suffix") ?? "!";
//   }
//   function handle(msg, suffix) {
//     return Output.forward(msg).withValue(msg.valueStr().toUpperCase() + suffix);
//   }
//   export const handler = plugin(handle, { init: setup });
//
// A handler returns an Output, null/undefined (drops the message) or an array
// of outputs. A thrown RetryableError is retried by the host with backoff, a
// PermanentError dead-letters the message. Any other exception is a bug: the
// batch traps, as a Rust panic does, and the host's trap policy applies.
// `init` runs once per instance with the pipeline's config; throwing (a
// ConfigError or anything else) rejects the config with its message.
//
// Globals are a cache, not state: the host may drop an instance between any
// two batches and build a new one (calling init again).
//
// This file has no imports at module level except the WIT's log interface,
// which componentize-js provides; outside a component (node, for unit tests)
// `setLogSink` replaces it.

import { log as witLog } from "kwasm:plugin/log@0.1.0";

/** A transient failure: the host retries the message with backoff. */
export class RetryableError extends Error {}
/** The message can never be handled: the host dead-letters it at once. */
export class PermanentError extends Error {}
/** The pipeline's plugin config is wrong (thrown from init). */
export class ConfigError extends Error {}

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });
const lenientDecoder = new TextDecoder("utf-8");

function asBytes(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === "string") return encoder.encode(v);
  if (v instanceof Uint8Array) return v;
  // Lifted list<u8> may come as another view or a plain array of bytes.
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (Array.isArray(v)) return Uint8Array.from(v);
  throw new TypeError(`expected a string, Uint8Array or null, got ${typeof v}`);
}

function utf8(bytes) {
  try {
    return strictDecoder.decode(bytes);
  } catch (e) {
    throw new PermanentError(`invalid UTF-8: ${e.message}`);
  }
}

/** The plugin's configuration: string keys and values set on the pipeline.
 * Same methods and messages as the Rust SDK's Config. */
export class Config {
  constructor(entries = []) {
    // The host passes [key, value] pairs; tests may pass a plain object.
    this.entries = new Map(Array.isArray(entries) || entries instanceof Map ? entries : Object.entries(entries));
  }
  /** The value of `key`, or undefined. */
  get(key) {
    return this.entries.get(key);
  }
  /** The value of `key`; a ConfigError naming it when unset. */
  require(key) {
    if (!this.entries.has(key)) throw new ConfigError(`missing required config key \`${key}\``);
    return this.entries.get(key);
  }
  /** A comma-separated list under `key`, trimmed, empty items skipped. */
  list(key) {
    return (this.entries.get(key) ?? "").split(",").map((s) => s.trim()).filter((s) => s);
  }
  /** Rejects keys outside `known`: a typo should fail the deploy. */
  denyUnknown(known) {
    for (const key of [...this.entries.keys()].sort()) {
      if (!known.includes(key)) {
        throw new ConfigError(`unknown config key \`${key}\` (known keys: ${known.join(", ")})`);
      }
    }
  }
}

/** One input message: key/value are Uint8Array or null (a null key, a
 * tombstone); headers are [name, Uint8Array|null] pairs in order. */
export class Message {
  constructor({ value = null, key = null, headers = [], topic = "", partition = 0, offset = 0, timestampMs = null } = {}) {
    this.topic = topic;
    this.partition = partition;
    this.offset = offset;
    this.timestampMs = timestampMs;
    this.key = asBytes(key);
    this.value = asBytes(value);
    this.headers = headers.map(([n, v]) => [n, asBytes(v)]);
  }
  /** The key as text; null for a null key; PermanentError when not UTF-8. */
  keyStr() {
    return this.key === null ? null : utf8(this.key);
  }
  /** The value as text (a null value reads as ""); PermanentError when not UTF-8. */
  valueStr() {
    return this.value === null ? "" : utf8(this.value);
  }
  /** The value parsed as JSON; PermanentError when it does not parse. */
  json() {
    if (this.value === null) throw new PermanentError("expected a JSON value, got a null value");
    try {
      return JSON.parse(utf8(this.value));
    } catch (e) {
      throw new PermanentError(`invalid JSON: ${e.message}`);
    }
  }
  /** The value of the first header called `name` (null value: empty), or undefined. */
  header(name) {
    const h = this.headers.find(([n]) => n === name);
    return h === undefined ? undefined : h[1] ?? new Uint8Array(0);
  }
}

/** One output record; `with*` methods change it and return it. */
export class Output {
  constructor() {
    this.topic = null;
    this.key = null;
    this.value = null;
    this.headers = [];
    this.timestampMs = null;
  }
  /** The input message as it is (key, value, headers, timestamp), for the
   * pipeline's output topic. */
  static forward(msg) {
    const o = new Output();
    o.key = msg.key;
    o.value = msg.value;
    o.headers = msg.headers.slice();
    o.timestampMs = msg.timestampMs;
    return o;
  }
  /** Sends the record to `topic` (one the pipeline declares) instead of its output. */
  withTopic(topic) {
    this.topic = topic;
    return this;
  }
  /** Sets the key (null: a null key). */
  withKey(key) {
    this.key = asBytes(key);
    return this;
  }
  /** Sets the value (null: a tombstone). */
  withValue(value) {
    this.value = asBytes(value);
    return this;
  }
  /** Sets the value to `value` as JSON. */
  withJson(value) {
    this.value = encoder.encode(JSON.stringify(value));
    return this;
  }
  /** Replaces every header called `name` with one `name: value`. */
  withHeader(name, value) {
    this.headers = this.headers.filter(([n]) => n !== name);
    this.headers.push([name, asBytes(value)]);
    return this;
  }
  /** Appends a header, keeping others of the same name. */
  addHeader(name, value) {
    this.headers.push([name, asBytes(value)]);
    return this;
  }
  /** Removes every header called `name`. */
  withoutHeader(name) {
    this.headers = this.headers.filter(([n]) => n !== name);
    return this;
  }
  /** Sets the timestamp (ms since the Unix epoch; null: the producer stamps it). */
  withTimestampMs(ms) {
    this.timestampMs = ms;
    return this;
  }
}

/** Marks a missing field, to tell it from a JSON null. */
export const MISSING = Symbol("missing");

/** A dotted path into a JSON document (`user.email`, `items.0.sku`). */
export class JsonPath {
  constructor(path) {
    const segments = path.split(".");
    if (path === "" || segments.some((s) => s === "")) {
      throw new ConfigError(`invalid JSON field path ${JSON.stringify(path)}: use dotted names like \`user.email\``);
    }
    this.segments = segments;
  }
  /** The value at this path, or `fallback` (default MISSING). */
  get(doc, fallback = MISSING) {
    let node = doc;
    for (const seg of this.segments) {
      if (Array.isArray(node)) {
        if (!/^[0-9]+$/.test(seg) || Number(seg) >= node.length) return fallback;
        node = node[Number(seg)];
      } else if (node !== null && typeof node === "object" && Object.prototype.hasOwnProperty.call(node, seg)) {
        node = node[seg];
      } else {
        return fallback;
      }
    }
    return node;
  }
  toString() {
    return this.segments.join(".");
  }
}

/** A JSON value as plain text for comparisons with configured strings:
 * strings without quotes, everything else as compact JSON. */
export function asText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

// --- logging -------------------------------------------------------------------

let currentOffset = undefined;
let sink = (level, offset, message) => witLog(level, offset, message);

/** Replaces where log lines go (native unit tests). */
export function setLogSink(f) {
  sink = f;
}

function emit(level, message) {
  sink(level, currentOffset === undefined ? undefined : BigInt(currentOffset), String(message));
}

/** Logging through the host's logger; the host adds plugin, topic, partition
 * and the SDK the offset of the message being handled. */
export const log = {
  trace: (m) => emit("trace", m),
  debug: (m) => emit("debug", m),
  info: (m) => emit("info", m),
  warn: (m) => emit("warn", m),
  error: (m) => emit("error", m),
};

// --- the batch boundary ----------------------------------------------------------

/** The messages of a WIT batch (columns plus one data buffer). The host built
 * the columns, so they are consistent. */
export function decodeBatch(batch) {
  const data = batch.data;
  const hl = batch.headerLengths;
  let pos = 0;
  let h = 0;
  const take = (len) => {
    if (len < 0) return null;
    const b = data.subarray(pos, pos + len);
    pos += len;
    return b;
  };
  const n = batch.offsets.length;
  const messages = new Array(n);
  for (let i = 0; i < n; i++) {
    const headers = [];
    for (let j = 0; j < batch.headerCounts[i]; j++) {
      const name = lenientDecoder.decode(take(hl[h]));
      const value = take(hl[h + 1]);
      h += 2;
      headers.push([name, value]);
    }
    const msg = Object.create(Message.prototype);
    msg.topic = batch.topic;
    msg.partition = batch.partition;
    msg.offset = Number(batch.offsets[i]);
    const ts = Number(batch.timestamps[i]);
    msg.timestampMs = ts >= 0 ? ts : null;
    msg.key = take(batch.keyLengths[i]);
    msg.value = take(batch.valueLengths[i]);
    msg.headers = headers;
    messages[i] = msg;
  }
  return messages;
}

// The bytes of every batch's answer go into one buffer kept across batches:
// the generated glue copies them into the host's memory as handle-batch
// returns, so the next batch may overwrite them. A fresh buffer per batch was
// garbage the size of the batch's output, and SpiderMonkey collects only when
// its own heuristics say so (with 1 MB batches, after about 55 MB), which can
// be after the instance has reached its memory limit. Buffers above
// KEPT_OUTPUT_BYTES are not kept, so one huge batch does not pin its size.
const KEPT_OUTPUT_BYTES = 8 << 20;
let keptOutput = new Uint8Array(64 << 10);

function outputBuffer(len) {
  if (len > KEPT_OUTPUT_BYTES) return new Uint8Array(len);
  if (len > keptOutput.length) {
    keptOutput = new Uint8Array(Math.min(KEPT_OUTPUT_BYTES, Math.max(len, 2 * keptOutput.length)));
  }
  return keptOutput.subarray(0, len);
}

/** Accumulates the columns of a WIT batch-result. */
class ResultEncoder {
  constructor() {
    this.recordCounts = [];
    this.errors = [];
    this.recordTopics = [];
    this.timestamps = [];
    this.keyLengths = [];
    this.valueLengths = [];
    this.headerCounts = [];
    this.headerLengths = [];
    this.topics = [];
    this.chunks = [];
    this.dataLen = 0;
  }
  push(bytes) {
    if (bytes === null || bytes === undefined) return -1;
    this.chunks.push(bytes);
    this.dataLen += bytes.length;
    return bytes.length;
  }
  encode(outputs) {
    if (outputs === null || outputs === undefined) outputs = [];
    else if (outputs instanceof Output) outputs = [outputs];
    let count = 0;
    for (const o of outputs) {
      if (!(o instanceof Output)) {
        throw new TypeError("a handler returns an Output, null or an array of Output");
      }
      this.headerCounts.push(o.headers.length);
      for (const [name, value] of o.headers) {
        this.headerLengths.push(this.push(encoder.encode(name)));
        this.headerLengths.push(this.push(asBytes(value)));
      }
      this.keyLengths.push(this.push(o.key));
      this.valueLengths.push(this.push(o.value));
      this.timestamps.push(o.timestampMs === null || o.timestampMs === undefined ? -1n : BigInt(o.timestampMs));
      if (o.topic === null || o.topic === undefined) {
        this.recordTopics.push(-1);
      } else {
        let t = this.topics.indexOf(o.topic);
        if (t < 0) t = this.topics.push(o.topic) - 1;
        this.recordTopics.push(t);
      }
      count++;
    }
    this.recordCounts.push(count);
  }
  fail(index, kind, message) {
    this.recordCounts.push(0);
    this.errors.push({ index, kind, message });
  }
  finish() {
    const data = outputBuffer(this.dataLen);
    let at = 0;
    for (const c of this.chunks) {
      data.set(c, at);
      at += c.length;
    }
    return {
      recordCounts: Uint32Array.from(this.recordCounts),
      errors: this.errors,
      recordTopics: Int32Array.from(this.recordTopics),
      timestamps: BigInt64Array.from(this.timestamps),
      keyLengths: Int32Array.from(this.keyLengths),
      valueLengths: Int32Array.from(this.valueLengths),
      headerCounts: Uint32Array.from(this.headerCounts),
      headerLengths: Int32Array.from(this.headerLengths),
      topics: this.topics,
      data,
    };
  }
}

/** Calls `handle` on each message in order and encodes the outcomes as a WIT
 * batch-result (what handle-batch does; exported for unit tests). */
export function runBatch(messages, handle) {
  const out = new ResultEncoder();
  try {
    messages.forEach((msg, index) => {
      currentOffset = msg.offset;
      let outputs;
      try {
        outputs = handle(msg);
      } catch (e) {
        if (e instanceof RetryableError) return out.fail(index, "retryable", e.message);
        if (e instanceof PermanentError) return out.fail(index, "permanent", e.message);
        throw e;
      }
      out.encode(outputs);
    });
  } finally {
    currentOffset = undefined;
  }
  return out.finish();
}

const UNSET = Symbol("unset");

/** The component's `handler` export for `handle`: `export const handler =
 * plugin(handle, { init })`. With `init`, `handle(msg, settings)` receives
 * what `init(config)` returned; without, `handle(msg)` (any config accepted,
 * as in the Rust SDK). */
export function plugin(handle, { init } = {}) {
  let settings = UNSET;
  return {
    init(config) {
      if (init === undefined) {
        settings = null;
        return;
      }
      try {
        settings = init(new Config(config));
      } catch (e) {
        // A thrown string is the `err` of init's result<_, string>.
        throw e instanceof Error ? e.message : String(e);
      }
    },
    handleBatch(batch) {
      if (settings === UNSET) {
        // The host always calls init first; trapping is the only honest answer.
        throw new Error("kwasm: handle-batch called before a successful init");
      }
      const h = init === undefined ? handle : (m) => handle(m, settings);
      return runBatch(decodeBatch(batch), h);
    },
  };
}

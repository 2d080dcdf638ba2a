// `js-passthrough`: forwards every message unchanged (the JavaScript twin of
// plugins/passthrough, for benchmarks: what the SDK and the runtime cost).
import { Output, plugin } from "./kwasm.js";

export const handler = plugin((msg) => Output.forward(msg));

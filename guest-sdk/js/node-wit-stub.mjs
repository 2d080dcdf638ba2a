// Lets node load kwasm.js outside a component: its one import, the WIT's log
// interface, resolves to a stub that records lines (for the unit tests).
// Used as `node --import ./guest-sdk/js/node-wit-stub.mjs --test guest-sdk/js/test/`.
import { register } from "node:module";

register(
  "data:text/javascript," +
    encodeURIComponent(`
      export async function resolve(specifier, context, next) {
        if (specifier === "kwasm:plugin/log@0.1.0") {
          const stub = "export const log = (l, o, m) => (globalThis.kwasmLogLines ??= []).push([l, o, m]);";
          return { url: "data:text/javascript," + encodeURIComponent(stub), shortCircuit: true };
        }
        return next(specifier, context);
      }`),
);

// The plugin's KV namespace: one serializable transaction per call. Keys
// are text, values bytes; getJson/setJson and getString/setString convert.
// A call that meets a conflict is run again from the start by the router.

import { HostError, call } from "./host.js";

let conflicted = false;

/** Most times one call is run again after conflicts. */
export const RERUNS = 64;

function noted(fn, ...args) {
  try {
    return call("kv", fn, ...args);
  } catch (e) {
    if (e instanceof HostError && e.kind === "conflict") conflicted = true;
    throw e;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const get = (key) => noted("get", key) ?? null;
export const set = (key, value) => noted("set", key, value);
export const remove = (key) => noted("delete", key);
export const getString = (key) => {
  const value = get(key);
  return value === null ? null : decoder.decode(value);
};
export const setString = (key, value) => set(key, encoder.encode(value));
export const getJson = (key) => {
  const text = getString(key);
  return text === null ? null : JSON.parse(text);
};
export const setJson = (key, value) => setString(key, JSON.stringify(value));
/** Add `delta` to the integer at `key` (0 if absent); the new value. */
export const increment = (key, delta = 1) => Number(noted("increment", key, BigInt(delta)));
export const nextInSequence = (name) => Number(noted("nextInSequence", name));

/** Every [key, value] under `prefix`, in key order. */
export function* scan(prefix) {
  let after;
  for (;;) {
    const page = noted("list", prefix, after, 500);
    yield* page.entries;
    if (page.next === undefined || page.next === null) return;
    after = page.next;
  }
}

/** Run `run`, and again from the start while it met a conflict and the
 * host agrees to restart its transaction (at most RERUNS times). */
export function rerunOnConflict(run) {
  for (let reruns = 0; ; reruns++) {
    conflicted = false;
    const answer = run();
    if (!conflicted || reruns === RERUNS) return answer;
    try {
      call("kv", "restart");
    } catch {
      return answer;
    }
  }
}

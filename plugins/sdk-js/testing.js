// A test host: a plugin's routes, admin command and jobs under Node
// (`node --test`), no Berth needed.
//
//   const host = new TestHost({ settings: { greeting: "Ahoy" } });
//   const answer = host.call(plugin, "GET", "/hello/ann");
//
// KV is in memory, one transaction per call: a request or admin command
// commits what it wrote whatever it answers, a job only when it succeeds;
// `conflicts(n)` makes the next n KV calls meet a conflict (the call's
// writes are dropped and it is run again, as on the host).

import { bind } from "./host.js";
import { Request, Response } from "./index.js";

/** A WIT error as the bindings throw it. */
function witError(tag, val) {
  return Object.assign(new Error(`${tag}: ${val}`), { payload: { tag, val } });
}

export class TestHost {
  constructor({ settings = {} } = {}) {
    this.store = new Map();
    this.settings = { ...settings };
    this.logs = [];
    this.runs = 0;
    this.writes = null;
    this.pendingConflicts = 0;
    this.rolledBack = false;
    this.sequences = new Map();
  }

  /** The next `n` KV calls answer `conflict`. */
  conflicts(n) {
    this.pendingConflicts = n;
    return this;
  }

  /** Route `method path` as the host would and call its handler. */
  call(plugin, method, path, body = "", headers = []) {
    const [target, query = ""] = path.split("?");
    for (const route of plugin.router.routes) {
      if (route.method !== method.toUpperCase() && route.method !== "*") continue;
      const params = match(route.path, target);
      if (!params) continue;
      const request = new Request({
        id: "test-1",
        method: method.toUpperCase(),
        path: target,
        route: route.id,
        params: Object.entries(params),
        query: [...new URLSearchParams(query)],
        headers,
        body: typeof body === "string" ? new TextEncoder().encode(body) : body,
        client: "127.0.0.1:1",
      });
      return this.inCall(() => plugin.router.dispatch(request));
    }
    return Response.error(404, `no route for ${method} ${path}`);
  }

  /** Run the admin command. */
  admin(plugin, args) {
    return this.inCall(() => plugin.runAdmin(args));
  }

  /** Run a job; its writes are kept only if it succeeds. */
  job(plugin, kind, payload) {
    return this.inCall(() => plugin.runJob(kind, payload));
  }

  inCall(run) {
    bind(this.imports());
    this.writes = new Map();
    this.rolledBack = false;
    try {
      const answer = run();
      if (!this.rolledBack) {
        for (const [key, value] of this.writes) {
          if (value === null) this.store.delete(key);
          else this.store.set(key, value);
        }
      }
      return answer;
    } finally {
      this.writes = null;
    }
  }

  imports() {
    const host = this;
    const read = (key) => (host.writes.has(key) ? host.writes.get(key) : (host.store.get(key) ?? null));
    const kv = (fn) => (...args) => {
      if (host.writes === null) throw witError("unavailable", "no call in progress");
      if (host.rolledBack) throw witError("conflict", "this call's transaction was rolled back");
      if (host.pendingConflicts > 0) {
        host.pendingConflicts -= 1;
        host.rolledBack = true;
        throw witError("conflict", "a concurrent call holds the key (scripted)");
      }
      return fn(...args);
    };
    return {
      kv: {
        get: kv((key) => read(key) ?? undefined),
        set: kv((key, value) => void host.writes.set(key, Uint8Array.from(value))),
        delete: kv((key) => {
          const existed = read(key) !== null;
          host.writes.set(key, null);
          return existed;
        }),
        increment: kv((key, delta) => {
          const now = read(key);
          const value = BigInt(now === null ? 0 : new TextDecoder().decode(now)) + delta;
          host.writes.set(key, new TextEncoder().encode(String(value)));
          return value;
        }),
        nextInSequence: kv((name) => {
          const next = (host.sequences.get(name) ?? 0n) + 1n;
          host.sequences.set(name, next);
          return next;
        }),
        list: kv((prefix, after, limit) => {
          const keys = [...new Set([...host.store.keys(), ...host.writes.keys()])].sort();
          const entries = keys
            .filter((k) => k.startsWith(prefix) && (after === undefined || k > after))
            .map((k) => [k, read(k)])
            .filter(([, v]) => v !== null);
          const page = entries.slice(0, limit);
          return { entries: page, next: entries.length > limit ? page.at(-1)[0] : undefined };
        }),
        restart: () => {
          host.writes = new Map();
          host.rolledBack = false;
          host.runs += 1;
        },
      },
      config: {
        get: (key) => host.settings[key],
        getAll: () => Object.entries(host.settings),
      },
      log: {
        log: (level, message, fields) => void host.logs.push({ level, message, fields }),
      },
    };
  }
}

/** The parameters of `path` under `pattern`, or null. */
function match(pattern, path) {
  const want = pattern.split("/").filter(Boolean);
  const have = path.split("/").filter(Boolean);
  const params = {};
  for (let i = 0; i < want.length; i++) {
    const segment = want[i];
    if (segment.startsWith("{") && segment.endsWith("...}")) {
      params[segment.slice(1, -4)] = have.slice(i).join("/");
      return params;
    }
    if (i >= have.length) return null;
    if (segment.startsWith("{") && segment.endsWith("}")) {
      params[segment.slice(1, -1)] = decodeURIComponent(have[i]);
    } else if (segment !== have[i]) {
      return null;
    }
  }
  return have.length === want.length ? params : null;
}

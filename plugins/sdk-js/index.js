// Berth's SDK for plugins in JavaScript, built with componentize-js.
//
//   const router = new Router()
//     .get("hello.greet", "/hello/{name}", (req) =>
//       Response.json(200, { greeting: `Hello, ${req.param("name")}!` }));
//   export const plugin = new Plugin({ name: "hello", version: "0.1.0",
//     description: "Greets", capabilities: ["kv"], router });
//
// and, in the component's entry module, the WIT interfaces bound:
//
//   import * as kv from "berth:plugin/kv@0.1.5";
//   export const { describe, handle, runJob, admin } = plugin.exports({ kv });
//
// A handler takes the Request (and, behind a guard, what the guard
// returned) and returns a Response; throwing Failure answers in the
// scope's error format, and so does a host refusal (HostError: 503 with
// Retry-After when transient, 400 for an argument the host refused, 500
// for a capability not granted). See README.md.

import { HostError, bind, call } from "./host.js";
import * as kv from "./kv.js";

export { HostError, kv };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Answer `status` with `message` in the route's error format. */
export class Failure extends Error {
  constructor(status, message, headers = {}) {
    super(message);
    this.status = status;
    this.headers = headers;
  }
}

/** An HTTP response: status, headers in order, body bytes. */
export class Response {
  constructor(status = 200, body = new Uint8Array(), headers = []) {
    this.status = status;
    this.body = typeof body === "string" ? encoder.encode(body) : body;
    this.headers = [...headers];
  }

  static json(status, value) {
    return new Response(status, JSON.stringify(value), [["content-type", "application/json"]]);
  }

  static text(status, text) {
    return new Response(status, text, [["content-type", "text/plain; charset=utf-8"]]);
  }

  /** `{"error": message}`, the default error format. */
  static error(status, message) {
    return Response.json(status, { error: message });
  }

  /** Set `name` to `value`, replacing its values. */
  header(name, value) {
    this.headers = this.headers.filter(([n]) => n.toLowerCase() !== name.toLowerCase());
    this.headers.push([name, value]);
    return this;
  }

  text() {
    return decoder.decode(this.body);
  }

  json() {
    return JSON.parse(this.text());
  }
}

/** One request routed to this plugin (the host matched its route). */
export class Request {
  constructor({ id, method, path, route, params, query, headers, body, client }) {
    Object.assign(this, { id, method, path, route, client });
    this.params = Object.fromEntries(params);
    this.queryPairs = query;
    this.headers = headers;
    this.body = body;
  }

  /** The path parameter `name` (400 if the route has none such). */
  param(name) {
    if (!(name in this.params)) throw new Failure(400, `missing path parameter \`${name}\``);
    return this.params[name];
  }

  /** The first value of query parameter `name`, or null. */
  query(name) {
    return this.queryPairs.find(([k]) => k === name)?.[1] ?? null;
  }

  /** The first value of header `name` (any case), or null. */
  header(name) {
    const lower = name.toLowerCase();
    return this.headers.find(([k]) => k.toLowerCase() === lower)?.[1] ?? null;
  }

  /** The body as text. */
  text() {
    return decoder.decode(this.body);
  }

  /** The body as JSON (400 if it is not). */
  json() {
    try {
      return JSON.parse(this.text() || "null");
    } catch (e) {
      throw new Failure(400, `invalid JSON body: ${e.message}`);
    }
  }
}

/** What routes opened in `router.scope` share: their error format,
 * `errors(status, message) => Response`. */
export class Scope {
  constructor({ errors } = {}) {
    this.errors = errors;
  }
}

function hostFailure(e) {
  if (e.transient) return new Failure(503, e.message, { "retry-after": "1" });
  return new Failure(e.kind === "invalid" ? 400 : 500, e.message);
}

/** The plugin's routes, by id; the host matches method and path. */
export class Router {
  constructor() {
    this.routes = [];
    this.descriptions = [];
    this.render = Response.error;
    this.check = null;
  }

  /** Serve `method` on `path` (`/things/{id}`, `/files/{rest...}`). */
  route(id, method, path, handler) {
    const check = this.check;
    const run = check ? (req) => handler(req, check(req)) : handler;
    this.routes.push({ id, method: method.toUpperCase(), path, run, render: this.render });
    return this;
  }

  get(id, path, handler) {
    return this.route(id, "GET", path, handler);
  }

  post(id, path, handler) {
    return this.route(id, "POST", path, handler);
  }

  put(id, path, handler) {
    return this.route(id, "PUT", path, handler);
  }

  patch(id, path, handler) {
    return this.route(id, "PATCH", path, handler);
  }

  delete(id, path, handler) {
    return this.route(id, "DELETE", path, handler);
  }

  /** Register what `routes(this)` adds with `scope`'s error format. */
  scope(scope, routes) {
    const outer = this.render;
    this.render = scope.errors ?? outer;
    try {
      routes(this);
    } finally {
      this.render = outer;
    }
    return this;
  }

  /** Register what `routes(this)` adds behind `check`: it runs before each
   * of their handlers, which get its answer as their second argument;
   * throwing Failure turns the caller away. */
  guard(check, routes) {
    const outer = this.check;
    this.check = check;
    try {
      routes(this);
    } finally {
      this.check = outer;
    }
    return this;
  }

  /** Call the handler of the request's route, again from the start after
   * a conflict. */
  dispatch(request) {
    const route = this.routes.find((r) => r.id === request.route);
    if (!route) return Response.error(404, `no handler for route \`${request.route}\``);
    return kv.rerunOnConflict(() => {
      let failure;
      try {
        return route.run(request);
      } catch (e) {
        if (e instanceof HostError) failure = hostFailure(e);
        else if (e instanceof Failure) failure = e;
        else throw e;
      }
      const answer = route.render(failure.status, failure.message);
      for (const [name, value] of Object.entries(failure.headers)) answer.header(name, value);
      return answer;
    });
  }

  /** Describe routes in OpenAPI terms (the Rust SDK's format: `schemas`,
   * `error`, `operations` by route id). */
  describe(doc) {
    this.descriptions.push(doc);
    return this;
  }

  /** What is wrong with the descriptions (empty when nothing). */
  checkDescription() {
    if (this.descriptions.length === 0) return ["no description given"];
    const problems = [];
    const described = [];
    const schemas = [];
    const ids = this.routes.map((r) => r.id);
    for (const doc of this.descriptions) {
      for (const id of Object.keys(doc.operations ?? {})) {
        if (described.includes(id)) problems.push(`route \`${id}\` is described twice`);
        else if (!ids.includes(id)) problems.push(`route \`${id}\` is described but does not exist`);
        described.push(id);
      }
      for (const name of Object.keys(doc.schemas ?? {})) {
        if (schemas.includes(name)) problems.push(`schema \`${name}\` is defined twice`);
        schemas.push(name);
      }
    }
    for (const id of ids) {
      if (!described.includes(id)) problems.push(`route \`${id}\` has no description`);
    }
    for (const doc of this.descriptions) {
      for (const name of schemaRefs(doc)) {
        if (!schemas.includes(name)) problems.push(`\`$ref\` to schema \`${name}\`, which is not defined`);
      }
    }
    return problems;
  }

  /** The OpenAPI fragment for the manifest. */
  openapi() {
    const schemas = Object.assign({}, ...this.descriptions.map((d) => d.schemas ?? {}));
    const paths = {};
    for (const r of this.routes) {
      const params = [];
      let path = "";
      for (const segment of r.path.split("/").filter(Boolean)) {
        if (segment.startsWith("{") && segment.endsWith("}")) {
          const name = segment.slice(1, -1).replace(/\.\.\.$/, "");
          params.push({ name, in: "path", required: true, schema: { type: "string" } });
          path += `/{${name}}`;
        } else {
          path += `/${segment}`;
        }
      }
      const methods = r.method === "*" ? ["get", "post", "put", "patch", "delete"] : [r.method.toLowerCase()];
      const entry = (paths[path || "/"] ??= {});
      for (const method of methods) {
        const op = {
          operationId: methods.length > 1 ? `${r.id}.${method}` : r.id,
          parameters: [...params],
          responses: { default: { description: "the plugin's response" } },
        };
        for (const doc of this.descriptions) {
          const described = doc.operations?.[r.id];
          if (described) describeOperation(op, described, doc.error);
        }
        entry[method] = op;
      }
    }
    return JSON.stringify({ paths, components: { schemas } });
  }
}

function describeOperation(op, described, error) {
  const content = (schema) => ({ "application/json": { schema } });
  if (error !== undefined) op.responses.default = { description: "an error", content: content(error) };
  for (const [key, value] of Object.entries(described)) {
    if (key === "body") {
      op.requestBody = { required: true, content: content(value) };
    } else if (key === "parameters") {
      op.parameters.push(...value);
    } else if (key === "responses") {
      for (const [status, given] of Object.entries(value)) {
        const response = { ...given };
        if ("schema" in response) {
          response.content = content(response.schema);
          delete response.schema;
        }
        response.description ??= `status ${status}`;
        if (/^[45]/.test(status) && !response.content && error !== undefined) {
          response.content = content(error);
        }
        op.responses[status] = response;
      }
    } else {
      op[key] = value;
    }
  }
}

function schemaRefs(value) {
  if (Array.isArray(value)) return value.flatMap(schemaRefs);
  if (value && typeof value === "object") {
    return Object.entries(value).flatMap(([key, v]) =>
      key === "$ref" && typeof v === "string" && v.startsWith("#/components/schemas/")
        ? [v.slice("#/components/schemas/".length).split("/")[0]]
        : schemaRefs(v),
    );
  }
  return [];
}

/** The plugin's settings (`[plugins.NAME.settings]`; non-string values
 * arrive as JSON text). */
export const config = {
  get: (key) => call("config", "get", key) ?? null,
  all: () => Object.fromEntries(call("config", "getAll")),
};

function logAt(level) {
  return (message, fields = {}) =>
    call("log", "log", level, message, Object.entries(fields).map(([k, v]) => [k, String(v)]));
}

/** Log lines, tagged by the host with the plugin and request id. */
export const log = {
  debug: logAt("debug"),
  info: logAt("info"),
  warn: logAt("warn"),
  error: logAt("error"),
};

function errorText(e) {
  return e instanceof Failure || e instanceof HostError ? e.message : String(e?.message ?? e);
}

/** A plugin: its manifest, its routes, and optionally its admin command
 * (`admin(args) => string`, throwing to fail) and jobs (kind =>
 * `run(payload: Uint8Array)`, throwing to fail and be retried). */
export class Plugin {
  constructor({ name, version, description, capabilities, router, admin, jobs = {} }) {
    Object.assign(this, { name, version, description, capabilities, router, adminCommand: admin, jobs });
  }

  runAdmin(args) {
    if (!this.adminCommand) throw new Failure(400, `plugin \`${this.name}\` has no admin commands`);
    return kv.rerunOnConflict(() => this.adminCommand(args));
  }

  runJob(kind, payload) {
    const run = this.jobs[kind];
    if (!run) throw new Failure(400, `unknown job kind \`${kind}\``);
    kv.rerunOnConflict(() => run(payload));
  }

  /** The world's exports, with `imports` (the WIT interfaces the plugin
   * uses, by name: kv, config, log, ...) bound for capability calls. */
  exports(imports) {
    bind(imports);
    const plugin = this;
    return {
      describe() {
        return {
          name: plugin.name,
          version: plugin.version,
          description: plugin.description,
          routes: plugin.router.routes.map(({ id, method, path }) => ({ id, method, path })),
          capabilities: plugin.capabilities,
          openapi: plugin.router.openapi(),
        };
      },
      handle(request) {
        const answer = plugin.router.dispatch(new Request(request));
        return {
          tag: "respond",
          val: { status: answer.status, headers: answer.headers, body: answer.body },
        };
      },
      runJob(kind, payload) {
        try {
          plugin.runJob(kind, payload);
        } catch (e) {
          throw errorText(e);
        }
      },
      admin(args) {
        try {
          return plugin.runAdmin(args);
        } catch (e) {
          throw errorText(e);
        }
      },
    };
  }
}

// The JavaScript SDK under Node, through its test host; and
// examples/hello-js's routes and admin command.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { Failure, HostError, Plugin, Response, Router, Scope, kv } from "../index.js";
import { TestHost } from "../testing.js";
import { plugin as hello } from "../../../examples/hello-js/plugin.js";
import helloDescription from "../../../examples/hello-js/openapi.js";

const ours = (status, message) => Response.json(status, { problem: message, ours: true });

function signedIn(req) {
  const user = req.header("x-user");
  if (user === null) throw new Failure(401, "sign in first");
  return user;
}

function number(req) {
  const n = req.param("n");
  if (!/^\d+$/.test(n)) throw new Failure(400, "n is a number");
  return Response.json(200, { n: Number(n) });
}

const router = new Router()
  .get("plain", "/plain", (req) => Response.json(200, req.json()))
  .scope(new Scope({ errors: ours }), (r) =>
    r
      .get("bad", "/bad/{n}", number)
      .get("host", "/host", () => {
        throw new HostError("unavailable", "storage is away");
      })
      .guard(signedIn, (r) => r.get("me", "/me", (req, user) => Response.json(200, { user })))
      .post("count", "/count", () => Response.json(200, { n: kv.increment("count", 1) })),
  );

const plugin = new Plugin({ name: "test", version: "0.1.0", description: "a test", capabilities: ["kv"], router });

test("a scope renders its errors and host failures", () => {
  const host = new TestHost();
  const bad = host.call(plugin, "GET", "/bad/x");
  assert.deepEqual([bad.status, bad.json().ours], [400, true]);
  assert.deepEqual(host.call(plugin, "GET", "/bad/7").json(), { n: 7 });
  const away = host.call(plugin, "GET", "/host");
  assert.equal(away.status, 503);
  assert.deepEqual(away.headers.find(([n]) => n === "retry-after"), ["retry-after", "1"]);
  const plain = host.call(plugin, "GET", "/plain", "{bad");
  assert.equal(plain.status, 400);
  assert.match(plain.json().error, /invalid JSON body/);
});

test("a guard turns callers away or gives handlers what it proved", () => {
  const host = new TestHost();
  const away = host.call(plugin, "GET", "/me");
  assert.deepEqual([away.status, away.json().problem], [401, "sign in first"]);
  const me = host.call(plugin, "GET", "/me", "", [["X-User", "ann"]]);
  assert.deepEqual(me.json(), { user: "ann" });
});

test("a conflict runs the handler again and keeps one run of writes", () => {
  const host = new TestHost().conflicts(2);
  assert.deepEqual(host.call(plugin, "POST", "/count").json(), { n: 1 });
  assert.equal(host.runs, 2, "two restarts");
  assert.deepEqual(host.call(plugin, "POST", "/count").json(), { n: 2 });
});

test("a description must match the routes", () => {
  const r = new Router().get("things.get", "/things/{id}", () => new Response(200));
  assert.deepEqual(r.checkDescription(), ["no description given"]);
  r.describe({ operations: { "things.get": {}, gone: {} } });
  assert.deepEqual(r.checkDescription(), ["route `gone` is described but does not exist"]);
  const doc = JSON.parse(r.openapi());
  assert.equal(doc.paths["/things/{id}"].get.operationId, "things.get");
});

test("hello is described as the Rust hello describes it", () => {
  assert.deepEqual(hello.router.checkDescription(), []);
  const rust = JSON.parse(readFileSync(new URL("../../../examples/hello/openapi.json", import.meta.url)));
  assert.deepEqual(helloDescription, rust);
});

test("hello greets, counts and echoes", () => {
  const host = new TestHost({ settings: { greeting: "Ahoy" } });
  assert.deepEqual(host.call(hello, "GET", "/hello/ann").json(), { greeting: "Ahoy, ann!" });
  for (const n of [1, 2]) {
    assert.deepEqual(host.call(hello, "POST", "/hello/ann/visits").json(), { name: "ann", visits: n });
  }
  assert.equal(host.admin(hello, ["visits", "ann"]), "ann: 2");
  host.admin(hello, ["reset", "ann"]);
  assert.equal(host.call(hello, "GET", "/hello/ann/visits").json().visits, 0);
  const echo = host.call(hello, "POST", "/echo", '{"message": "héllo"}');
  assert.deepEqual(echo.json(), { echo: "héllo", length: 5 });
});

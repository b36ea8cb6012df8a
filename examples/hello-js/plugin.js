// `hello` in JavaScript: the same routes and answers as examples/hello.
//
// - GET  /hello/{name}          a greeting (the word is the `greeting` setting)
// - POST /hello/{name}/visits   count a visit in KV, return the count
// - GET  /hello/{name}/visits   read the count
// - POST /echo                  JSON in, JSON out
//
// Admin commands (`berth run hello ...`): `visits NAME`, `reset NAME`.

import { Failure, Plugin, Response, Router, config, kv } from "../../plugins/sdk-js/index.js";
import description from "./openapi.js";

const visitsKey = (name) => `visits/${name}`;
const count = (name) => Number(kv.getString(visitsKey(name)) ?? 0);

const router = new Router()
  .get("hello.greet", "/hello/{name}", (req) => {
    const word = config.get("greeting") ?? "Hello";
    return Response.json(200, { greeting: `${word}, ${req.param("name")}!` });
  })
  .post("hello.visit", "/hello/{name}/visits", (req) => {
    const name = req.param("name");
    return Response.json(200, { name, visits: kv.increment(visitsKey(name), 1) });
  })
  .get("hello.visits", "/hello/{name}/visits", (req) => {
    const name = req.param("name");
    return Response.json(200, { name, visits: count(name) });
  })
  .post("hello.echo", "/echo", (req) => {
    const message = req.json()?.message;
    if (typeof message !== "string") {
      throw new Failure(400, "invalid JSON body: `message` must be a string");
    }
    return Response.json(200, { echo: message, length: [...message].length });
  })
  // The routes in OpenAPI terms, for /_berth/openapi.json.
  .describe(description);

function admin(args) {
  const [command, name] = args;
  if (args.length === 2 && command === "visits") return `${name}: ${count(name)}`;
  if (args.length === 2 && command === "reset") {
    kv.remove(visitsKey(name));
    return `${name}: visits reset`;
  }
  throw new Failure(400, "usage: berth run hello visits NAME | reset NAME");
}

export const plugin = new Plugin({
  name: "hello",
  version: "0.1.0",
  description: "Greets, counts visits, echoes JSON",
  capabilities: ["kv", "config", "log"],
  router,
  admin,
});

// node build.mjs ENTRY.js OUT.wasm: a Berth plugin in JavaScript (ENTRY is
// its component entry module) as a component of the berth:plugin world,
// with componentize-js (run `npm ci` here first).
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";
import { resolve } from "node:path";

const [entry, out] = process.argv.slice(2);
if (!entry || !out) throw new Error("usage: node build.mjs ENTRY.js OUT.wasm");
// BERTH_REPO: where the repository is when this script is run from a
// copy (the tests run it beside their own node_modules).
const root = process.env.BERTH_REPO ?? new URL("../..", import.meta.url).pathname;
const sourcePath = resolve(entry);
const output = resolve(out);
// The engine reads the plugin's modules from the folder it runs in: the
// repository, so a plugin may import the SDK by a relative path.
process.chdir(root);
const { component } = await componentize({
  sourcePath,
  witPath: "wit",
  worldName: "plugin",
});
await writeFile(output, component);

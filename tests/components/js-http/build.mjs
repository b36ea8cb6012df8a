// node build.mjs OUT.wasm [DIR]: DIR/app.js (DIR: this folder) as a
// wasi:http/proxy component, with componentize-js as pinned in
// plugins/sdk-js/package-lock.json.
//
// componentize-js 0.23's engine (StarlingMonkey) exports
// wasi:http/incoming-handler@0.2.10, so the world it is built against is
// ../wit at that version: the WIT is copied with its version rewritten
// and the two items gated on 0.2.11+ left ungated.
import { componentize } from "@bytecodealliance/componentize-js";
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const out = process.argv[2];
if (!out) throw new Error("usage: node build.mjs OUT.wasm [DIR]");
const here = process.argv[3] ?? new URL(".", import.meta.url).pathname;
const wit = await mkdtemp(join(tmpdir(), "berth-js-wit-"));
try {
  await cp(join(here, "../wit"), wit, { recursive: true });
  for (const dir of [wit, join(wit, "deps")]) {
    for (const name of await readdir(dir)) {
      if (!name.endsWith(".wit")) continue;
      const text = await readFile(join(dir, name), "utf8");
      const rewritten = text
        .replaceAll("@0.2.12", "@0.2.10")
        .split("\n")
        .filter((line) => !/@since\(version = 0\.2\.1[12]\)/.test(line))
        .join("\n");
      await writeFile(join(dir, name), rewritten);
    }
  }
  const { component } = await componentize({
    sourcePath: join(here, "app.js"),
    witPath: wit,
    worldName: "http",
  });
  await writeFile(out, component);
} finally {
  await rm(wit, { recursive: true, force: true });
}

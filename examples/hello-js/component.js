// The component's entry: the WIT interfaces hello uses, bound to the SDK,
// and the world's exports. Build: node ../../plugins/sdk-js/build.mjs
// component.js hello.wasm
import * as config from "berth:plugin/config@0.1.5";
import * as kv from "berth:plugin/kv@0.1.5";
import * as log from "berth:plugin/log@0.1.5";

import { plugin } from "./plugin.js";

export const { describe, handle, runJob, admin } = plugin.exports({ kv, config, log });

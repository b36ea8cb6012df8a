// The capability functions the SDK calls: the host's imports, bound by the
// plugin's component entry (`plugin.exports({ kv, config, log })`), or the
// test host's (`testing.js`) in Node.

let host = null;

/** A capability call the host refused: `kind` is `denied`, `invalid`,
 * `conflict` or `unavailable`. */
export class HostError extends Error {
  constructor(kind, message) {
    super(`${kind}: ${message}`);
    this.kind = kind;
    this.detail = message;
  }

  /** Whether the client should simply try again later. */
  get transient() {
    return this.kind === "conflict" || this.kind === "unavailable";
  }
}

/** Use `imports` ({ kv, config, log, ... }: the WIT interfaces) for
 * capability calls. */
export function bind(imports) {
  host = imports;
}

/** Call `module.fn(...args)` on the host, as `HostError` on refusal. */
export function call(module, fn, ...args) {
  const target = host?.[module];
  if (!target) {
    throw new HostError("denied", `the ${module} interface is not bound (plugin.exports({ ${module} }))`);
  }
  try {
    return target[fn](...args);
  } catch (e) {
    // A WIT error arrives as an exception carrying the variant.
    const payload = e?.payload;
    if (payload && typeof payload.tag === "string") {
      throw new HostError(payload.tag, String(payload.val ?? ""));
    }
    throw e;
  }
}

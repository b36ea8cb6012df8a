// A wasi:http component in JavaScript: a fetch-event handler, built with
// componentize-js (StarlingMonkey). It answers JSON of the request as it
// sees it, and at /fetch?url=URL fetches URL (wasi:http outgoing).
addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const pathInfo = request.headers.get("spin-path-info") ?? "/";
  const url = new URL(request.url);
  if (pathInfo === "/fetch") {
    try {
      const upstream = await fetch(url.searchParams.get("url"));
      return new Response(`fetched ${upstream.status}: ${await upstream.text()}`);
    } catch (e) {
      return new Response(`refused: ${e}`, { status: 502 });
    }
  }
  const seen = {
    language: "javascript",
    method: request.method,
    path_info: pathInfo,
    url: request.url,
    body: await request.text(),
  };
  return new Response(JSON.stringify(seen), {
    headers: { "content-type": "application/json" },
  });
}

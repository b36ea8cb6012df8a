//! `GET /hello/{name}` → `{"greeting":"Hello, NAME!"}`, as a wasi:http
//! proxy component for `wasmtime serve`.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (status, body) = match path.strip_prefix("/hello/") {
            Some(name) if !name.is_empty() && !name.contains(['/', '"', '\\']) => {
                (200, format!("{{\"greeting\":\"Hello, {name}!\"}}"))
            }
            _ => (404, "{\"error\":\"not found\"}".to_string()),
        };
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"application/json".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let outgoing = response.body().expect("a response body");
        ResponseOutparam::set(out, Ok(response));
        let mut stream = outgoing.write().expect("its stream");
        let _ = stream.write_all(body.as_bytes());
        let _ = stream.flush();
        drop(stream);
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

wasip2::http::proxy::export!(Hello);

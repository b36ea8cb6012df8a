//! Portainer sessions for the tests and benches: the first administrator
//! and endpoints made as a Portainer client makes them.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use super::docker::Engine;
use super::{Berth, call_bearer, client};

/// A `multipart/form-data` body of text fields and files, as the
/// Portainer API takes endpoints.
pub fn multipart(fields: &[(&str, &str)], files: &[(&str, &Path)]) -> (String, Vec<u8>) {
    let boundary = "berth-test-boundary-7d3c";
    let mut body = Vec::new();
    for (name, value) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .unwrap();
    }
    for (name, path) in files {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
             filename=\"{name}.pem\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(&std::fs::read(path).unwrap());
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// An administrator's JWT and the ids of a local and a TLS endpoint.
pub async fn admin_with_endpoints(berth: &Berth, engine: &Engine) -> (String, u64, u64) {
    let http = client();
    let admin = json!({ "Username": "admin", "Password": "adminpassword" });
    let (status, body) = call_bearer(
        &http,
        "POST",
        &berth.url("/api/users/admin/init"),
        None,
        Some(admin.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        call_bearer(&http, "POST", &berth.url("/api/auth"), None, Some(admin)).await;
    assert_eq!(status, 200, "{body}");
    let jwt = body["jwt"].as_str().unwrap().to_string();
    let tls = engine.tls.as_ref().expect("the private engine serves TLS");
    let mut ids = Vec::new();
    let forms = [
        multipart(&[("Name", "here"), ("EndpointType", "1")], &[]),
        multipart(
            &[
                ("Name", "tls"),
                ("EndpointType", "1"),
                ("URL", &tls.address),
                ("TLS", "true"),
            ],
            &[
                ("TLSCACertFile", &tls.ca),
                ("TLSCertFile", &tls.cert),
                ("TLSKeyFile", &tls.key),
            ],
        ),
    ];
    for (content_type, body) in forms {
        let answer = http
            .post(berth.url("/api/endpoints"))
            .bearer_auth(&jwt)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        ids.push(body["Id"].as_u64().unwrap());
    }
    (jwt, ids[0], ids[1])
}

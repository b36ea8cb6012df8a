//! schemathesis over the merged OpenAPI document (`/_berth/openapi.json`)
//! of the bundled plugins: no operation answers a 5xx to what it
//! generates, and every answer has a documented status, content type and
//! body schema, unauthenticated and with credentials for each surface.
//!
//! The Docker passthroughs (whose 5xx would be the engine's) and the
//! long-lived streams are left out. No engine is configured, so routes
//! that need one give their engine-down answers: a 5xx passes only where
//! the plugin documents that status for the operation (the check is in
//! `contract_checks.py`). The run is bounded (`EXAMPLES` per operation)
//! and seeded, so it generates the same requests every time.

mod support;

use std::process::Command;

use serde_json::json;
use support::{Berth, client};

const EXAMPLES: &str = "10";
const SEED: &str = "21";

/// Operations not run: Docker passthroughs, event and progress streams,
/// and logout (it would end the session the rest of the run uses).
const LEFT_OUT: &str = "(/docker/|^/d/|^/api/v0\\.2/d/|/events|/logout|/stream)";

/// What schemathesis checks of every answer.
const CHECKS: &str = "no_undocumented_server_error,status_code_conformance,\
                      content_type_conformance,response_schema_conformance";

#[tokio::test(flavor = "multi_thread")]
async fn no_operation_answers_a_server_error() {
    let Some(st) = support::schemathesis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(
        dir.path(),
        "[docker]\nlocal = \"unix:///nonexistent/berth-contract-docker.sock\"\n",
    );
    let http = client();

    // Credentials for each surface.
    let admin = json!({ "Username": "admin", "Password": "contract-password" });
    let r = http
        .post(berth.url("/api/users/admin/init"))
        .json(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let auth = support::json_of(http.post(berth.url("/api/auth")).json(&admin)).await;
    let jwt = auth["jwt"].as_str().unwrap().to_string();
    let secret = berth.cikit_user("boss", "owner");
    let (status, tokens) = support::call_bearer(
        &http,
        "POST",
        &berth.url("/api/v1/user/auth"),
        None,
        Some(json!({ "username": "boss", "code": support::totp(&secret, 0) })),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let cikit = tokens["access_token"].as_str().unwrap().to_string();
    let cloud = berth.cli_line(
        &["run", "stacks", "apikey:create", "alice"],
        "Authorization: ",
    );
    let cookie = support::lighthouse_admin(&berth).await;
    let (key, secret) = berth.commands_keys();

    let schema = berth.url("/_berth/openapi.json");
    let doc = support::json_of(http.get(&schema)).await;
    let mut described = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            if id.contains("docker") {
                continue; // The passthroughs answer what the engine answers.
            }
            let error = &op["responses"]["default"]["content"]["application/json"]["schema"];
            assert!(
                error.is_object(),
                "{method} {path} ({id}) documents no error body"
            );
            let success = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .any(|status| status.starts_with('2') || status == "101");
            let fallback = id.contains("not-found") || id.contains("unknown");
            // Writes the surface documents as never done here (405).
            let refused = op["responses"].get("405").is_some();
            assert!(
                success || fallback || refused || id == "cloud.action.cancel",
                "{method} {path} ({id}) documents no success"
            );
            described += 1;
        }
    }
    assert!(described > 100, "only {described} operations are described");

    let runs: [(&str, &[String], &str); 7] = [
        ("anyone", &[], ".*"),
        (
            "Portainer",
            &[format!("Authorization: Bearer {jwt}")],
            "^/api/(?!v1/|v0\\.2/|app/|audit/|infra/|repo/)",
        ),
        (
            "CIKit",
            &[format!("Authorization: Bearer {cikit}")],
            "^/api/v1/",
        ),
        (
            "Docker Cloud",
            &[
                format!("Authorization: {cloud}"),
                "Accept: application/json".into(),
            ],
            "^/api/(app|audit|infra|repo)/",
        ),
        (
            "Lighthouse",
            &[format!("Cookie: {cookie}")],
            "^/api/v0\\.2/",
        ),
        (
            "dokku-api",
            &[format!("Api-Key: {key}"), format!("Api-Secret: {secret}")],
            "^/commands",
        ),
        ("hello", &[], "^/(hello|echo)"),
    ];
    for (who, headers, paths) in runs {
        let mut cmd = Command::new(&st);
        // In the temp dir: schemathesis keeps a cache of past failures in
        // its working directory, and would replay them.
        cmd.current_dir(dir.path())
            .env("SCHEMATHESIS_HOOKS", "contract_checks")
            .env(
                "PYTHONPATH",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../tests"),
            )
            .args(["run", &schema, "--url", &berth.url("")])
            .args(["-c", CHECKS, "-n", EXAMPLES, "--seed", SEED])
            .args(["--request-timeout", "15"])
            .args(["--include-path-regex", paths])
            .args(["--exclude-path-regex", LEFT_OUT]);
        for header in headers {
            cmd.args(["-H", header]);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis as {who} found failures:\n{report}{}\nberth's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            berth.log()
        );
        assert!(
            report.contains("generated") && report.contains("passed"),
            "schemathesis as {who} ran no test:\n{report}"
        );
    }
    let (status, _) = support::call_bearer(
        &http,
        "GET",
        &berth.url("/api/v1/user/list"),
        Some(&cikit),
        None,
    )
    .await;
    assert_eq!(status, 200, "the credentials held through the run");
}

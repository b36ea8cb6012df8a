//! HTTPS with a generated certificate: HTTP/1.1 and HTTP/2 both served.

mod support;

use support::Berth;

#[tokio::test]
async fn tls_serves_http1_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let berth = Berth::start_with(
        dir.path(),
        "",
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    assert!(berth.url.starts_with("https://127.0.0.1:"), "{}", berth.url);

    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let h2 = reqwest::Client::builder()
        .add_root_certificate(root.clone())
        .build()
        .unwrap();
    let h1 = reqwest::Client::builder()
        .add_root_certificate(root)
        .http1_only()
        .build()
        .unwrap();

    for (client, version) in [
        (h2, reqwest::Version::HTTP_2),
        (h1, reqwest::Version::HTTP_11),
    ] {
        let r = client.get(berth.url("/hello/tls")).send().await.unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["greeting"], "Hello, tls!");
    }

    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(berth.url("/hello/x").replace("https", "http"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

//! nginx in front of Berth replicas, as an operator would put it (Debian's
//! `nginx-light`): round robin, a replica that refuses connections skipped.

use std::time::Duration;

/// A running nginx; stopped when dropped.
pub struct Nginx {
    pub url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's nginx, or None (and a note) when it is missing and PostgreSQL
/// is not required (the fleet's tests need both; CI has both).
pub fn binary() -> Option<&'static str> {
    let bin = "/usr/sbin/nginx";
    if std::path::Path::new(bin).exists() {
        return Some(bin);
    }
    if std::env::var("BERTH_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
        panic!("the fleet's tests need nginx (Debian `nginx-light`)");
    }
    eprintln!("SKIPPED the fleet behind nginx: install Debian's `nginx-light`");
    None
}

impl Nginx {
    /// nginx `bin` on a free loopback port in front of `upstreams`
    /// (`http://ADDR`), once it answers `/_berth/health`.
    pub async fn start(bin: &str, upstreams: &[&String]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let servers: String = upstreams
            .iter()
            .map(|u| {
                let addr = u.trim_start_matches("http://");
                format!("server {addr} max_fails=1 fail_timeout=2s;\n")
            })
            .collect();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1;\n\
             pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
             upstream berth {{ {servers} keepalive 32; }}\n\
             server {{ listen 127.0.0.1:{port}; client_max_body_size 64m;\n\
               location / {{ proxy_pass http://berth; proxy_http_version 1.1;\n\
                 proxy_set_header Host $http_host; proxy_buffering off;\n\
                 proxy_set_header Upgrade $http_upgrade;\n\
                 proxy_set_header Connection $connection_upgrade;\n\
                 proxy_next_upstream error timeout; }} }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = std::process::Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let c = super::client();
        super::poll(Duration::from_secs(30), "nginx to answer", || async {
            let r = c.get(format!("{url}/_berth/health")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        Nginx {
            url,
            child,
            _dir: dir,
        }
    }
}

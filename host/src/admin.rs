//! The host's own API: HTTP routes under `/_berth/` and the admin socket
//! (`DATA_DIR/admin.sock`, owner-only) used by `berth run` and
//! `berth plugins`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::app::App;
use crate::invoke::{Admin, Invocation, Kept, invoke};
use crate::store::StoreError;
use crate::web::{Response, error, full, json};

/// Routes under `/_berth/`.
pub async fn handle<B>(app: &App, req: &http::Request<B>, request_id: &str) -> Response {
    let path = req.uri().path().trim_end_matches('/');
    let known = [
        "/_berth/health",
        "/_berth/plugins",
        "/_berth/jobs",
        "/_berth/openapi.json",
        "/_berth/metrics",
    ];
    if !known.contains(&path) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no route for {} {}", req.method(), req.uri().path()),
            request_id,
        );
    }
    if req.method() != http::Method::GET {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not allowed on {path}", req.method()),
            request_id,
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    match path {
        "/_berth/health" => json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ok",
                "plugins": app.plugins.routing().plugins.len(),
                "replica": app.replica.id,
                "replicas": app.replica.alive(),
            }),
        ),
        "/_berth/plugins" | "/_berth/jobs" => {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match token {
                Some(t) if app.is_admin_token(t) && path == "/_berth/jobs" => {
                    json(StatusCode::OK, &app.jobs.status().await)
                }
                Some(t) if app.is_admin_token(t) => json(StatusCode::OK, &app.plugins_view().await),
                _ => {
                    let mut r = error(
                        StatusCode::UNAUTHORIZED,
                        "send `Authorization: Bearer TOKEN` with the admin token (DATA_DIR/admin-token or `admin_token` in the config)",
                        request_id,
                    );
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    r
                }
            }
        }
        "/_berth/openapi.json" => json(StatusCode::OK, &app.plugins.openapi()),
        _ => {
            let mut r = http::Response::new(full(app.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
    }
}

/// A request on the admin socket: one JSON line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum AdminRequest {
    /// The plugins view (same as `/_berth/plugins`).
    Plugins,
    /// Run a plugin's admin export.
    Run { plugin: String, args: Vec<String> },
    /// Job counts and dead jobs (same as `/_berth/jobs`).
    Jobs,
    /// Queue a dead job again.
    RetryJob { id: u64 },
}

/// The answer: one JSON line.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdminResponse {
    pub ok: bool,
    pub output: serde_json::Value,
}

impl From<Result<String, String>> for AdminResponse {
    fn from(result: Result<String, String>) -> Self {
        match result {
            Ok(text) => AdminResponse {
                ok: true,
                output: text.into(),
            },
            Err(text) => AdminResponse {
                ok: false,
                output: text.into(),
            },
        }
    }
}

/// Bind the admin socket (owner-only), refusing when another berth
/// answers on it. Bound before the server says it is listening, so `berth
/// run` works as soon as it does.
pub async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another berth is serving this data directory (its admin socket {} answers)",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serve the admin socket at `path` until `shutdown` flips, then remove it.
pub async fn serve_socket(
    app: Arc<App>,
    listener: UnixListener,
    path: &Path,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let app = app.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_client(app, stream).await {
                        tracing::debug!(error = %e, "admin socket client failed");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    let _ = std::fs::remove_file(path);
}

async fn serve_client(app: Arc<App>, stream: UnixStream) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<AdminRequest>(&line) {
            Ok(request) => answer(&app, request).await,
            Err(e) => AdminResponse {
                ok: false,
                output: format!("bad admin request: {e}").into(),
            },
        };
        let mut text = serde_json::to_string(&response)?;
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
    }
    Ok(())
}

async fn answer(app: &App, request: AdminRequest) -> AdminResponse {
    match request {
        AdminRequest::Plugins => AdminResponse {
            ok: true,
            output: app.plugins_view().await,
        },
        AdminRequest::Jobs => AdminResponse {
            ok: true,
            output: app.jobs.status().await,
        },
        AdminRequest::RetryJob { id } => app.jobs.retry(id).await.into(),
        AdminRequest::Run { plugin, args } => run(app, &plugin, args).await.into(),
    }
}

/// Run plugin `name`'s admin export with `args`; commit its writes.
pub async fn run(app: &App, name: &str, args: Vec<String>) -> Result<String, String> {
    let routing = app.plugins.routing();
    let Some(plugin) = routing.plugins.get(name).cloned() else {
        let names: Vec<&str> = routing.plugins.keys().map(String::as_str).collect();
        return Err(format!(
            "no plugin named `{name}` is mounted (mounted: {})",
            names.join(", ")
        ));
    };
    drop(routing);
    let request_id = app.next_request_id();
    tracing::info!(plugin = %name, request_id, "admin command");
    let invocation = Invocation {
        call: Admin(args),
        request_id,
        deadline: std::time::Instant::now() + plugin.limits.deadline,
        rerun: false,
    };
    let finished = invoke(app.plugins.runtime(), &plugin, invocation)
        .await
        .map_err(|e| format!("plugin `{name}` failed: {e}"))?;
    match finished.writes.commit().await {
        Kept::Committed | Kept::Dropped => finished.value,
        Kept::Failed(StoreError::Aborted(why)) => Err(why),
        Kept::Failed(e) => Err(format!("storage failed: {e}")),
    }
}

/// Client side: send one request to the admin socket of `data_dir`.
pub async fn request(socket: &Path, request: &AdminRequest) -> anyhow::Result<AdminResponse> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach a running berth at {} ({e}); start `berth serve` with the same data directory",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let answer = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("berth closed the admin socket without answering"))?;
    Ok(serde_json::from_str(&answer)?)
}

//! `http-out`: outbound HTTP(S) with an allow-list, checked again on every
//! resolved address so a name cannot smuggle a request to a loopback,
//! private or link-local address; a response size cap; a timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasData, Linker};

use crate::bindings::HttpFailure;
use crate::bindings::http_out::{Host, HttpError, Incoming, Outgoing};
use crate::capability::Capability;
use crate::caps::{CallCx, Caller, HasCall, Unit};
use crate::config::HttpOutConfig;

/// The shared client and its policy.
pub struct HttpOut {
    client: reqwest::Client,
    policy: Arc<Policy>,
}

/// Which destinations are allowed.
#[derive(Debug)]
pub struct Policy {
    allow: Vec<String>,
    allow_private: Vec<String>,
    timeout: Duration,
    max_response: usize,
}

/// Whether `host` matches a pattern: exact, `*.suffix`, or `*`.
fn matches(patterns: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    patterns.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        p == "*"
            || p == host
            || p.strip_prefix("*.")
                .is_some_and(|suffix| host.ends_with(&format!(".{suffix}")))
    })
}

/// Loopback, private, link-local, unspecified, multicast and other
/// non-public addresses.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // carrier-grade NAT
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
        }
    }
}

impl Policy {
    /// Refuse a host (by name) before any lookup.
    fn check_host(&self, host: &str) -> Result<(), String> {
        if matches(&self.allow, host) {
            Ok(())
        } else {
            Err(format!(
                "host `{host}` is not in the operator's allow-list ([http_out] allow)"
            ))
        }
    }

    /// Refuse an address the host resolved to.
    fn check_addr(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        if is_internal(ip) && !matches(&self.allow_private, host) {
            return Err(format!(
                "`{host}` resolves to {ip}, a non-public address; an operator allows it with \
                 [http_out] allow_private = [\"{host}\"]"
            ));
        }
        Ok(())
    }
}

/// DNS resolution that drops addresses the policy refuses.
struct CheckedResolver(Arc<Policy>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.check_addr(&host, a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refusal = Some(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refusal.unwrap_or_else(|| format!("`{host}` did not resolve"));
                return Err(why.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl HttpOut {
    pub fn new(config: &HttpOutConfig) -> anyhow::Result<HttpOut> {
        let policy = Arc::new(Policy {
            allow: config.allow.clone(),
            allow_private: config.allow_private.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            max_response: (config.max_response_kib as usize) << 10,
        });
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(CheckedResolver(policy.clone())))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpOut { client, policy })
    }

    /// Whether `url` passes the policy as far as it can be told without
    /// resolving its host: scheme, host name, and an IP literal's address.
    pub fn check(&self, url: &str) -> Result<reqwest::Url, HttpError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| HttpError::Invalid(format!("bad URL {url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::Invalid(format!(
                "only http and https URLs, not {}",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| HttpError::Invalid("the URL has no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.policy.check_host(host).map_err(HttpError::Refused)?;
        // IP literals skip DNS, so check them here.
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.policy
                .check_addr(host, ip)
                .map_err(HttpError::Refused)?;
        }
        Ok(url)
    }

    /// `check`, and every address the URL's host resolves to now (for a
    /// URL kept to use later, as a Docker URL endpoint is).
    pub async fn check_resolved(&self, url: &str) -> Result<(), HttpError> {
        let url = self.check(url)?;
        let host = url.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let resolved = tokio::net::lookup_host((host, port)).await;
        let addresses = resolved.map_err(|e| HttpError::Unreachable(format!("{host}: {e}")))?;
        for address in addresses {
            let ip = address.ip();
            self.policy
                .check_addr(host, ip)
                .map_err(HttpError::Refused)?;
        }
        Ok(())
    }

    /// Send `request` under the policy.
    pub async fn send(&self, request: Outgoing) -> Result<Incoming, HttpError> {
        let url = self.check(&request.url)?;
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| HttpError::Invalid(format!("bad method {:?}", request.method)))?;
        let timeout = match request.timeout_ms {
            0 => self.policy.timeout,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let mut builder = self
            .client
            .request(method, url.clone())
            .timeout(timeout)
            .body(request.body);
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let exchange = async {
            let mut response = builder.send().await.map_err(|e| classify(&url, e))?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| classify(&url, e))? {
                if body.len() + chunk.len() > self.policy.max_response {
                    return Err(HttpError::TooLarge(format!(
                        "the answer from {url} is over the {} byte cap",
                        self.policy.max_response
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Incoming {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout),
        }
    }
}

fn classify(url: &reqwest::Url, e: reqwest::Error) -> HttpError {
    if e.is_timeout() {
        return HttpError::Timeout;
    }
    // Our resolver's refusal arrives as a connect error; say it plainly.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    if text.contains("non-public address") {
        return HttpError::Refused(text);
    }
    HttpError::Unreachable(format!("{url}: {text}"))
}

/// What `http-out` sees of a call: the caller and the shared client.
pub struct HttpOutView<'a> {
    caller: Caller<'a>,
    http: &'a HttpOut,
}

/// Links `http-out` to [`HttpOutView`].
pub struct HttpOutCap;

impl HasData for HttpOutCap {
    type Data<'a> = HttpOutView<'a>;
}

impl Unit for HttpOutCap {
    fn view(call: &mut CallCx) -> HttpOutView<'_> {
            let (caller, env, _) = call.split();
            HttpOutView {
                caller,
                http: &env.services.http,
            }
    }

    fn link<T: HasCall>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        crate::bindings::http_out::add_to_linker::<T, Self>(linker, |s| Self::view(s.call()))
    }
}

impl HttpOutView<'_> {
    /// `Ok` if the plugin holds `http-out`.
    fn granted(&self) -> Result<(), HttpError> {
        let granted = self.caller.check(Capability::HttpOut);
        granted.map_err(|e| HttpError::Denied(crate::caps::denied_text(&e)))
    }
}

impl Host for HttpOutView<'_> {
    async fn send(&mut self, request: Outgoing) -> Result<Incoming, HttpFailure> {
        self.caller.acted("an outbound HTTP request");
        self.granted()?;
        Ok(self.http.send(request).await?)
    }

    async fn check(&mut self, url: String) -> Result<(), HttpFailure> {
        self.granted()?;
        self.http.check(&url)?;
        Ok(())
    }

    /// An outbound request's error reaches the plugin; a trap ends the call.
    fn convert_http_error(&mut self, err: HttpFailure) -> wasmtime::Result<HttpError> {
        err.downcast()
    }
}

/// Text of any `http-out` error.
pub fn error_text(e: &HttpError) -> String {
    match e {
        HttpError::Denied(m)
        | HttpError::Invalid(m)
        | HttpError::Refused(m)
        | HttpError::Unreachable(m)
        | HttpError::TooLarge(m) => m.clone(),
        HttpError::Timeout => "no answer within the timeout".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_internal_addresses() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches(&p(&["*.example.com"]), "hooks.example.com"));
        assert!(!matches(&p(&["*.example.com"]), "example.com.evil.org"));
        assert!(matches(&p(&["127.0.0.1"]), "127.0.0.1"));
        assert!(!matches(&p(&[]), "x"));
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "2606:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }
}

//! `hello`: the example Berth plugin, and the template to copy.
//!
//! Routes:
//! - `GET  /hello/{name}`          a greeting (the greeting word comes from config)
//! - `POST /hello/{name}/visits`   count a visit in KV, return the count
//! - `GET  /hello/{name}/visits`   read the count
//! - `POST /echo`                  JSON in, JSON out
//!
//! Admin commands (`berth run hello ...`): `visits NAME`, `reset NAME`.

use berth_sdk::Capability;
use berth_sdk::{HttpResult, Info, Plugin, Request, Response, Router, config, kv};
use serde::{Deserialize, Serialize};

struct Hello;

impl Plugin for Hello {
    fn info() -> Info {
        Info::new(
            "hello",
            env!("CARGO_PKG_VERSION"),
            "Greets, counts visits, echoes JSON",
        )
        .capabilities(&[Capability::Kv, Capability::Config, Capability::Log])
    }

    fn router() -> Router {
        Router::new()
            .get("hello.greet", "/hello/{name}", greet)
            .post("hello.visit", "/hello/{name}/visits", visit)
            .get("hello.visits", "/hello/{name}/visits", visits)
            .post("hello.echo", "/echo", echo)
            // The routes in OpenAPI terms, for /_berth/openapi.json.
            .describe(include_str!("../openapi.json"))
    }

    fn admin(args: Vec<String>) -> Result<String, String> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match args.as_slice() {
            ["visits", name] => Ok(format!(
                "{name}: {}",
                count(name).map_err(|e| berth_sdk::error_text(&e))?
            )),
            ["reset", name] => {
                kv::delete(&visits_key(name)).map_err(|e| berth_sdk::error_text(&e))?;
                Ok(format!("{name}: visits reset"))
            }
            _ => Err("usage: berth run hello visits NAME | reset NAME".to_string()),
        }
    }
}

fn greet(req: &Request) -> HttpResult {
    let name = req.param("name").unwrap_or("world");
    let word = config::get("greeting")?.unwrap_or_else(|| "Hello".to_string());
    Ok(Response::json(
        200,
        &serde_json::json!({ "greeting": format!("{word}, {name}!") }),
    ))
}

fn visits_key(name: &str) -> String {
    format!("visits/{name}")
}

fn count(name: &str) -> Result<i64, berth_sdk::Error> {
    Ok(kv::get_string(&visits_key(name))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

#[derive(Serialize)]
struct Visits<'a> {
    name: &'a str,
    visits: i64,
}

fn visit(req: &Request) -> HttpResult {
    let name = req.param("name").unwrap_or("world");
    let visits = kv::increment(&visits_key(name), 1)?;
    Ok(Response::json(200, &Visits { name, visits }))
}

fn visits(req: &Request) -> HttpResult {
    let name = req.param("name").unwrap_or("world");
    Ok(Response::json(
        200,
        &Visits {
            name,
            visits: count(name)?,
        },
    ))
}

#[derive(Deserialize)]
struct EchoIn {
    message: String,
}

fn echo(req: &Request) -> HttpResult {
    let input: EchoIn = req.json()?;
    Ok(Response::json(
        200,
        &serde_json::json!({ "echo": input.message, "length": input.message.chars().count() }),
    ))
}

berth_sdk::export!(Hello);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        assert_eq!(Hello::router().check_description(), Ok(()));
    }

    /// The routes, run by the SDK's test host: no Berth needed.
    #[cfg(not(target_arch = "wasm32"))]
    mod test_host {
        use super::*;
        use berth_sdk::testing::TestHost;

        #[test]
        fn greets_with_the_configured_word() {
            let router = Hello::router();
            let host = TestHost::new();
            let answer = host.call(&router, "GET", "/hello/ann", b"");
            assert_eq!(answer.status, 200);
            assert_eq!(answer.json()["greeting"], "Hello, ann!");
            let host = TestHost::new().setting("greeting", "Ahoy");
            let answer = host.call(&router, "GET", "/hello/bob", b"");
            assert_eq!(answer.json()["greeting"], "Ahoy, bob!");
        }

        #[test]
        fn visits_are_counted_per_name_and_reset_by_the_admin_command() {
            let router = Hello::router();
            let host = TestHost::new();
            for expected in 1..=3 {
                let answer = host.call(&router, "POST", "/hello/ann/visits", b"");
                assert_eq!(answer.json()["visits"], expected);
            }
            host.call(&router, "POST", "/hello/bob/visits", b"");
            let ann = host.call(&router, "GET", "/hello/ann/visits", b"");
            assert_eq!(
                ann.json(),
                serde_json::json!({ "name": "ann", "visits": 3 })
            );
            assert_eq!(
                host.admin(Hello::admin, &["visits", "ann"]).as_deref(),
                Ok("ann: 3")
            );
            assert!(host.admin(Hello::admin, &["reset", "ann"]).is_ok());
            assert_eq!(host.get("visits/ann"), None);
            assert_eq!(host.get("visits/bob").as_deref(), Some(&b"1"[..]));
            assert!(
                host.admin(Hello::admin, &["bogus"])
                    .unwrap_err()
                    .starts_with("usage")
            );
        }

        #[test]
        fn a_racing_visit_is_counted_once() {
            let router = Hello::router();
            let host = TestHost::new();
            // The increment meets a racing call twice: the SDK runs the
            // handler again, and one visit is stored.
            host.conflicts(2);
            let answer = host.call(&router, "POST", "/hello/ann/visits", b"");
            assert_eq!(answer.status, 200);
            assert_eq!(answer.json()["visits"], 1);
            assert_eq!(host.get("visits/ann").as_deref(), Some(&b"1"[..]));
        }

        #[test]
        fn echo_answers_json_and_refuses_what_is_not() {
            let router = Hello::router();
            let host = TestHost::new();
            let answer = host.call(
                &router,
                "POST",
                "/echo",
                r#"{"message":"héllo"}"#.as_bytes(),
            );
            assert_eq!(
                answer.json(),
                serde_json::json!({ "echo": "héllo", "length": 5 })
            );
            let bad = host.call(&router, "POST", "/echo", b"{");
            assert_eq!(bad.status, 400, "{}", bad.text());
        }
    }
}

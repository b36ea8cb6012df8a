//! Lists as Docker Cloud pages them (`meta` and `objects`), and filters.

use berth_sdk::{HttpResult, Request, Response};
use serde_json::{Value, json};

use crate::cloud::fail;

pub(super) fn page(req: &Request, base: &str, objects: Vec<Value>) -> HttpResult {
    let limit = req.query_as::<usize>("limit")?.unwrap_or(25).clamp(1, 1000);
    let offset = req.query_as::<usize>("offset")?.unwrap_or(0);
    let total = objects.len();
    let link = |offset: usize| {
        let mut q: Vec<String> = req
            .query_pairs()
            .iter()
            .filter(|(k, _)| k != "limit" && k != "offset")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        q.push(format!("limit={limit}"));
        q.push(format!("offset={offset}"));
        format!("{base}?{}", q.join("&"))
    };
    let next = (offset + limit < total).then(|| link(offset + limit));
    let previous = (offset > 0).then(|| link(offset.saturating_sub(limit)));
    let objects: Vec<Value> = objects.into_iter().skip(offset).take(limit).collect();
    Ok(Response::json(
        200,
        &json!({
            "meta": {
                "limit": limit,
                "next": next,
                "offset": offset,
                "previous": previous,
                "total_count": total,
            },
            "objects": objects,
        }),
    ))
}

/// Whether `obj` passes the request's filters (`field=value`,
/// `field__startswith=`, `a__b=` for the names this surface exposes).
pub(super) fn passes(req: &Request, obj: &Value, allowed: &[&str]) -> Result<bool, Response> {
    for (k, v) in req.query_pairs() {
        if matches!(k.as_str(), "limit" | "offset" | "format") {
            continue;
        }
        let (field, op) = match k.split_once("__") {
            Some((f, "startswith")) => (f, "startswith"),
            Some(_) => (k.as_str(), "exact"),
            None => (k.as_str(), "exact"),
        };
        if !allowed.contains(&field) {
            return Err(fail(400, &format!("unknown filter `{k}`")));
        }
        let actual = match &obj[field] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        // A resource filter matches its uri or its uuid.
        let ok = match op {
            "startswith" => actual.starts_with(v.as_str()),
            _ => actual == *v || actual.trim_end_matches('/').ends_with(&format!("/{v}")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

//! The pieces of `/_berth/openapi.json`: a plugin's fragment read with its
//! schemas put in the plugin's namespace, and the answers the host itself
//! gives on any plugin route.

use serde_json::{Map, Value, json};

/// The statuses the host may answer on any plugin route, in its own error
/// format, whatever the plugin documents.
const HOST_ANSWERS: [(&str, &str); 6] = [
    (
        "400",
        "the request body or a path parameter could not be read",
    ),
    ("408", "the request body did not arrive in time"),
    ("413", "the request body is over the plugin's limit"),
    ("500", "the plugin failed on this request"),
    (
        "503",
        "the plugin is busy, unavailable, or its transaction lost a conflict; retry after `Retry-After`",
    ),
    ("504", "the call ran out of time"),
];

const HOST_ERROR_REF: &str = "#/components/schemas/_berth.HostError";

/// The schema of the host's own error bodies (see `dispatch::error`).
pub fn host_error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error", "request_id"],
        "properties": {
            "error": { "type": "string" },
            "request_id": { "type": "string" },
        },
    })
}

/// Plugin `plugin`'s fragment (its manifest's `openapi` text): its
/// `paths`, and its component schemas renamed `PLUGIN.NAME` with every
/// `$ref` to them rewritten, so two plugins' schemas never clash. A bare
/// `paths` object (no `paths` key) is read as paths without schemas.
/// `None` when the text is not a JSON object.
pub fn fragment(plugin: &str, text: &str) -> Option<(Map<String, Value>, Map<String, Value>)> {
    let Ok(Value::Object(mut doc)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    if !doc.contains_key("paths") {
        doc = Map::from_iter([("paths".to_string(), Value::Object(doc))]);
    }
    let mut doc = Value::Object(doc);
    rename_refs(plugin, &mut doc);
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    let schemas = doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, schema)| (format!("{plugin}.{name}"), schema.clone()))
        .collect();
    Some((paths, schemas))
}

fn rename_refs(plugin: &str, value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), v) {
                    ("$ref", Value::String(target)) => {
                        if let Some(name) = target.strip_prefix("#/components/schemas/") {
                            *target = format!("#/components/schemas/{plugin}.{name}");
                        }
                    }
                    (_, v) => rename_refs(plugin, v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_refs(plugin, v)),
        _ => {}
    }
}

/// Document the host's own answers on operation `op`, when the plugin
/// documents the body of its errors (a `default` response with a JSON
/// schema): each status the host may answer gets either body, the
/// plugin's for that status (or its `default`) or the host's. An
/// operation that documents its errors as anything (as the Docker
/// passthroughs, whose errors are also the engine's) stays so.
pub fn add_host_answers(op: &mut Value) {
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    let error_body = "/content/application~1json/schema";
    if responses
        .get("default")
        .and_then(|d| d.pointer(error_body))
        .is_none()
    {
        return;
    }
    let host = json!({ "$ref": HOST_ERROR_REF });
    for (status, why) in HOST_ANSWERS {
        let plugin_schema = responses
            .get(status)
            .or_else(|| responses.get("default"))
            .and_then(|r| r.pointer(error_body))
            .cloned();
        let schema = match plugin_schema {
            Some(plugin) => json!({ "anyOf": [plugin, host] }),
            None => host.clone(),
        };
        // Marked, so a reader (or a test) can tell the host's answers
        // from the plugin's own.
        let entry = responses
            .entry(status)
            .or_insert_with(|| json!({ "description": why, "x-berth-host-answer": true }));
        entry["content"]["application/json"]["schema"] = schema;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_put_in_the_plugin_namespace() {
        let text = r##"{
            "paths": { "/a": { "get": { "responses": { "200": { "content": { "application/json":
                { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/A" } } } } } } } } },
            "components": { "schemas": { "A": { "properties": { "b": { "$ref": "#/components/schemas/B" } } },
                                         "B": { "type": "string" } } }
        }"##;
        let (paths, schemas) = fragment("p", text).unwrap();
        let keys: Vec<&String> = schemas.keys().collect();
        assert_eq!(keys, ["p.A", "p.B"]);
        assert_eq!(
            schemas["p.A"]["properties"]["b"]["$ref"],
            "#/components/schemas/p.B"
        );
        assert_eq!(
            paths["/a"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["items"]
                ["$ref"],
            "#/components/schemas/p.A"
        );
    }

    #[test]
    fn a_bare_paths_object_is_read_as_paths() {
        let (paths, schemas) = fragment("p", r#"{ "/a": { "get": {} } }"#).unwrap();
        assert!(paths.contains_key("/a"));
        assert!(schemas.is_empty());
        assert!(fragment("p", "[]").is_none());
        assert!(fragment("p", "not json").is_none());
    }

    #[test]
    fn host_answers_sit_beside_the_plugins() {
        let mut op = json!({ "responses": {
            "200": { "description": "ok" },
            "503": { "description": "conflict", "content": { "application/json": { "schema": { "$ref": "C" } } } },
            "default": { "description": "error", "content": { "application/json": { "schema": { "$ref": "E" } } } },
        }});
        add_host_answers(&mut op);
        let schema =
            |status: &str| op["responses"][status]["content"]["application/json"]["schema"].clone();
        assert_eq!(schema("503")["anyOf"][0]["$ref"], "C");
        assert_eq!(op["responses"]["503"]["description"], "conflict");
        assert_eq!(
            schema("413")["anyOf"][0]["$ref"],
            "E",
            "the plugin's default body"
        );
        assert_eq!(schema("413")["anyOf"][1]["$ref"], HOST_ERROR_REF);
        assert_eq!(op["responses"]["413"]["x-berth-host-answer"], true);
        assert!(op["responses"]["503"].get("x-berth-host-answer").is_none());
        assert!(schema("200").is_null(), "a success stays the plugin's");

        let anything = json!({ "responses": { "default": { "description": "anything" } } });
        let mut left = anything.clone();
        add_host_answers(&mut left);
        assert_eq!(left, anything, "errors documented as anything stay so");
    }
}

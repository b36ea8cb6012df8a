//! The infra API on the engine (`/api/infra/v1/`): the engine the Docker
//! Cloud objects run on as one node cluster (the swarm, or the engine
//! alone), its nodes (the swarm's nodes, or the engine), and the
//! bring-your-own-node provider, region and node type they belong to.
//! Nodes join or leave with `docker swarm join` and `leave`, not through
//! this API: its writes answer 405 in the surface's format.

use berth_sdk::{HttpResult, Request, Response, docker};
use serde_json::{Value, json};

use crate::cloud::paging::{page, passes};
use crate::cloud::{engine_error, fail};
use crate::model;

pub const NODE_URI: &str = "/api/infra/v1/node/";
pub const NODECLUSTER_URI: &str = "/api/infra/v1/nodecluster/";
const PROVIDER_URI: &str = "/api/infra/v1/provider/";
const REGION_URI: &str = "/api/infra/v1/region/";
const NODETYPE_URI: &str = "/api/infra/v1/nodetype/";
/// Docker Cloud's name for nodes brought by their owner.
const BYON: &str = "byon";
const BYON_LABEL: &str = "Own node";

/// The cluster the endpoint is, and its nodes.
struct Cluster {
    /// The swarm's id, or the engine's.
    id: String,
    name: String,
    created: Option<u64>,
    nodes: Vec<Node>,
}

struct Node {
    /// The swarm's node id, or the engine's.
    id: String,
    hostname: String,
    docker_version: String,
    ready: bool,
    address: Option<String>,
    created: Option<u64>,
    seen: Option<u64>,
    cpu: Option<f64>,
    memory_mib: Option<u64>,
    labels: Vec<String>,
}

/// A stable version-4-shaped uuid for an engine or swarm id: nodes and
/// clusters keep theirs without being stored.
fn uuid_of(kind: &str, id: &str) -> String {
    // Two FNV-1a 64-bit hashes with different offsets: 128 stable bits.
    let fnv = |offset: u64| model::fnv1a(offset, kind.bytes().chain([0]).chain(id.bytes()));
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&fnv(model::FNV_OFFSET).to_be_bytes());
    b[8..].copy_from_slice(&fnv(0x6c62_272e_07bb_0142).to_be_bytes());
    model::uuid4_text(b)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn seconds(v: &Value) -> Option<u64> {
    v.as_str().and_then(berth_sdk::time::parse_rfc3339)
}

/// The endpoint as a cluster: a swarm manager's swarm and nodes, or the
/// engine as a cluster of one.
fn cluster(endpoint: &str) -> Result<Cluster, Response> {
    if let Ok(swarm) = docker::swarm_inspect(endpoint) {
        let swarm = json_of(&swarm);
        let list = json_of(&docker::node_list(endpoint, &[]).map_err(engine_error)?);
        let nodes = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| Node {
                id: n["ID"].as_str().unwrap_or_default().to_string(),
                hostname: n["Description"]["Hostname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                docker_version: n["Description"]["Engine"]["EngineVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ready: n["Status"]["State"] == "ready",
                address: n["Status"]["Addr"].as_str().map(str::to_string),
                created: seconds(&n["CreatedAt"]),
                seen: seconds(&n["UpdatedAt"]),
                cpu: n["Description"]["Resources"]["NanoCPUs"]
                    .as_f64()
                    .map(|c| c / 1e9),
                memory_mib: n["Description"]["Resources"]["MemoryBytes"]
                    .as_u64()
                    .map(|m| m >> 20),
                labels: labels(&n["Spec"]["Labels"]),
            })
            .collect();
        return Ok(Cluster {
            id: swarm["ID"].as_str().unwrap_or_default().to_string(),
            name: endpoint.to_string(),
            created: seconds(&swarm["CreatedAt"]),
            nodes,
        });
    }
    let info = json_of(&docker::info(endpoint).map_err(engine_error)?);
    let id = info["ID"].as_str().unwrap_or(endpoint).to_string();
    let node = Node {
        id: id.clone(),
        hostname: info["Name"].as_str().unwrap_or_default().to_string(),
        docker_version: info["ServerVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        ready: true,
        address: None,
        created: None,
        seen: Some(berth_sdk::time::now_secs()),
        cpu: info["NCPU"].as_f64(),
        memory_mib: info["MemTotal"].as_u64().map(|m| m >> 20),
        labels: info["Labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_string))
            .collect(),
    };
    Ok(Cluster {
        id,
        name: endpoint.to_string(),
        created: None,
        nodes: vec![node],
    })
}

fn labels(map: &Value) -> Vec<String> {
    let Some(map) = map.as_object() else {
        return Vec::new();
    };
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some("") | None => k.clone(),
            Some(v) => format!("{k}={v}"),
        })
        .collect()
}

fn cluster_uri(c: &Cluster) -> String {
    format!("{NODECLUSTER_URI}{}/", uuid_of("cluster", &c.id))
}

fn node_uri(n: &Node) -> String {
    format!("{NODE_URI}{}/", uuid_of("node", &n.id))
}

fn rfc2822(secs: Option<u64>) -> Option<String> {
    secs.map(berth_sdk::time::format_rfc2822)
}

fn render_node(c: &Cluster, n: &Node) -> Value {
    let uuid = uuid_of("node", &n.id);
    json!({
        "uuid": uuid,
        "resource_uri": node_uri(n),
        "external_fqdn": n.hostname,
        "nickname": n.hostname,
        "state": if n.ready { "Deployed" } else { "Unreachable" },
        "node_cluster": cluster_uri(c),
        "node_type": format!("{NODETYPE_URI}{BYON}/{BYON}/"),
        "region": format!("{REGION_URI}{BYON}/{BYON}/"),
        "availability_zone": Value::Null,
        "docker_version": n.docker_version,
        "docker_id": n.id,
        "public_ip": n.address,
        "private_ips": [],
        "cpu": n.cpu,
        "memory": n.memory_mib,
        "disk": Value::Null,
        "deployed_datetime": rfc2822(n.created),
        "destroyed_datetime": Value::Null,
        "last_seen": rfc2822(n.seen),
        "tags": n.labels.iter().map(|l| json!({ "name": l })).collect::<Vec<_>>(),
        "last_metric": {},
    })
}

fn render_cluster(c: &Cluster) -> Value {
    let nodes: Vec<String> = c.nodes.iter().map(node_uri).collect();
    let ready = c.nodes.iter().filter(|n| n.ready).count();
    json!({
        "uuid": uuid_of("cluster", &c.id),
        "resource_uri": cluster_uri(c),
        "name": c.name,
        "nickname": c.name,
        "state": if ready == c.nodes.len() { "Deployed" } else { "Partly deployed" },
        "current_num_nodes": ready,
        "target_num_nodes": c.nodes.len(),
        "nodes": nodes,
        "node_type": format!("{NODETYPE_URI}{BYON}/{BYON}/"),
        "region": format!("{REGION_URI}{BYON}/{BYON}/"),
        "provider_options": {},
        "disk": Value::Null,
        "deployed_datetime": rfc2822(c.created),
        "destroyed_datetime": Value::Null,
        "tags": [],
    })
}

/// The resource uri of the node the endpoint's own engine is: what its
/// containers' `node` names.
pub(super) fn local_node_uri(endpoint: &str) -> Result<String, Response> {
    let info = json_of(&docker::info(endpoint).map_err(engine_error)?);
    let swarm_node = info["Swarm"]["NodeID"].as_str().filter(|id| !id.is_empty());
    let id = swarm_node.or(info["ID"].as_str()).unwrap_or(endpoint);
    Ok(format!("{NODE_URI}{}/", uuid_of("node", id)))
}

pub fn node_list(req: &Request) -> HttpResult {
    let c = cluster(&model::cloud_endpoint())?;
    let mut objects = Vec::new();
    for n in &c.nodes {
        let v = render_node(&c, n);
        if passes(req, &v, &["uuid", "state", "node_cluster", "region"])? {
            objects.push(v);
        }
    }
    page(req, NODE_URI, objects)
}

pub fn node_get(req: &Request) -> HttpResult {
    let uuid = req.param("uuid").unwrap_or_default();
    let c = cluster(&model::cloud_endpoint())?;
    let node = c.nodes.iter().find(|n| uuid_of("node", &n.id) == uuid);
    let node = node.ok_or_else(|| fail(404, "Not found"))?;
    Ok(Response::json(200, &render_node(&c, node)))
}

pub fn nodecluster_list(req: &Request) -> HttpResult {
    let c = cluster(&model::cloud_endpoint())?;
    let v = render_cluster(&c);
    let objects = match passes(req, &v, &["uuid", "name", "state", "region"])? {
        true => vec![v],
        false => Vec::new(),
    };
    page(req, NODECLUSTER_URI, objects)
}

pub fn nodecluster_get(req: &Request) -> HttpResult {
    let c = cluster(&model::cloud_endpoint())?;
    if req.param("uuid") != Some(uuid_of("cluster", &c.id).as_str()) {
        return Err(fail(404, "Not found"));
    }
    Ok(Response::json(200, &render_cluster(&c)))
}

/// Node clusters and nodes come and go with the swarm (`docker swarm
/// join`, `leave`), not through this API.
pub fn infra_write(_: &Request) -> HttpResult {
    Err(fail(
        405,
        "Nodes here are brought by their owner: add or remove them with \
         `docker swarm join` and `docker swarm leave` on the engine",
    ))
}

fn provider() -> Value {
    json!({
        "name": BYON,
        "label": BYON_LABEL,
        "available": true,
        "regions": [format!("{REGION_URI}{BYON}/{BYON}/")],
        "resource_uri": format!("{PROVIDER_URI}{BYON}/"),
    })
}

fn region() -> Value {
    json!({
        "name": BYON,
        "label": BYON_LABEL,
        "available": true,
        "provider": format!("{PROVIDER_URI}{BYON}/"),
        "node_types": [format!("{NODETYPE_URI}{BYON}/{BYON}/")],
        "resource_uri": format!("{REGION_URI}{BYON}/{BYON}/"),
    })
}

fn node_type() -> Value {
    json!({
        "name": BYON,
        "label": BYON_LABEL,
        "available": true,
        "provider": format!("{PROVIDER_URI}{BYON}/"),
        "regions": [format!("{REGION_URI}{BYON}/{BYON}/")],
        "resource_uri": format!("{NODETYPE_URI}{BYON}/{BYON}/"),
    })
}

pub fn provider_list(req: &Request) -> HttpResult {
    page(req, PROVIDER_URI, vec![provider()])
}

pub fn provider_get(req: &Request) -> HttpResult {
    match req.param("name") {
        Some(BYON) => Ok(Response::json(200, &provider())),
        _ => Err(fail(404, "Not found")),
    }
}

pub fn region_list(req: &Request) -> HttpResult {
    page(req, REGION_URI, vec![region()])
}

pub fn region_get(req: &Request) -> HttpResult {
    match (req.param("provider"), req.param("name")) {
        (Some(BYON), Some(BYON)) => Ok(Response::json(200, &region())),
        _ => Err(fail(404, "Not found")),
    }
}

pub fn nodetype_list(req: &Request) -> HttpResult {
    page(req, NODETYPE_URI, vec![node_type()])
}

pub fn nodetype_get(req: &Request) -> HttpResult {
    match (req.param("provider"), req.param("name")) {
        (Some(BYON), Some(BYON)) => Ok(Response::json(200, &node_type())),
        _ => Err(fail(404, "Not found")),
    }
}

/// Availability zones: none for nodes brought by their owner.
pub fn az_list(req: &Request) -> HttpResult {
    page(req, "/api/infra/v1/az/", Vec::new())
}

#[cfg(test)]
mod tests {
    use super::uuid_of;

    #[test]
    fn ids_give_stable_distinct_version_4_uuids() {
        let a = uuid_of("node", "qz1ck0r6w5oe8q1v3x4u3k9b2");
        assert_eq!(a, uuid_of("node", "qz1ck0r6w5oe8q1v3x4u3k9b2"));
        assert_ne!(a, uuid_of("node", "qz1ck0r6w5oe8q1v3x4u3k9b3"));
        assert_ne!(a, uuid_of("cluster", "qz1ck0r6w5oe8q1v3x4u3k9b2"));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
    }
}

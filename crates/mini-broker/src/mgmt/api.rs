//! The endpoints: routing, authentication, and each handler.
//!
//! Every declare, delete, bind, publish and get goes through the same [`VHost`] methods the
//! AMQP connections use, so the API refuses what AMQP refuses, with the same texts. Errors
//! are mapped as RabbitMQ's management plugin maps them (checked against RabbitMQ 3.10):
//!
//! | what failed                                   | status | body                                              |
//! |-----------------------------------------------|--------|---------------------------------------------------|
//! | no or bad credentials                         | 401    | empty / `not_authorized`, `Login failed`          |
//! | unknown object on GET/DELETE                  | 404    | `Object Not Found`, `Not Found`                   |
//! | declare, bind: 404 from the broker            | 404    | `not_found`, the text after `NOT_FOUND - `        |
//! | declare, delete: 403 from the broker          | 401    | `not_authorised`, `Access refused.`               |
//! | declare, delete: other broker refusals        | 400    | `bad_request`, the text after `CODE_NAME - `      |
//! | publish, get: any broker refusal              | 400    | `bad_request`, `404 NOT_FOUND - ...` (code + text) |
//! | body not JSON / a key missing                 | 400    | `bad_request`, `not_json` / `[{key_missing,K}]`   |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_codec::{BasicProperties, FieldTable, ReplyCode, ShortString};
use bytes::Bytes;

use super::http::{base64_decode, base64_encode, quote_segment, Request, Response};
use super::json::{json_to_table, Json};
use super::objects::{self, QueueCounts, Snapshot, NODE};
use crate::broker::{Broker, ExchangeFlags, QueueFlags, VHost};
use crate::config::UserConfig;
use crate::connection::{dead_letter, notify_cancelled, persist};
use crate::delivery::{ChannelLink, Outbox, Unacked};
use crate::error::{queue_resource, AmqpError};
use crate::exchange::Destination;
use crate::message::{Deadline, MessageContent, QueuedMessage};
use crate::permissions::{InvalidPattern, Permission, Permissions, Permit};
use crate::queue::{DeadLetters, Enqueued, Queue};

/// The RabbitMQ version whose management API this one follows.
pub const API_VERSION: &str = "3.10.8";

/// The connection id the API acts as: no AMQP connection has it (ids start at 1), so the
/// API may not use another connection's exclusive queue, as RabbitMQ's may not.
const API_CONNECTION: u64 = 0;

/// The management API of one broker.
pub struct Api {
    /// The broker.
    pub broker: Arc<Broker>,
    /// The AMQP listener's address (shown in the overview).
    pub amqp_addr: SocketAddr,
    /// The management listener's address.
    pub mgmt_addr: SocketAddr,
}

type Reply = Result<Response, Response>;

// ---- error responses ----------------------------------------------------------------------

fn error_json(status: u16, error: &str, reason: impl Into<Json>) -> Response {
    Response::json(
        status,
        &Json::object()
            .with("error", error)
            .with("reason", reason.into()),
    )
}

/// 404 `{"error":"Object Not Found","reason":"Not Found"}`.
pub fn not_found() -> Response {
    error_json(404, "Object Not Found", "Not Found")
}

fn bad_request(reason: impl Into<Json>) -> Response {
    error_json(400, "bad_request", reason)
}

fn not_authorised(reason: &str) -> Response {
    error_json(401, "not_authorised", reason)
        .with_header("www-authenticate", "Basic realm=\"RabbitMQ Management\"")
}

fn method_not_allowed(allowed: &str) -> Response {
    Response::empty(405).with_header("allow", allowed)
}

/// A change that could not be written to the data directory, and so was not made: 500,
/// with the error, and a log line for the operator.
fn not_kept(err: std::io::Error) -> Response {
    tracing::error!("permission change not made: cannot write the permissions file: {err}");
    error_json(
        500,
        "internal_server_error",
        format!("cannot keep the change: {err}"),
    )
}

fn key_missing(key: &str) -> Response {
    bad_request(format!("[{{key_missing,{key}}}]"))
}

/// The text of a broker error without its `CODE_NAME - ` prefix.
fn detail(error: &AmqpError) -> &str {
    match error.text.split_once(" - ") {
        Some((_, rest)) => rest,
        None => &error.text,
    }
}

/// A refusal of a declare, delete or bind, as RabbitMQ's management plugin answers it.
fn definition_error(error: &AmqpError) -> Response {
    match error.code {
        ReplyCode::ACCESS_REFUSED => not_authorised("Access refused."),
        ReplyCode::NOT_FOUND => error_json(404, "not_found", detail(error)),
        _ => bad_request(detail(error)),
    }
}

/// A refusal of a publish or get: the code and the whole text.
fn channel_error(error: &AmqpError) -> Response {
    bad_request(error.to_string())
}

// ---- request helpers ----------------------------------------------------------------------

/// The JSON body as an object; an empty body is an empty object.
fn body_object(request: &Request) -> Result<Json, Response> {
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Json::object());
    }
    match Json::parse(&request.body) {
        Ok(json @ Json::Object(_)) => Ok(json),
        _ => Err(bad_request("not_json")),
    }
}

/// A boolean field: JSON true/false or the strings "true"/"false" (rabbitmqadmin sends
/// strings); `default` when absent.
fn bool_field(body: &Json, key: &str, default: bool) -> Result<bool, Response> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(default),
        Some(Json::Bool(b)) => Ok(*b),
        Some(Json::String(s)) if s == "true" => Ok(true),
        Some(Json::String(s)) if s == "false" => Ok(false),
        Some(other) => Err(bad_request(Json::Array(vec![
            Json::from("not_boolean"),
            match other {
                Json::String(s) => Json::from(s.as_str()),
                other => Json::from(other.to_text()),
            },
        ]))),
    }
}

/// A string field, `default` when absent.
fn string_field<'a>(body: &'a Json, key: &str, default: &'a str) -> Result<&'a str, Response> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(default),
        Some(Json::String(s)) => Ok(s),
        Some(_) => Err(bad_request(format!("{key} must be a string"))),
    }
}

/// An integer field given as a number or a numeric string (rabbitmqadmin sends strings).
fn integer_field(body: &Json, key: &str) -> Result<Option<u64>, Response> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad_request(format!("{key} must be a non-negative integer"))),
        Some(Json::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| bad_request(format!("{key} must be a non-negative integer"))),
        Some(_) => Err(bad_request(format!("{key} must be a non-negative integer"))),
    }
}

/// The `arguments` field as a field table (absent: empty).
fn arguments_field(body: &Json) -> Result<FieldTable, Response> {
    match body.get("arguments") {
        None | Some(Json::Null) => Ok(FieldTable::new()),
        Some(Json::Array(items)) if items.is_empty() => Ok(FieldTable::new()),
        Some(json) => json_to_table(json).ok_or_else(|| bad_request("arguments must be an object")),
    }
}

/// A name that fits an AMQP short string.
fn short_name(name: &str) -> Result<ShortString, Response> {
    if name.len() > 255 {
        return Err(bad_request(format!(
            "name is {} bytes long; at most 255 are allowed",
            name.len()
        )));
    }
    Ok(ShortString::from(name))
}

/// The exchange a path names: `amq.default` is the default exchange "".
fn exchange_name(name: &str) -> Result<ShortString, Response> {
    short_name(if name == "amq.default" { "" } else { name })
}

/// Applies `columns`, `sort` and `sort_reverse` from the query to a list.
fn shape_list(request: &Request, mut items: Vec<Json>) -> Json {
    if let Some(key) = request.query("sort").filter(|k| !k.is_empty()) {
        items.sort_by(|a, b| compare_json(a.path(key), b.path(key)));
    }
    if request.query("sort_reverse") == Some("true") {
        items.reverse();
    }
    let items = match columns(request) {
        Some(columns) => items
            .into_iter()
            .map(|item| select_columns(item, &columns))
            .collect(),
        None => items,
    };
    Json::Array(items)
}

/// Applies `columns` from the query to one object.
fn shape_item(request: &Request, item: Json) -> Json {
    match columns(request) {
        Some(columns) => select_columns(item, &columns),
        None => item,
    }
}

fn columns(request: &Request) -> Option<Vec<String>> {
    let columns = request.query("columns")?;
    Some(
        columns
            .split(',')
            .filter(|c| !c.is_empty())
            .map(|c| c.split('.').next().unwrap_or(c).to_owned())
            .collect(),
    )
}

/// Keeps the top-level keys named by `columns` (a dotted column keeps its whole top-level
/// object, as RabbitMQ does).
fn select_columns(item: Json, columns: &[String]) -> Json {
    match item {
        Json::Object(entries) => Json::Object(
            entries
                .into_iter()
                .filter(|(k, _)| columns.iter().any(|c| c == k))
                .collect(),
        ),
        other => other,
    }
}

fn compare_json(a: Option<&Json>, b: Option<&Json>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Json::Number(x)), Some(Json::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Json::String(x)), Some(Json::String(y))) => x.cmp(y),
        (Some(Json::Bool(x)), Some(Json::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => x.to_text().cmp(&y.to_text()),
        (None, None) => Ordering::Equal,
    }
}

// ---- authentication -----------------------------------------------------------------------

/// The tags that let a user into the management API, as RabbitMQ's.
const MANAGEMENT_TAGS: [&str; 4] = ["management", "policymaker", "monitoring", "administrator"];

/// Who is asking.
struct Caller<'a> {
    user: &'a UserConfig,
    permissions: &'a Arc<Permissions>,
}

impl Caller<'_> {
    fn is_administrator(&self) -> bool {
        self.user.tags.iter().any(|t| t == "administrator")
    }

    /// Sees every vhost's objects (administrator, monitoring).
    fn sees_everything(&self) -> bool {
        self.user
            .tags
            .iter()
            .any(|t| t == "administrator" || t == "monitoring")
    }

    /// May act in (and see) `vhost`: has permissions there.
    fn may_use(&self, vhost: &str) -> bool {
        self.permissions.has_vhost_access(&self.user.name, vhost)
    }

    /// The caller's permissions in `vhost`, for the checks an AMQP client would meet
    /// (RabbitMQ's API acts on a connection as the caller).
    fn permit(&self, vhost: &VHost) -> Permit {
        Permit::new(self.permissions.clone(), &self.user.name, &vhost.name)
    }

    fn may_see(&self, vhost: &str) -> bool {
        self.sees_everything() || self.may_use(vhost)
    }
}

impl Api {
    /// Answers one request.
    pub fn handle(&self, request: &Request) -> Response {
        match request.segments.first().map(String::as_str) {
            Some("metrics") if request.segments.len() == 1 => {
                if request.method != "GET" && request.method != "HEAD" {
                    return method_not_allowed("GET, HEAD");
                }
                return Response::text(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    crate::metrics::render(&self.broker),
                );
            }
            Some("api") => {}
            _ => return not_found(),
        }
        let caller = match self.authenticate(request) {
            Ok(caller) => caller,
            Err(response) => return response,
        };
        let mut segments: Vec<&str> = request.segments[1..].iter().map(String::as_str).collect();
        if segments.last() == Some(&"") {
            segments.pop();
        }
        match self.route(request, &caller, &segments) {
            Ok(response) | Err(response) => response,
        }
    }

    fn authenticate(&self, request: &Request) -> Result<Caller<'_>, Response> {
        let unauthorised = || {
            Response::empty(401)
                .with_header("www-authenticate", "Basic realm=\"RabbitMQ Management\"")
        };
        let header = request.header("authorization").ok_or_else(unauthorised)?;
        let credentials = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
            .and_then(|b64| base64_decode(b64.trim()))
            .and_then(|raw| String::from_utf8(raw).ok());
        let login_failed = || {
            error_json(401, "not_authorized", "Login failed")
                .with_header("www-authenticate", "Basic realm=\"RabbitMQ Management\"")
        };
        let credentials = credentials.ok_or_else(login_failed)?;
        let (name, password) = credentials.split_once(':').ok_or_else(login_failed)?;
        let user = self
            .broker
            .config
            .users
            .iter()
            .find(|u| u.name == name && u.password == password)
            .ok_or_else(login_failed)?;
        if !user
            .tags
            .iter()
            .any(|t| MANAGEMENT_TAGS.contains(&t.as_str()))
        {
            return Err(not_authorised("Not management user"));
        }
        Ok(Caller {
            user,
            permissions: &self.broker.permissions,
        })
    }

    /// The vhost a path names, if it exists and the caller may see it.
    fn vhost(&self, caller: &Caller, name: &str) -> Result<Arc<VHost>, Response> {
        let vhost = self.broker.vhost(name).ok_or_else(not_found)?;
        if !caller.may_see(name) {
            return Err(not_authorised("User not authorised to access virtual host"));
        }
        Ok(vhost)
    }

    /// The vhost a write names: it must exist and the caller must have permissions there.
    fn vhost_for_write(&self, caller: &Caller, name: &str) -> Result<Arc<VHost>, Response> {
        let vhost = self
            .broker
            .vhost(name)
            .ok_or_else(|| error_json(404, "not_found", "vhost_not_found"))?;
        if !caller.may_use(name) {
            return Err(not_authorised("Access refused."));
        }
        Ok(vhost)
    }

    /// The vhosts a listing covers: one named in the path, or every one the caller sees.
    fn listed_vhosts(
        &self,
        caller: &Caller,
        name: Option<&str>,
    ) -> Result<Vec<Arc<VHost>>, Response> {
        match name {
            Some(name) => Ok(vec![self.vhost(caller, name)?]),
            None => Ok(self
                .broker
                .vhosts()
                .into_iter()
                .filter(|v| caller.may_see(&v.name))
                .collect()),
        }
    }

    fn route(&self, request: &Request, caller: &Caller, segments: &[&str]) -> Reply {
        let method = request.method.as_str();
        let get = method == "GET" || method == "HEAD";
        match segments {
            ["overview"] if get => Ok(self.overview(request, caller)),
            ["whoami"] if get => Ok(Response::json(
                200,
                &Json::object()
                    .with("name", caller.user.name.as_str())
                    .with("tags", tags_json(caller.user)),
            )),
            ["vhosts"] if get => self.list_vhosts(request, caller, None),
            ["vhosts", name] if get => self.list_vhosts(request, caller, Some(name)),
            ["vhosts", name, "connections"] if get => {
                self.vhost(caller, name)?;
                self.list_connections(request, caller, Some(name))
            }
            ["vhosts", name, "channels"] if get => {
                self.vhost(caller, name)?;
                self.list_channels(request, caller, Some(name), None)
            }
            ["users"] if get => self.list_users(request, caller, None),
            ["users", name] if get => self.list_users(request, caller, Some(name)),
            ["permissions"] if get => self.list_permissions(request, caller, None, None),
            ["vhosts", vhost, "permissions"] if get => {
                self.list_permissions(request, caller, Some(vhost), None)
            }
            ["users", user, "permissions"] if get => {
                self.list_permissions(request, caller, None, Some(user))
            }
            ["permissions", vhost, user] => match method {
                "GET" | "HEAD" => self.show_permission(request, caller, vhost, user),
                "PUT" => self.set_permission(request, caller, vhost, user),
                "DELETE" => self.clear_permission(caller, vhost, user),
                _ => Err(method_not_allowed("GET, PUT, DELETE")),
            },
            ["nodes"] if get => Ok(Response::json(
                200,
                &shape_list(request, vec![self.node_json()]),
            )),
            ["nodes", name] if get => {
                if *name != NODE {
                    return Err(not_found());
                }
                Ok(Response::json(200, &shape_item(request, self.node_json())))
            }
            ["healthchecks", "node"] if get => {
                Ok(Response::json(200, &Json::object().with("status", "ok")))
            }
            ["health", "checks", check @ ("alarms" | "local-alarms")] if get => {
                Ok(self.alarms_check(*check == "alarms"))
            }
            ["queues"] if get => self.list_queues(request, caller, None),
            ["queues", vhost] if get => self.list_queues(request, caller, Some(vhost)),
            ["queues", vhost, name] => match method {
                "GET" | "HEAD" => self.show_queue(request, caller, vhost, name),
                "PUT" => self.declare_queue(request, caller, vhost, name),
                "DELETE" => self.delete_queue(request, caller, vhost, name),
                _ => Err(method_not_allowed("GET, PUT, DELETE")),
            },
            ["queues", vhost, name, "contents"] => match method {
                "DELETE" => self.purge_queue(caller, vhost, name),
                _ => Err(method_not_allowed("DELETE")),
            },
            ["queues", vhost, name, "get"] => match method {
                "POST" => self.get_messages(request, caller, vhost, name),
                _ => Err(method_not_allowed("POST")),
            },
            ["queues", vhost, name, "bindings"] if get => {
                let vhost = self.vhost(caller, vhost)?;
                if vhost.queue(&short_name(name)?).is_none() {
                    return Err(not_found());
                }
                let items = objects::vhost_bindings(&vhost)
                    .into_iter()
                    .filter(|b| {
                        b.get("destination_type") == Some(&Json::from("queue"))
                            && b.get("destination") == Some(&Json::from(*name))
                    })
                    .collect();
                Ok(Response::json(200, &shape_list(request, items)))
            }
            ["exchanges"] if get => self.list_exchanges(request, caller, None),
            ["exchanges", vhost] if get => self.list_exchanges(request, caller, Some(vhost)),
            ["exchanges", vhost, name] => match method {
                "GET" | "HEAD" => self.show_exchange(request, caller, vhost, name),
                "PUT" => self.declare_exchange(request, caller, vhost, name),
                "DELETE" => self.delete_exchange(request, caller, vhost, name),
                _ => Err(method_not_allowed("GET, PUT, DELETE")),
            },
            ["exchanges", vhost, name, "publish"] => match method {
                "POST" => self.publish(request, caller, vhost, name),
                _ => Err(method_not_allowed("POST")),
            },
            ["exchanges", vhost, name, "bindings", side @ ("source" | "destination")] if get => {
                let vhost = self.vhost(caller, vhost)?;
                let exchange = exchange_name(name)?;
                if !vhost.has_exchange(&exchange) {
                    return Err(not_found());
                }
                let items = objects::vhost_bindings(&vhost)
                    .into_iter()
                    .filter(|b| {
                        if *side == "source" {
                            b.get("source") == Some(&Json::from(exchange.to_str_lossy().as_ref()))
                        } else {
                            b.get("destination_type") == Some(&Json::from("exchange"))
                                && b.get("destination")
                                    == Some(&Json::from(exchange.to_str_lossy().as_ref()))
                        }
                    })
                    .collect();
                Ok(Response::json(200, &shape_list(request, items)))
            }
            ["bindings"] if get => self.list_bindings(request, caller, None),
            ["bindings", vhost] if get => self.list_bindings(request, caller, Some(vhost)),
            ["bindings", vhost, "e", source, kind @ ("q" | "e"), destination] => match method {
                "GET" | "HEAD" => {
                    let items = self.bindings_between(caller, vhost, source, kind, destination)?;
                    Ok(Response::json(200, &shape_list(request, items)))
                }
                "POST" => self.bind(request, caller, vhost, source, kind, destination),
                _ => Err(method_not_allowed("GET, POST")),
            },
            ["bindings", vhost, "e", source, kind @ ("q" | "e"), destination, key] => {
                let items = self.bindings_between(caller, vhost, source, kind, destination)?;
                let found = items
                    .into_iter()
                    .find(|b| b.get("properties_key") == Some(&Json::from(*key)))
                    .ok_or_else(not_found)?;
                match method {
                    "GET" | "HEAD" => Ok(Response::json(200, &shape_item(request, found))),
                    "DELETE" => self.unbind(caller, vhost, source, kind, destination, key),
                    _ => Err(method_not_allowed("GET, DELETE")),
                }
            }
            ["connections"] if get => self.list_connections(request, caller, None),
            ["connections", name] => {
                let connection = self
                    .broker
                    .connections
                    .by_name(name)
                    .filter(|c| caller.may_see(&c.vhost))
                    .ok_or_else(not_found)?;
                match method {
                    "GET" | "HEAD" => Ok(Response::json(
                        200,
                        &shape_item(request, objects::connection_json(&connection)),
                    )),
                    "DELETE" => {
                        if !caller.is_administrator() && connection.user != caller.user.name {
                            return Err(not_authorised("Access refused."));
                        }
                        let reason = request
                            .header("x-reason")
                            .unwrap_or("Closed via management plugin");
                        connection.close(reason);
                        Ok(Response::empty(204))
                    }
                    _ => Err(method_not_allowed("GET, DELETE")),
                }
            }
            ["connections", name, "channels"] if get => {
                if self.broker.connections.by_name(name).is_none() {
                    return Err(not_found());
                }
                self.list_channels(request, caller, None, Some(name))
            }
            ["channels"] if get => self.list_channels(request, caller, None, None),
            ["channels", name] if get => {
                let (connection_name, _) = name.rsplit_once(" (").ok_or_else(not_found)?;
                let connection = self
                    .broker
                    .connections
                    .by_name(connection_name)
                    .filter(|c| caller.may_see(&c.vhost))
                    .ok_or_else(not_found)?;
                let channel = objects::channels_json(&connection)
                    .into_iter()
                    .find(|c| c.get("name") == Some(&Json::from(*name)))
                    .ok_or_else(not_found)?;
                Ok(Response::json(200, &shape_item(request, channel)))
            }
            ["consumers"] if get => self.list_consumers(request, caller, None),
            ["consumers", vhost] if get => self.list_consumers(request, caller, Some(vhost)),
            _ if !get && self.known_list(segments) => Err(method_not_allowed("GET, HEAD")),
            _ => Err(not_found()),
        }
    }

    /// Whether a path names a read-only listing (for 405 rather than 404).
    fn known_list(&self, segments: &[&str]) -> bool {
        matches!(
            segments,
            ["overview"
                | "whoami"
                | "vhosts"
                | "users"
                | "permissions"
                | "nodes"
                | "queues"
                | "exchanges"
                | "bindings"
                | "connections"
                | "channels"
                | "consumers"]
                | ["queues" | "exchanges" | "bindings" | "consumers", _]
        )
    }

    // ---- overview, vhosts, users, nodes ---------------------------------------------------

    fn overview(&self, request: &Request, caller: &Caller) -> Response {
        let vhosts: Vec<_> = self
            .broker
            .vhosts()
            .into_iter()
            .filter(|v| caller.may_see(&v.name))
            .collect();
        let (mut queues, mut exchanges, mut consumers) = (0usize, 0usize, 0usize);
        let (mut ready, mut unacked) = (0usize, 0usize);
        for vhost in &vhosts {
            let (vhost_queues, vhost_exchanges) = {
                let state = vhost.read();
                (
                    state.queues.values().cloned().collect::<Vec<_>>(),
                    state.exchanges.len(),
                )
            };
            exchanges += vhost_exchanges;
            queues += vhost_queues.len();
            for queue in vhost_queues {
                let state = queue.state();
                ready += state.ready.len();
                unacked += state.unacked;
                consumers += state.consumers.len();
            }
        }
        let connections: Vec<_> = self
            .broker
            .connections
            .all()
            .into_iter()
            .filter(|c| caller.may_see(&c.vhost))
            .collect();
        let channels: usize = connections
            .iter()
            .map(|c| crate::delivery::lock(&c.channels).len())
            .sum();
        let exchange_type = |name: &str, description: &str| {
            Json::object()
                .with("name", name)
                .with("description", description)
                .with("enabled", true)
        };
        let listener = |protocol: &str, addr: SocketAddr| {
            Json::object()
                .with("node", NODE)
                .with("protocol", protocol)
                .with("ip_address", addr.ip().to_string())
                .with("port", addr.port())
        };
        let overview = Json::object()
            .with("management_version", API_VERSION)
            .with("rates_mode", "none")
            .with(
                "exchange_types",
                vec![
                    exchange_type(
                        "direct",
                        "AMQP direct exchange, as per the AMQP specification",
                    ),
                    exchange_type(
                        "fanout",
                        "AMQP fanout exchange, as per the AMQP specification",
                    ),
                    exchange_type(
                        "headers",
                        "AMQP headers exchange, as per the AMQP specification",
                    ),
                    exchange_type(
                        "topic",
                        "AMQP topic exchange, as per the AMQP specification",
                    ),
                ],
            )
            .with("product_version", env!("CARGO_PKG_VERSION"))
            .with("product_name", "mini-broker")
            .with("rabbitmq_version", API_VERSION)
            .with("cluster_name", NODE)
            .with("disable_stats", false)
            .with("enable_queue_totals", false)
            .with(
                "message_stats",
                message_stats(&self.broker.stats.snapshot()),
            )
            .with("churn_rates", Json::object())
            .with(
                "queue_totals",
                Json::object()
                    .with("messages", ready + unacked)
                    .with("messages_details", Json::object().with("rate", 0.0))
                    .with("messages_ready", ready)
                    .with("messages_ready_details", Json::object().with("rate", 0.0))
                    .with("messages_unacknowledged", unacked)
                    .with(
                        "messages_unacknowledged_details",
                        Json::object().with("rate", 0.0),
                    ),
            )
            .with(
                "object_totals",
                Json::object()
                    .with("channels", channels)
                    .with("connections", connections.len())
                    .with("consumers", consumers)
                    .with("exchanges", exchanges)
                    .with("queues", queues),
            )
            .with("statistics_db_event_queue", 0u32)
            .with("node", NODE)
            .with(
                "listeners",
                vec![
                    listener("amqp", self.amqp_addr),
                    listener("http", self.mgmt_addr),
                ],
            )
            .with(
                "contexts",
                vec![Json::object()
                    .with("node", NODE)
                    .with("description", "RabbitMQ Management")
                    .with("path", "/")
                    .with("port", self.mgmt_addr.port().to_string())],
            );
        Response::json(200, &shape_item(request, overview))
    }

    fn list_vhosts(&self, request: &Request, caller: &Caller, name: Option<&str>) -> Reply {
        let vhosts = self.listed_vhosts(caller, name)?;
        let items: Vec<Json> = vhosts
            .iter()
            .map(|vhost| {
                let queues: Vec<_> = vhost.read().queues.values().cloned().collect();
                let (mut ready, mut unacked) = (0usize, 0usize);
                for queue in queues {
                    let state = queue.state();
                    ready += state.ready.len();
                    unacked += state.unacked;
                }
                Json::object()
                    .with("cluster_state", Json::object().with(NODE, "running"))
                    .with("description", "")
                    .with("messages", ready + unacked)
                    .with("messages_ready", ready)
                    .with("messages_unacknowledged", unacked)
                    .with(
                        "metadata",
                        Json::object()
                            .with("description", "")
                            .with("tags", Json::Array(Vec::new())),
                    )
                    .with("name", vhost.name.as_str())
                    .with("tags", Json::Array(Vec::new()))
                    .with("tracing", false)
            })
            .collect();
        match name {
            Some(_) => Ok(Response::json(
                200,
                &shape_item(request, items.into_iter().next().unwrap_or_default()),
            )),
            None => Ok(Response::json(200, &shape_list(request, items))),
        }
    }

    fn list_users(&self, request: &Request, caller: &Caller, name: Option<&str>) -> Reply {
        if !caller.is_administrator() {
            return Err(not_authorised("Not administrator user"));
        }
        let users = self.broker.config.users.iter().filter(|u| match name {
            Some(name) => u.name == name,
            None => true,
        });
        let items: Vec<Json> = users
            .map(|u| {
                Json::object()
                    .with("name", u.name.as_str())
                    .with("tags", tags_json(u))
                    .with("limits", Json::object())
            })
            .collect();
        match name {
            Some(_) => {
                let user = items.into_iter().next().ok_or_else(not_found)?;
                Ok(Response::json(200, &shape_item(request, user)))
            }
            None => Ok(Response::json(200, &shape_list(request, items))),
        }
    }

    // ---- permissions ----------------------------------------------------------------------

    /// `GET /api/permissions`, `/api/vhosts/{vhost}/permissions`,
    /// `/api/users/{user}/permissions`: administrators only, as in RabbitMQ; 404 for a vhost
    /// or user that does not exist.
    fn list_permissions(
        &self,
        request: &Request,
        caller: &Caller,
        vhost: Option<&str>,
        user: Option<&str>,
    ) -> Reply {
        if !caller.is_administrator() {
            return Err(not_authorised("Not administrator user"));
        }
        if vhost.is_some_and(|v| self.broker.vhost(v).is_none())
            || user.is_some_and(|u| !self.user_exists(u))
        {
            return Err(not_found());
        }
        let items = self
            .broker
            .permissions
            .all()
            .iter()
            .filter(|p| vhost.is_none_or(|v| p.vhost == v) && user.is_none_or(|u| p.user == u))
            .map(|p| permission_json(p))
            .collect();
        Ok(Response::json(200, &shape_list(request, items)))
    }

    fn user_exists(&self, name: &str) -> bool {
        self.broker.config.users.iter().any(|u| u.name == name)
    }

    /// `GET /api/permissions/{vhost}/{user}`.
    fn show_permission(
        &self,
        request: &Request,
        caller: &Caller,
        vhost: &str,
        user: &str,
    ) -> Reply {
        if !caller.is_administrator() {
            return Err(not_authorised("Not administrator user"));
        }
        let permission = self
            .broker
            .permissions
            .lookup(user, vhost)
            .ok_or_else(not_found)?;
        Ok(Response::json(
            200,
            &shape_item(request, permission_json(&permission)),
        ))
    }

    /// `PUT /api/permissions/{vhost}/{user}` with `configure`, `write` and `read`
    /// (`rabbitmqadmin declare permission`, `rabbitmqctl set_permissions`): 201 when new,
    /// 204 when it replaced the user's permissions there.
    fn set_permission(&self, request: &Request, caller: &Caller, vhost: &str, user: &str) -> Reply {
        if !caller.is_administrator() {
            return Err(not_authorised("Not administrator user"));
        }
        if self.broker.vhost(vhost).is_none() || !self.user_exists(user) {
            return Err(bad_request("vhost_or_user_not_found"));
        }
        let body = body_object(request)?;
        let mut patterns = Vec::with_capacity(3);
        for key in ["configure", "write", "read"] {
            match body.get(key) {
                Some(Json::String(pattern)) => patterns.push(pattern.as_str()),
                Some(_) => return Err(bad_request(format!("{key} must be a string"))),
                None => return Err(key_missing(key)),
            }
        }
        let permission = Permission::new(user, vhost, patterns[0], patterns[1], patterns[2])
            .map_err(|InvalidPattern { pattern, reason }| {
                bad_request(format!("invalid regular expression '{pattern}': {reason}"))
            })?;
        let replaced = self
            .broker
            .permissions
            .set_and_keep(permission)
            .map_err(not_kept)?;
        tracing::info!(
            "permissions of user '{user}' in vhost '{vhost}' set by '{}'",
            caller.user.name
        );
        Ok(Response::empty(if replaced { 204 } else { 201 }))
    }

    /// `DELETE /api/permissions/{vhost}/{user}` (`rabbitmqctl clear_permissions`).
    fn clear_permission(&self, caller: &Caller, vhost: &str, user: &str) -> Reply {
        if !caller.is_administrator() {
            return Err(not_authorised("Not administrator user"));
        }
        if !self
            .broker
            .permissions
            .clear_and_keep(user, vhost)
            .map_err(not_kept)?
        {
            return Err(not_found());
        }
        tracing::info!(
            "permissions of user '{user}' in vhost '{vhost}' cleared by '{}'",
            caller.user.name
        );
        Ok(Response::empty(204))
    }

    /// `GET /api/health/checks/alarms` (`local-alarms`): 200 `{"status":"ok"}`, or 503 with
    /// the alarms in effect, as RabbitMQ answers (monitoring uses the status code).
    fn alarms_check(&self, cluster: bool) -> Response {
        let alarms = self.broker.alarms();
        if !alarms.any() {
            return Response::json(200, &Json::object().with("status", "ok"));
        }
        let reason = if cluster {
            "There are alarms in effect in the cluster"
        } else {
            "There are alarms in effect on the node"
        };
        let listed = alarms
            .resources()
            .into_iter()
            .map(|r| Json::object().with("node", NODE).with("resource", r.name()))
            .collect::<Vec<_>>();
        Response::json(
            503,
            &Json::object()
                .with("status", "failed")
                .with("reason", reason)
                .with("alarms", listed),
        )
    }

    fn node_json(&self) -> Json {
        let alarms = self.broker.alarms();
        Json::object()
            .with("name", NODE)
            .with("type", "disc")
            .with("running", true)
            .with("uptime", self.broker.started.elapsed().as_millis() as u64)
            .with("mem_used", crate::metrics::resident_memory())
            .with("mem_limit", self.broker.memory_high_watermark())
            .with("mem_alarm", alarms.memory)
            .with("disk_free", self.broker.disk_free().unwrap_or(0))
            .with("disk_free_limit", self.broker.disk_free_limit())
            .with("disk_free_alarm", alarms.disk)
            .with(
                "processors",
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )
    }

    // ---- queues ---------------------------------------------------------------------------

    fn list_queues(&self, request: &Request, caller: &Caller, vhost: Option<&str>) -> Reply {
        let vhosts = self.listed_vhosts(caller, vhost)?;
        let snapshot = Snapshot::take(&self.broker, true);
        let mut items = Vec::new();
        for vhost in vhosts {
            let mut queues: Vec<_> = vhost.read().queues.values().cloned().collect();
            queues.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
            for queue in queues {
                let counts = QueueCounts::of(&queue);
                items.push(objects::queue_json(&queue, &counts, &snapshot));
            }
        }
        Ok(Response::json(200, &shape_list(request, items)))
    }

    fn show_queue(&self, request: &Request, caller: &Caller, vhost: &str, name: &str) -> Reply {
        let vhost = self.vhost(caller, vhost)?;
        let queue = vhost.queue(&short_name(name)?).ok_or_else(not_found)?;
        let snapshot = Snapshot::take(&self.broker, true);
        let counts = QueueCounts::of(&queue);
        let mut json = objects::queue_json(&queue, &counts, &snapshot);
        json.set(
            "consumer_details",
            objects::consumers_json(&queue, &counts, &snapshot),
        );
        json.set("deliveries", Json::Array(Vec::new()));
        json.set("incoming", Json::Array(Vec::new()));
        Ok(Response::json(200, &shape_item(request, json)))
    }

    fn declare_queue(&self, request: &Request, caller: &Caller, vhost: &str, name: &str) -> Reply {
        let vhost = self.vhost_for_write(caller, vhost)?;
        let body = body_object(request)?;
        let name = short_name(name)?;
        let flags = QueueFlags {
            passive: false,
            durable: bool_field(&body, "durable", false)?,
            exclusive: false,
            auto_delete: bool_field(&body, "auto_delete", false)?,
        };
        let arguments = arguments_field(&body)?;
        let existed = vhost.queue(&name).is_some();
        caller
            .permit(&vhost)
            .queue_declare(&vhost, &name, false, &arguments)
            .map_err(|e| definition_error(&e))?;
        vhost
            .declare_queue(API_CONNECTION, &name, flags, &arguments)
            .map_err(|e| definition_error(&e))?;
        Ok(Response::empty(if existed { 204 } else { 201 }))
    }

    fn delete_queue(&self, request: &Request, caller: &Caller, vhost: &str, name: &str) -> Reply {
        let vhost = self.vhost_for_write(caller, vhost)?;
        let name = short_name(name)?;
        if vhost.queue(&name).is_none() {
            return Err(not_found());
        }
        let if_unused = request.query("if-unused") == Some("true");
        let if_empty = request.query("if-empty") == Some("true");
        caller
            .permit(&vhost)
            .queue_delete(&name)
            .map_err(|e| definition_error(&e))?;
        let (_, consumers) = vhost
            .delete_queue(API_CONNECTION, &name, if_unused, if_empty)
            .map_err(|e| definition_error(&e))?;
        notify_cancelled(consumers);
        Ok(Response::empty(204))
    }

    fn purge_queue(&self, caller: &Caller, vhost: &str, name: &str) -> Reply {
        let vhost = self.vhost_for_write(caller, vhost)?;
        let name = short_name(name)?;
        if vhost.queue(&name).is_none() {
            return Err(not_found());
        }
        caller
            .permit(&vhost)
            .read_queue(&name)
            .map_err(|e| definition_error(&e))?;
        vhost
            .purge_queue(API_CONNECTION, &name)
            .map_err(|e| definition_error(&e))?;
        Ok(Response::empty(204))
    }

    /// `POST /api/queues/{vhost}/{name}/get`: takes up to `count` messages, then acks,
    /// requeues or rejects them as `ackmode` says (RabbitMQ does this on a channel that it
    /// then closes, which requeues what was not acked).
    fn get_messages(&self, request: &Request, caller: &Caller, vhost: &str, name: &str) -> Reply {
        let vhost = self.vhost_for_write(caller, vhost)?;
        let body = body_object(request)?;
        let count = integer_field(&body, "count")?.ok_or_else(|| key_missing("count"))?;
        let ackmode = string_field(&body, "ackmode", "")?;
        if body.get("ackmode").is_none() {
            return Err(key_missing("ackmode"));
        }
        let (requeue, reject) = match ackmode {
            "ack_requeue_true" => (true, false),
            "ack_requeue_false" => (false, false),
            "reject_requeue_true" => (true, true),
            "reject_requeue_false" => (false, true),
            other => {
                return Err(bad_request(Json::Array(vec![
                    Json::from("unknown_ackmode"),
                    Json::from(other),
                ])))
            }
        };
        let encoding = string_field(&body, "encoding", "auto")?;
        if encoding != "auto" && encoding != "base64" {
            return Err(bad_request(Json::Array(vec![
                Json::from("unsupported_encoding"),
                Json::from(encoding),
            ])));
        }
        let truncate = integer_field(&body, "truncate")?;
        let name = short_name(name)?;
        if vhost.queue(&name).is_none() {
            return Err(error_json(
                404,
                "not_found",
                format!(
                    "NOT_FOUND - no {}",
                    queue_resource(&name.to_str_lossy(), &vhost.name)
                ),
            ));
        }
        caller
            .permit(&vhost)
            .read_queue(&name)
            .map_err(|e| channel_error(&e))?;
        let queue = vhost
            .usable_queue(&name, API_CONNECTION)
            .map_err(|e| channel_error(&e))?;
        let mut taken = Vec::new();
        let mut items = Vec::new();
        for _ in 0..count {
            let mut dead = DeadLetters::new();
            let fetched = queue.get(&mut dead);
            dead_letter(&vhost, &queue, dead);
            let Some((message, remaining)) = fetched else {
                break;
            };
            items.push(message_json(&message, remaining, encoding, truncate));
            taken.push(message);
        }
        settle_gets(
            &vhost,
            &queue,
            taken,
            requeue,
            reject,
            self.broker.config.frame_max,
        );
        Ok(Response::json(200, &Json::Array(items)))
    }

    // ---- exchanges ------------------------------------------------------------------------

    fn list_exchanges(&self, request: &Request, caller: &Caller, vhost: Option<&str>) -> Reply {
        let vhosts = self.listed_vhosts(caller, vhost)?;
        let mut items = Vec::new();
        for vhost in vhosts {
            let state = vhost.read();
            let mut exchanges: Vec<_> = state.exchanges.values().collect();
            exchanges.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
            items.extend(
                exchanges
                    .into_iter()
                    .map(|e| objects::exchange_json(&vhost.name, e)),
            );
        }
        Ok(Response::json(200, &shape_list(request, items)))
    }

    fn show_exchange(&self, request: &Request, caller: &Caller, vhost: &str, name: &str) -> Reply {
        let vhost = self.vhost(caller, vhost)?;
        let name = exchange_name(name)?;
        let state = vhost.read();
        let exchange = state.exchanges.get(&name).ok_or_else(not_found)?;
        let json = objects::exchange_json(&vhost.name, exchange)
            .with("incoming", Json::Array(Vec::new()))
            .with("outgoing", Json::Array(Vec::new()));
        Ok(Response::json(200, &shape_item(request, json)))
    }

    fn declare_exchange(
        &self,
        request: &Request,
        caller: &Caller,
        vhost: &str,
        name: &str,
    ) -> Reply {
        let vhost = self.vhost_for_write(caller, vhost)?;
        let body = body_object(request)?;
        let name = exchange_name(name)?;
        let kind = short_name(string_field(&body, "type", "direct")?)?;
        let flags = ExchangeFlags {
            passive: false,
            durable: bool_field(&body, "durable", false)?,
            auto_delete: bool_field(&body, "auto_delete", false)?,
            internal: bool_field(&body, "internal", false)?,
        };
        let arguments = arguments_field(&body)?;
        let existed = vhost.has_exchange(&name);
        caller
            .permit(&vhost)
            .exchange_declare(&vhost, &name, &kind, false, &arguments)
            .map_err(|e| definition_error(&e))?;
        vhost
            .declare_exchange(&name, &kind, flags, &arguments)
            .map_err(|e| definition_error(&e))?;
        Ok(Response::empty(if existed { 204 } else { 201 }))
    }

    fn delete_exchange(
        &self,
        request: &Request,
        caller: &Caller,
        vhost: &str,
        name: &str,
    ) -> Reply {
        let vhost = self.vhost_for_write(caller, vhost)?;
        let name = exchange_name(name)?;
        if !vhost.has_exchange(&name) {
            return Err(not_found());
        }
        let if_unused = request.query("if-unused") == Some("true");
        caller
            .permit(&vhost)
            .exchange_delete(&name)
            .map_err(|e| definition_error(&e))?;
        vhost
            .delete_exchange(&name, if_unused)
            .map_err(|e| definition_error(&e))?;
        Ok(Response::empty(204))
    }

    /// `POST /api/exchanges/{vhost}/{name}/publish`: routes a message exactly as
    /// basic.publish does (internal exchanges refused, per-queue TTLs, dead-lettering of
    /// what overflows, persistent messages logged in durable queues).
    fn publish(&self, request: &Request, caller: &Caller, vhost: &str, name: &str) -> Reply {
        let vhost = self.vhost_for_write(caller, vhost)?;
        let body = body_object(request)?;
        for key in ["routing_key", "properties", "payload", "payload_encoding"] {
            if body.get(key).is_none() {
                return Err(key_missing(key));
            }
        }
        let exchange = exchange_name(name)?;
        let routing_key = short_name(string_field(&body, "routing_key", "")?)?;
        let payload = string_field(&body, "payload", "")?;
        let payload = match string_field(&body, "payload_encoding", "string")? {
            "string" => payload.as_bytes().to_vec(),
            "base64" => {
                base64_decode(payload).ok_or_else(|| bad_request("payload is not valid base64"))?
            }
            other => {
                return Err(bad_request(Json::Array(vec![
                    Json::from("unsupported_encoding"),
                    Json::from(other),
                ])))
            }
        };
        let properties = properties_from_json(body.get("properties").unwrap_or(&Json::Null))?;
        if payload.len() as u64 > self.broker.config.max_message_size {
            return Err(channel_error(&AmqpError::precondition_failed(format!(
                "message size {} is larger than configured max size {}",
                payload.len(),
                self.broker.config.max_message_size
            ))));
        }
        caller
            .permit(&vhost)
            .publish(&exchange)
            .map_err(|e| channel_error(&e))?;
        let mut queues = Vec::new();
        vhost
            .route(
                &exchange,
                &routing_key,
                properties.headers.as_ref(),
                true,
                &mut queues,
            )
            .map_err(|e| channel_error(&e))?;
        let per_message_ttl = properties
            .expiration
            .as_ref()
            .and_then(|e| e.as_str()?.parse::<u64>().ok())
            .map(Duration::from_millis);
        let content = Arc::new(MessageContent::with_properties(
            exchange.as_bytes(),
            routing_key.as_bytes(),
            &properties,
            Bytes::from(payload),
        ));
        let now = Instant::now();
        for queue in &queues {
            let ttl = match (queue.settings.message_ttl, per_message_ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Ok(persist_id) = persist(queue, &content, &mut None) else {
                continue;
            };
            let message = QueuedMessage {
                content: content.clone(),
                redelivered: false,
                expires_at: ttl.and_then(|ttl| now.checked_add(ttl)).map(Deadline::at),
                persist_id,
            };
            let mut dead = DeadLetters::new();
            if queue.publish(message, &mut dead) == Enqueued::Rejected {
                if let (Some(store), Some(id)) = (&queue.store, persist_id) {
                    store.ack(id);
                }
            }
            dead_letter(&vhost, queue, dead);
        }
        Ok(Response::json(
            200,
            &Json::object().with("routed", !queues.is_empty()),
        ))
    }

    // ---- bindings -------------------------------------------------------------------------

    fn list_bindings(&self, request: &Request, caller: &Caller, vhost: Option<&str>) -> Reply {
        let vhosts = self.listed_vhosts(caller, vhost)?;
        let items = vhosts
            .iter()
            .flat_map(|v| objects::vhost_bindings(v))
            .collect();
        Ok(Response::json(200, &shape_list(request, items)))
    }

    fn bindings_between(
        &self,
        caller: &Caller,
        vhost: &str,
        source: &str,
        kind: &str,
        destination: &str,
    ) -> Result<Vec<Json>, Response> {
        let vhost = self.vhost(caller, vhost)?;
        let source = exchange_name(source)?;
        let destination_name = short_name(destination)?;
        let exists = if kind == "q" {
            vhost.queue(&destination_name).is_some()
        } else {
            vhost.has_exchange(&destination_name)
        };
        if !exists || !vhost.has_exchange(&source) {
            return Err(not_found());
        }
        let source_text = source.to_str_lossy().into_owned();
        let kind_name = if kind == "q" { "queue" } else { "exchange" };
        Ok(objects::vhost_bindings(&vhost)
            .into_iter()
            .filter(|b| {
                b.get("source") == Some(&Json::from(source_text.as_str()))
                    && b.get("destination_type") == Some(&Json::from(kind_name))
                    && b.get("destination") == Some(&Json::from(destination))
            })
            .collect())
    }

    fn bind(
        &self,
        request: &Request,
        caller: &Caller,
        vhost: &str,
        source: &str,
        kind: &str,
        destination: &str,
    ) -> Reply {
        let vhost = self.vhost_for_write(caller, vhost)?;
        let body = body_object(request)?;
        let source = exchange_name(source)?;
        let destination_name = short_name(destination)?;
        let routing_key = short_name(string_field(&body, "routing_key", "")?)?;
        let arguments = arguments_field(&body)?;
        let mut permit = caller.permit(&vhost);
        let permitted = if kind == "q" {
            permit.queue_bind(&destination_name, &source)
        } else {
            permit.exchange_bind(&destination_name, &source)
        };
        permitted.map_err(|e| definition_error(&e))?;
        let result = if kind == "q" {
            vhost.bind_queue(
                API_CONNECTION,
                &destination_name,
                &source,
                &routing_key,
                &arguments,
            )
        } else {
            vhost.bind_exchange(&destination_name, &source, &routing_key, &arguments, true)
        };
        result.map_err(|e| definition_error(&e))?;
        let key = objects::properties_key(&routing_key.to_str_lossy(), &arguments);
        Ok(Response::empty(201).with_header(
            "location",
            format!("{}/{}", quote_segment(destination), quote_segment(&key)),
        ))
    }

    fn unbind(
        &self,
        caller: &Caller,
        vhost: &str,
        source: &str,
        kind: &str,
        destination: &str,
        properties_key: &str,
    ) -> Reply {
        let vhost = self.vhost_for_write(caller, vhost)?;
        let source = exchange_name(source)?;
        let destination = short_name(destination)?;
        let wanted = if kind == "q" {
            Destination::Queue(destination.clone())
        } else {
            Destination::Exchange(destination.clone())
        };
        // The binding as stored: its arguments keep their AMQP types, which JSON would lose.
        let binding = {
            let state = vhost.read();
            state.exchanges.get(&source).and_then(|e| {
                e.bindings()
                    .iter()
                    .find(|b| {
                        b.destination == wanted
                            && objects::properties_key(&b.routing_key.to_str_lossy(), &b.arguments)
                                == properties_key
                    })
                    .cloned()
            })
        };
        let Some(binding) = binding else {
            return Err(not_found());
        };
        let mut permit = caller.permit(&vhost);
        let permitted = if kind == "q" {
            permit.queue_bind(&destination, &source)
        } else {
            permit.exchange_bind(&destination, &source)
        };
        permitted.map_err(|e| definition_error(&e))?;
        let result = if kind == "q" {
            vhost.unbind_queue(
                API_CONNECTION,
                &destination,
                &source,
                &binding.routing_key,
                &binding.arguments,
            )
        } else {
            vhost.bind_exchange(
                &destination,
                &source,
                &binding.routing_key,
                &binding.arguments,
                false,
            )
        };
        result.map_err(|e| definition_error(&e))?;
        Ok(Response::empty(204))
    }

    // ---- connections, channels, consumers -------------------------------------------------

    fn list_connections(&self, request: &Request, caller: &Caller, vhost: Option<&str>) -> Reply {
        let mut connections: Vec<_> = self
            .broker
            .connections
            .all()
            .into_iter()
            .filter(|c| caller.may_see(&c.vhost) && vhost.is_none_or(|v| c.vhost == v))
            .collect();
        connections.sort_by(|a, b| a.name.cmp(&b.name));
        let items = connections
            .iter()
            .map(|c| objects::connection_json(c))
            .collect();
        Ok(Response::json(200, &shape_list(request, items)))
    }

    fn list_channels(
        &self,
        request: &Request,
        caller: &Caller,
        vhost: Option<&str>,
        connection: Option<&str>,
    ) -> Reply {
        let mut connections: Vec<_> = self
            .broker
            .connections
            .all()
            .into_iter()
            .filter(|c| {
                caller.may_see(&c.vhost)
                    && vhost.is_none_or(|v| c.vhost == v)
                    && connection.is_none_or(|n| c.name == n)
            })
            .collect();
        connections.sort_by(|a, b| a.name.cmp(&b.name));
        let items = connections
            .iter()
            .flat_map(|c| objects::channels_json(c))
            .collect();
        Ok(Response::json(200, &shape_list(request, items)))
    }

    fn list_consumers(&self, request: &Request, caller: &Caller, vhost: Option<&str>) -> Reply {
        let vhosts = self.listed_vhosts(caller, vhost)?;
        let snapshot = Snapshot::take(&self.broker, false);
        let mut items = Vec::new();
        for vhost in vhosts {
            let mut queues: Vec<_> = vhost.read().queues.values().cloned().collect();
            queues.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
            for queue in queues {
                let counts = QueueCounts::of(&queue);
                items.extend(objects::consumers_json(&queue, &counts, &snapshot));
            }
        }
        Ok(Response::json(200, &shape_list(request, items)))
    }
}

/// A permission as RabbitMQ's API shows it, in its field order.
fn permission_json(permission: &Permission) -> Json {
    Json::object()
        .with("user", permission.user.as_str())
        .with("vhost", permission.vhost.as_str())
        .with("configure", permission.configure.as_str())
        .with("write", permission.write.as_str())
        .with("read", permission.read.as_str())
}

fn tags_json(user: &UserConfig) -> Json {
    Json::Array(user.tags.iter().map(|t| Json::from(t.as_str())).collect())
}

/// A message as the API's `get` shows it.
fn message_json(
    message: &QueuedMessage,
    remaining: usize,
    encoding: &str,
    truncate: Option<u64>,
) -> Json {
    let content = &message.content;
    let mut payload: &[u8] = content.body();
    if let Some(limit) = truncate {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        payload = payload.get(..limit).unwrap_or(payload);
    }
    let (payload, payload_encoding) = match (encoding, std::str::from_utf8(payload)) {
        ("auto", Ok(text)) => (text.to_owned(), "string"),
        _ => (base64_encode(payload), "base64"),
    };
    Json::object()
        .with("payload_bytes", content.size())
        .with("redelivered", message.redelivered)
        .with(
            "exchange",
            String::from_utf8_lossy(content.exchange()).as_ref(),
        )
        .with(
            "routing_key",
            String::from_utf8_lossy(content.routing_key()).as_ref(),
        )
        .with("message_count", remaining)
        .with(
            "properties",
            objects::properties_json(&content.properties()),
        )
        .with("payload", payload)
        .with("payload_encoding", payload_encoding)
}

/// Acks, requeues or rejects the messages a `get` took.
fn settle_gets(
    vhost: &VHost,
    queue: &Arc<Queue>,
    taken: Vec<QueuedMessage>,
    requeue: bool,
    reject: bool,
    frame_max: u32,
) {
    if taken.is_empty() {
        return;
    }
    if requeue {
        // As if delivered on a channel and then requeued: the store learns they were
        // delivered (so `redelivered` survives a restart), the queue puts them back at the
        // head in order. The link is a stand-in: Queue::requeue only uses it to find a
        // consumer, and these deliveries have none.
        if let Some(store) = &queue.store {
            for id in taken
                .iter()
                .filter(|m| !m.redelivered)
                .filter_map(|m| m.persist_id)
            {
                store.delivered(id);
            }
        }
        let link = Arc::new(ChannelLink::new(
            0,
            API_CONNECTION,
            Arc::new(Outbox::new(frame_max)),
            false,
        ));
        queue.count_unacked(taken.len());
        let unacked = taken
            .into_iter()
            .map(|message| Unacked {
                queue: queue.clone(),
                consumer_tag: None,
                message,
            })
            .collect();
        let mut dead = DeadLetters::new();
        queue.requeue(&link, unacked, &mut dead);
        dead_letter(vhost, queue, dead);
    } else if reject {
        let dead = taken.into_iter().map(|m| (m, "rejected")).collect();
        dead_letter(vhost, queue, dead);
    } else {
        queue.forget_stored(taken.iter());
    }
}

/// Message properties from the API's `properties` object (RabbitMQ's names).
fn properties_from_json(json: &Json) -> Result<BasicProperties, Response> {
    let mut properties = BasicProperties::default();
    let entries = match json {
        Json::Object(entries) => entries.as_slice(),
        Json::Array(items) if items.is_empty() => &[],
        Json::Null => &[],
        _ => return Err(bad_request("properties must be an object")),
    };
    for (key, value) in entries {
        let text = || -> Result<ShortString, Response> {
            match value {
                Json::String(s) => short_name(s),
                Json::Number(n) => short_name(&n.to_string()),
                _ => Err(bad_request(format!("property {key} must be a string"))),
            }
        };
        let number = || -> Result<u64, Response> {
            match value {
                Json::Number(n) => n.as_u64(),
                Json::String(s) => s.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| bad_request(format!("property {key} must be a number")))
        };
        let octet = || -> Result<u8, Response> {
            u8::try_from(number()?)
                .map_err(|_| bad_request(format!("property {key} is out of range")))
        };
        match key.as_str() {
            "content_type" => properties.content_type = Some(text()?),
            "content_encoding" => properties.content_encoding = Some(text()?),
            "headers" => {
                properties.headers = Some(
                    json_to_table(value)
                        .ok_or_else(|| bad_request("property headers must be an object"))?,
                )
            }
            "delivery_mode" => properties.delivery_mode = Some(octet()?),
            "priority" => properties.priority = Some(octet()?),
            "correlation_id" => properties.correlation_id = Some(text()?),
            "reply_to" => properties.reply_to = Some(text()?),
            "expiration" => properties.expiration = Some(text()?),
            "message_id" => properties.message_id = Some(text()?),
            "timestamp" => properties.timestamp = Some(number()?),
            "type" => properties.kind = Some(text()?),
            "user_id" => properties.user_id = Some(text()?),
            "app_id" => properties.app_id = Some(text()?),
            "cluster_id" => properties.cluster_id = Some(text()?),
            // RabbitMQ ignores properties it does not know; so does this.
            _ => {}
        }
    }
    Ok(properties)
}

/// The overview's `message_stats`: counts since the broker started, named as RabbitMQ's
/// management API names them. Rates are left at 0: Prometheus's `rate()` over /metrics gives them.
fn message_stats(stats: &crate::broker::StatsSnapshot) -> Json {
    let mut json = Json::object();
    for (name, value) in [
        ("publish", stats.published),
        ("confirm", stats.confirmed),
        ("return_unroutable", stats.returned),
        ("deliver_get", stats.delivered),
        ("redeliver", stats.redelivered),
        ("ack", stats.acknowledged),
    ] {
        json = json
            .with(name, value)
            .with(&format!("{name}_details"), Json::object().with("rate", 0.0));
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_map_to_rabbitmq_management_statuses() {
        let refused = definition_error(&AmqpError::access_refused("x"));
        assert_eq!(refused.status, 401);
        let missing = definition_error(&AmqpError::not_found("no exchange 'x' in vhost '/'"));
        assert_eq!(missing.status, 404);
        assert_eq!(
            String::from_utf8(missing.body).unwrap(),
            r#"{"error":"not_found","reason":"no exchange 'x' in vhost '/'"}"#
        );
        let inequivalent = definition_error(&AmqpError::precondition_failed("inequivalent"));
        assert_eq!(inequivalent.status, 400);
        let publish = channel_error(&AmqpError::not_found("no exchange 'x' in vhost '/'"));
        assert_eq!(
            String::from_utf8(publish.body).unwrap(),
            r#"{"error":"bad_request","reason":"404 NOT_FOUND - no exchange 'x' in vhost '/'"}"#
        );
    }

    #[test]
    fn booleans_may_be_strings_as_rabbitmqadmin_sends_them() {
        let body = Json::parse(br#"{"a":"true","b":false,"c":"yes"}"#).unwrap();
        assert!(bool_field(&body, "a", false).unwrap());
        assert!(!bool_field(&body, "b", true).unwrap());
        assert!(bool_field(&body, "missing", true).unwrap());
        let refused = bool_field(&body, "c", false).unwrap_err();
        assert_eq!(
            String::from_utf8(refused.body).unwrap(),
            r#"{"error":"bad_request","reason":["not_boolean","yes"]}"#
        );
    }

    #[test]
    fn properties_are_read_by_rabbitmq_names() {
        let json = Json::parse(
            br#"{"delivery_mode":2,"headers":{"a":1},"type":"t","expiration":"60000","priority":"3"}"#,
        )
        .unwrap();
        let properties = properties_from_json(&json).unwrap();
        assert_eq!(properties.delivery_mode, Some(2));
        assert_eq!(properties.priority, Some(3));
        assert_eq!(
            properties.kind.as_ref().map(|k| k.to_string()),
            Some("t".into())
        );
        assert_eq!(
            properties.expiration.as_ref().map(|k| k.to_string()),
            Some("60000".into())
        );
        assert!(properties_from_json(&Json::parse(br#"{"priority":300}"#).unwrap()).is_err());
    }
}

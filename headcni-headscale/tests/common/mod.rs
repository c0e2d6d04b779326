//! Shared test helpers: OpenAPI (swagger 2.0) validation of Headscale JSON, fixtures.
//!
//! The specs are read from `<workspace>/../shared/specs/headscale-<ver>.swagger.json` (CI has
//! `shared/` beside the clone); nothing is copied into the repository.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use headcni_headscale::retry::Backoff;
use headcni_testkit::{Exchange, FakeHeadscale};
use serde_json::{Map, Value, json};

/// Where the specs live: `$HEADCNI_SPECS_DIR`, else `<workspace root>/../shared/specs`.
pub fn specs_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HEADCNI_SPECS_DIR") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/specs")
}

/// Validation mode: requests may omit fields; responses (protojson `EmitUnpopulated`) carry
/// every field. Both refuse unknown fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Request,
    Response,
}

/// A loaded Headscale swagger document.
pub struct Spec {
    pub version: &'static str,
    doc: Value,
}

static SPEC_029: OnceLock<Spec> = OnceLock::new();
static SPEC_025: OnceLock<Spec> = OnceLock::new();

/// The spec for `version` ("0.29.2" or "0.25.1"); panics with a clear message when absent.
pub fn spec(version: &str) -> &'static Spec {
    let (cell, v) = match version {
        "0.29.2" => (&SPEC_029, "0.29.2"),
        "0.25.1" => (&SPEC_025, "0.25.1"),
        other => panic!("no spec for headscale {other}"),
    };
    cell.get_or_init(|| {
        let path = specs_dir().join(format!("headscale-{v}.swagger.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the Headscale OpenAPI spec {}: {e}\n\
                 the tests need shared/specs beside the workspace (../shared/specs) \
                 or HEADCNI_SPECS_DIR",
                path.display()
            )
        });
        let doc: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert_eq!(
            doc["swagger"],
            "2.0",
            "{} is not a swagger 2.0 document",
            path.display()
        );
        Spec { version: v, doc }
    })
}

impl Spec {
    fn definitions(&self) -> &Map<String, Value> {
        self.doc["definitions"]
            .as_object()
            .expect("swagger has definitions")
    }

    fn is_message(&self, reference: &str) -> bool {
        let name = reference.trim_start_matches("#/definitions/");
        self.definitions()
            .get(name)
            .is_some_and(|d| d.get("type").and_then(Value::as_str) == Some("object"))
    }

    /// Swagger 2.0 schema → JSON Schema draft 7 with protojson semantics:
    /// - `format: uint64`/`int64` strings must be decimal (`^[0-9]+$`);
    /// - message references and `date-time` (google.protobuf.Timestamp) may be `null`
    ///   (unset messages), except as array items;
    /// - objects are closed (`additionalProperties: false`), and in responses every declared
    ///   property is required (protojson `EmitUnpopulated: true`).
    fn transform(&self, s: &Value, mode: Mode, in_items: bool) -> Value {
        let Some(obj) = s.as_object() else {
            return s.clone();
        };
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            let target = json!({ "$ref": r });
            return if !in_items && self.is_message(r) {
                json!({ "anyOf": [{ "type": "null" }, target] })
            } else {
                target
            };
        }
        let mut out = Map::new();
        for (k, v) in obj {
            match k.as_str() {
                "title" | "description" | "default" => {}
                "properties" => {
                    let mut props = Map::new();
                    for (pk, pv) in v.as_object().into_iter().flatten() {
                        props.insert(pk.clone(), self.transform(pv, mode, false));
                    }
                    out.insert(k.clone(), Value::Object(props));
                }
                "items" => {
                    out.insert(k.clone(), self.transform(v, mode, true));
                }
                "additionalProperties" if v.is_object() => {
                    out.insert(k.clone(), self.transform(v, mode, false));
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        let ty = obj.get("type").and_then(Value::as_str);
        let format = obj.get("format").and_then(Value::as_str);
        if ty == Some("string") {
            match format {
                Some("uint64") => {
                    out.insert("pattern".into(), json!("^[0-9]+$"));
                }
                Some("int64") => {
                    out.insert("pattern".into(), json!("^-?[0-9]+$"));
                }
                _ => {}
            }
        }
        if ty == Some("object") {
            if !obj.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), json!(false));
            }
            if mode == Mode::Response
                && let Some(props) = obj.get("properties").and_then(Value::as_object)
            {
                let req: Vec<Value> = props.keys().map(|k| json!(k)).collect();
                out.insert("required".into(), Value::Array(req));
            }
        }
        let schema = Value::Object(out);
        if ty == Some("string") && format == Some("date-time") && !in_items {
            return json!({ "anyOf": [{ "type": "null" }, schema] });
        }
        schema
    }

    /// Validates `instance` against `schema` (a swagger schema, usually a `$ref`).
    pub fn validate_schema(
        &self,
        schema: &Value,
        instance: &Value,
        mode: Mode,
    ) -> Result<(), String> {
        let mut defs = Map::new();
        for (k, v) in self.definitions() {
            defs.insert(k.clone(), self.transform(v, mode, false));
        }
        let root = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "definitions": defs,
            "allOf": [self.transform(schema, mode, true)],
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft7)
            .should_validate_formats(true)
            .build(&root)
            .map_err(|e| format!("bad schema: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("at {}: {}", e.instance_path(), e))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "headscale {} schema violation(s) ({mode:?}):\n  {}\ninstance: {instance}",
                self.version,
                errors.join("\n  ")
            ))
        }
    }

    /// Validates `instance` against the definition `name` (e.g. `v1Node`).
    pub fn validate_definition(
        &self,
        name: &str,
        instance: &Value,
        mode: Mode,
    ) -> Result<(), String> {
        assert!(
            self.definitions().contains_key(name),
            "definition {name} is not in headscale {} spec",
            self.version
        );
        self.validate_schema(
            &json!({ "$ref": format!("#/definitions/{name}") }),
            instance,
            mode,
        )
    }

    /// The swagger operation for `method` on the path template.
    pub fn operation(&self, method: &str, template: &str) -> Option<&Value> {
        self.doc["paths"]
            .get(template)?
            .get(method.to_ascii_lowercase())
    }

    /// Validates one exchange: the operation exists in this version's spec, the query keys are
    /// declared, the request body matches the `body` parameter (or is absent when none is
    /// declared), a 200 body matches `responses.200`, an error JSON body matches
    /// `responses.default` (`rpcStatus`), and a 401 is plain text.
    pub fn validate_exchange(&self, ex: &Exchange) -> Result<(), String> {
        let ctx = format!(
            "{} {}{}",
            ex.method,
            ex.path,
            ex.query
                .as_ref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        );
        if ex.injected {
            return Ok(());
        }
        if ex.request_not_json {
            return Err(format!("{ctx}: request body is not JSON"));
        }
        if ex.status == 401 {
            return match &ex.response_json {
                None => Ok(()),
                Some(v) => Err(format!("{ctx}: 401 must be plain text, got {v}")),
            };
        }
        let Some(template) = ex.operation else {
            // /health, /version, unknown paths: not in the swagger; error bodies are still rpcStatus
            if let (Some(v), true) = (&ex.response_json, ex.status >= 400) {
                return self
                    .validate_definition("rpcStatus", v, Mode::Response)
                    .map_err(|e| format!("{ctx}: {e}"));
            }
            return Ok(());
        };
        let op = self.operation(&ex.method, template).ok_or_else(|| {
            format!(
                "{ctx}: {} {template} is not in the headscale {} spec",
                ex.method, self.version
            )
        })?;
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        if let Some(q) = &ex.query {
            for kv in q.split('&').filter(|s| !s.is_empty()) {
                let key = kv.split('=').next().unwrap_or_default();
                if !params
                    .iter()
                    .any(|p| p["in"] == "query" && p["name"] == key)
                {
                    return Err(format!("{ctx}: query parameter {key:?} not declared"));
                }
            }
        }
        let body_param = params.iter().find(|p| p["in"] == "body");
        match (body_param, &ex.request_json) {
            (Some(p), Some(body)) => self
                .validate_schema(&p["schema"], body, Mode::Request)
                .map_err(|e| format!("{ctx} request: {e}"))?,
            (None, Some(body)) => {
                return Err(format!(
                    "{ctx}: body {body} sent to an operation without a body parameter"
                ));
            }
            _ => {}
        }
        let resp = ex
            .response_json
            .as_ref()
            .ok_or_else(|| format!("{ctx}: status {} without a JSON body", ex.status))?;
        let schema = if ex.status == 200 {
            &op["responses"]["200"]["schema"]
        } else {
            &op["responses"]["default"]["schema"]
        };
        self.validate_schema(schema, resp, Mode::Response)
            .map_err(|e| format!("{ctx} response {}: {e}", ex.status))
    }
}

/// Validates every exchange the fake recorded against its generation's spec; panics listing
/// all violations. Returns the number of exchanges checked.
pub fn assert_spec_valid(hs: &FakeHeadscale) -> usize {
    let spec = spec(hs.version().spec_version());
    let exchanges = hs.exchanges();
    let errors: Vec<String> = exchanges
        .iter()
        .filter_map(|e| spec.validate_exchange(e).err())
        .collect();
    assert!(
        errors.is_empty(),
        "OpenAPI violations:\n{}",
        errors.join("\n\n")
    );
    exchanges.len()
}

/// A fast backoff for tests: 5 attempts, 10–40 ms.
pub fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        multiplier: 2.0,
        jitter: 0.5,
        max_attempts: 5,
        max_elapsed: Duration::from_secs(5),
    }
}

pub fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().expect("test prefix")
}

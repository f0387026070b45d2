use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::config::{SchemaEntry, SchemasConfig, Unmatched};
use crate::event::text_header;

fn order_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "required": ["id", "total"],
        "properties": {
            "id": {"type": "string"},
            "total": {"type": "number", "minimum": 0},
            "items": {"type": "array", "items": {"type": "integer"}}
        }
    })
}

fn entry(event_type: &str, version: Option<&str>, document: serde_json::Value) -> SchemaEntry {
    SchemaEntry {
        event_type: event_type.into(),
        version: version.map(Into::into),
        path: PathBuf::from(format!("{event_type}.json")),
        document: Arc::new(document),
    }
}

fn headers(t: Option<&str>, v: Option<&str>) -> Vec<crate::event::Header> {
    t.map(|t| text_header("event-type", t)).into_iter().chain(v.map(|v| text_header("event-version", v))).collect()
}

fn gate(input: Vec<SchemaEntry>, output: Vec<SchemaEntry>, unknown: Unmatched, missing: Unmatched) -> Result<Gate, String> {
    Gate::new(Some(&SchemasConfig { input, output, unknown, missing, ..SchemasConfig::default() }))
}

#[test]
fn a_valid_payload_passes_and_an_invalid_one_lists_every_failing_place() -> Result<(), String> {
    let schema = Schema::compile(&order_schema())?;
    schema.check(br#"{"id":"o1","total":3.5}"#)?;
    let err = schema.check(br#"{"total":-1,"items":[1,"two"]}"#).err().unwrap_or_default();
    assert!(err.contains("/: "), "{err}");
    assert!(err.contains("\"id\" is a required property"), "{err}");
    assert!(err.contains("/total: "), "{err}");
    assert!(err.contains("/items/1: "), "{err}");
    assert!(!err.contains("two"), "the data itself is masked: {err}");
    Ok(())
}

#[test]
fn a_payload_that_is_not_json_is_invalid_with_a_clear_message() -> Result<(), String> {
    let schema = Schema::compile(&order_schema())?;
    let err = schema.check(b"not json").err().unwrap_or_default();
    assert!(err.starts_with("the payload is not JSON: expected ident at line 1"), "{err}");
    Ok(())
}

#[test]
fn messages_are_capped() -> Result<(), String> {
    let schema = Schema::compile(&json!({"type": "array", "items": {"type": "string", "minLength": 1000}}))?;
    let payload = serde_json::to_vec(&vec!["x"; 5000]).map_err(|e| e.to_string())?;
    let err = schema.check(&payload).err().unwrap_or_default();
    assert!(err.len() <= MESSAGE_CAP, "{} bytes", err.len());
    assert!(err.contains("and 4992 more") || err.ends_with("..."), "{err}");
    assert_eq!(cap("é".repeat(2000)).len(), MESSAGE_CAP - 1, "cut on a character boundary");
    Ok(())
}

#[test]
fn references_resolve_within_the_file_but_not_to_other_files_or_urls() -> Result<(), String> {
    let local = Schema::compile(&json!({"$defs": {"id": {"type": "string"}}, "properties": {"id": {"$ref": "#/$defs/id"}}}))?;
    assert!(local.check(br#"{"id": 5}"#).is_err());
    assert!(Schema::compile(&json!({"$ref": "other.json"})).is_err(), "no file resolving");
    assert!(Schema::compile(&json!({"$ref": "https://example.com/order.json"})).is_err(), "no HTTP resolving");
    Ok(())
}

#[test]
fn an_invalid_schema_does_not_compile() {
    let err = Schema::compile(&json!({"type": "no-such-type"})).err().unwrap_or_default();
    assert!(err.contains("no-such-type"), "{err}");
    let err = Schema::compile(&json!({"minimum": "zero"})).err().unwrap_or_default();
    assert!(!err.is_empty());
}

#[test]
fn inputs_pick_the_exact_version_then_the_any_version_entry() -> Result<(), String> {
    let v2 = json!({"type": "object", "required": ["v2field"]});
    let gate =
        gate(vec![entry("order", Some("2"), v2), entry("order", None, order_schema())], vec![], Unmatched::Reject, Unmatched::Reject)?;
    let ok1 = br#"{"id":"o","total":1}"#;
    assert_eq!(gate.check_input(&headers(Some("order"), Some("1")), ok1, None), Ok(()));
    assert_eq!(gate.check_input(&headers(Some("order"), None), ok1, None), Ok(()));
    let Err(Refusal::Invalid(msg)) = gate.check_input(&headers(Some("order"), Some("2")), ok1, None) else {
        return Err("version 2 has its own schema".into());
    };
    assert!(msg.starts_with("the event does not match the schema for order@2: /: \"v2field\" is a required property"), "{msg}");
    Ok(())
}

#[test]
fn unknown_types_and_missing_headers_follow_the_policy() -> Result<(), String> {
    let strict = gate(vec![entry("order", Some("1"), order_schema())], vec![], Unmatched::Reject, Unmatched::Reject)?;
    let Err(Refusal::Invalid(msg)) = strict.check_input(&headers(Some("refund"), Some("1")), b"{}", None) else {
        return Err("unknown type passed".into());
    };
    assert_eq!(msg, "no schema for the event's type refund@1, and schemas.unknown is \"reject\"");
    let Err(Refusal::Invalid(msg)) = strict.check_input(&[], b"{}", None) else { return Err("missing header passed".into()) };
    assert_eq!(msg, "the event has no `event-type` header, and schemas.missing is \"reject\"");

    let lenient = gate(vec![entry("order", Some("1"), order_schema())], vec![], Unmatched::Pass, Unmatched::Pass)?;
    assert_eq!(lenient.check_input(&headers(Some("refund"), Some("1")), b"not json", None), Ok(()));
    assert_eq!(lenient.check_input(&[], b"not json", None), Ok(()));
    Ok(())
}

#[test]
fn header_names_are_configurable_and_case_insensitive() -> Result<(), String> {
    let config = SchemasConfig {
        type_header: "ce-type".into(),
        version_header: "ce-specversion-of-data".into(),
        input: vec![entry("order", Some("1"), order_schema())],
        ..SchemasConfig::default()
    };
    let gate = Gate::new(Some(&config))?;
    let h = vec![text_header("CE-Type", " order "), text_header("ce-specversion-of-data", "1")];
    assert_eq!(gate.kind(&h), Some(Kind { event_type: "order", version: Some("1") }));
    assert!(gate.check_input(&h, br#"{"id":"o","total":1}"#, None).is_ok());
    Ok(())
}

#[test]
fn outputs_use_their_own_type_else_their_inputs() -> Result<(), String> {
    let enriched = json!({"type": "object", "required": ["id", "total", "tax"]});
    let gate = gate(vec![], vec![entry("order", Some("1"), enriched)], Unmatched::Reject, Unmatched::Reject)?;
    assert!(gate.checks_outputs());
    let input_headers = headers(Some("order"), Some("1"));
    let input = gate.kind(&input_headers);
    let good = br#"{"id":"o","total":1,"tax":0.2}"#;
    // No type header on the output: the input's type and version.
    assert_eq!(gate.check_output(input.as_ref(), &[], good), Ok(()));
    let err = gate.check_output(input.as_ref(), &[], br#"{"id":"o"}"#).err().unwrap_or_default();
    assert!(err.starts_with("the output does not match the schema for order@1: "), "{err}");
    // Its own type header wins.
    let err = gate.check_output(input.as_ref(), &headers(Some("audit"), Some("1")), good).err().unwrap_or_default();
    assert_eq!(err, "no schema for the output's type audit@1, and schemas.unknown is \"reject\"");
    // Neither has one.
    let err = gate.check_output(None, &[], good).err().unwrap_or_default();
    assert_eq!(err, "the output has no `event-type` header, and schemas.missing is \"reject\"");
    Ok(())
}

#[test]
fn without_schemas_only_accepts_applies() -> Result<(), String> {
    let gate = Gate::default();
    assert!(!gate.checks_outputs());
    assert_eq!(gate.check_input(&[], b"anything", None), Ok(()));
    let accepts = Accepts::parse(&["order@2".to_owned()])?;
    assert_eq!(gate.check_input(&headers(Some("order"), Some("2")), b"x", Some(&accepts)), Ok(()));
    assert_eq!(
        gate.check_input(&headers(Some("order"), Some("1")), b"x", Some(&accepts)),
        Err(Refusal::Unsupported("the plugin does not accept event type order@1; it accepts: order@2".into()))
    );
    assert_eq!(
        gate.check_input(&[], b"x", Some(&accepts)),
        Err(Refusal::Unsupported("the plugin does not accept an event without a `event-type` header; it accepts: order@2".into()))
    );
    Ok(())
}

#[test]
fn schema_validation_comes_before_accepts() -> Result<(), String> {
    let gate = gate(vec![entry("order", None, order_schema())], vec![], Unmatched::Reject, Unmatched::Reject)?;
    let accepts = Accepts::parse(&["order@2".to_owned()])?;
    let result = gate.check_input(&headers(Some("order"), Some("1")), b"{}", Some(&accepts));
    assert!(matches!(result, Err(Refusal::Invalid(_))), "{result:?}");
    Ok(())
}

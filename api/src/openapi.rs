//! Pieces of the OpenAPI document that the derive macros cannot say alone: the closed sets the
//! handlers check (job kinds and statuses, package features) as `enum` schemas built from the
//! same lists the code checks against, so the document cannot drift from them; and the
//! response `links` that tell a client (or a schema-driven tester) which id an answer hands to
//! which route.
//!
//! The links are derived from the paths, not listed by hand, so a route added later under a
//! collection is linked without anyone remembering to: an operation on `P` that creates
//! something (201/202) links to every operation on `P/{param}...`, passing the new id from the
//! answer (`$response.body#/id`) or, when the answer has none, from the request
//! (`$request.body#/id`, as `POST /api/accounts` names the account it creates); an answer
//! carrying the `job` that does the work links to `GET /api/jobs/{id}` (a client skips the
//! link when that `job` is null).

use queue::{JobKind, JobStatus};
use serde_json::{json, Value};
use utoipa::openapi::link::{Link, LinkBuilder};
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, Object, ObjectBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{Components, Content, OpenApi, RefOr};

/// Every job status, in its lifecycle order.
const STATUSES: [JobStatus; 6] = [
    JobStatus::Queued,
    JobStatus::Running,
    JobStatus::Retrying,
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Cancelled,
];

fn string_enum(values: impl IntoIterator<Item = &'static str>, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .description(Some(description))
        .build()
}

/// A job kind: every kind the queue knows. A kind without a handler in this build is known
/// (it is listed, filtered and limited like the others) but enqueueing it is 501.
pub fn job_kind() -> Object {
    string_enum(
        JobKind::ALL.iter().map(|k| k.as_str()),
        "Job type (a type without a handler in this build is refused with 501 not_available)",
    )
}

/// A job status.
pub fn job_status() -> Object {
    string_enum(STATUSES.iter().map(|s| s.as_str()), "Job status")
}

/// A feature a package may grant.
pub fn feature() -> Object {
    string_enum(store::FEATURES.iter().copied(), "Feature name")
}

/// A job kind as a path parameter's type (`("kind" = inline(KindName), Path)`).
pub struct KindName;

impl utoipa::PartialSchema for KindName {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(job_kind()))
    }
}

impl utoipa::ToSchema for KindName {}

/// A feature as a path parameter's type.
pub struct FeatureName;

impl utoipa::PartialSchema for FeatureName {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(feature()))
    }
}

impl utoipa::ToSchema for FeatureName {}

/// `T` or null: `schema` with `null` added to its type.
pub fn nullable(mut schema: Object) -> Object {
    schema.schema_type = match schema.schema_type {
        SchemaType::Type(t) => SchemaType::Array(vec![t, Type::Null]),
        SchemaType::Array(mut v) => {
            if !v.contains(&Type::Null) {
                v.push(Type::Null);
            }
            SchemaType::Array(v)
        }
        SchemaType::AnyValue => SchemaType::AnyValue,
    };
    if let Some(values) = schema.enum_values.as_mut() {
        if !values.contains(&Value::Null) {
            values.push(Value::Null);
        }
    }
    schema
}

/// [`job_kind`] or null.
pub fn job_kind_or_null() -> Object {
    nullable(job_kind())
}

/// [`job_status`] or null.
pub fn job_status_or_null() -> Object {
    nullable(job_status())
}

fn methods(item: &mut utoipa::openapi::PathItem) -> [(&'static str, Option<&mut Operation>); 5] {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("patch", item.patch.as_mut()),
    ]
}

/// The object schema behind `s` (following one `$ref` into the components).
fn resolve<'a>(s: &'a RefOr<Schema>, components: Option<&'a Components>) -> Option<&'a Object> {
    match s {
        RefOr::T(Schema::Object(o)) => Some(o),
        RefOr::Ref(r) => {
            let name = r.ref_location.rsplit('/').next()?;
            match components?.schemas.get(name)? {
                RefOr::T(Schema::Object(o)) => Some(o),
                _ => None,
            }
        }
        _ => None,
    }
}

fn json_schema<'a>(
    content: Option<&'a RefOr<Content>>,
    components: Option<&'a Components>,
) -> Option<&'a Object> {
    match content? {
        RefOr::T(c) => resolve(c.schema.as_ref()?, components),
        RefOr::Ref(_) => None,
    }
}

/// What one operation may link from: its path, method, the id expression for the created
/// thing, and whether its answer carries the `job` doing the work.
struct Source {
    path: String,
    method: &'static str,
    id: Option<&'static str>,
    job: bool,
}

/// An operation id for `method` `path` (the handler's name is not unique across modules).
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_string();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        id.push('_');
        id.extend(
            part.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .map(|c| if c == '-' { '_' } else { c }),
        );
    }
    id
}

/// Add the response links described in the module docs. Every operation gets a unique
/// `operationId` (`<method>_<path words>`) so links can name their target.
pub fn document_links(doc: &mut OpenApi) {
    let components = doc.components.clone();
    let mut sources = Vec::new();
    let mut targets: Vec<(String, &'static str, bool)> = Vec::new();
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in methods(item) {
            let Some(op) = op else { continue };
            op.operation_id = Some(operation_id(method, path));
            // A WebSocket upgrade (101 only) is not an HTTP call a link can make.
            let websocket = op.responses.responses.contains_key("101");
            let first_param = path.contains("/{");
            targets.push((path.clone(), method, first_param && !websocket));
            let created =
                ["201", "202"]
                    .into_iter()
                    .find_map(|c| match op.responses.responses.get(c)? {
                        RefOr::T(r) => {
                            json_schema(r.content.get("application/json"), components.as_ref())
                        }
                        RefOr::Ref(_) => None,
                    });
            let Some(created) = created else { continue };
            let request_has_id = op
                .request_body
                .as_ref()
                .and_then(|b| match b {
                    RefOr::T(b) => {
                        json_schema(b.content.get("application/json"), components.as_ref())
                    }
                    RefOr::Ref(_) => None,
                })
                .is_some_and(|o| o.properties.contains_key("id"));
            let id = if created.properties.contains_key("id") {
                Some("$response.body#/id")
            } else if request_has_id {
                Some("$request.body#/id")
            } else {
                None
            };
            let job = created.properties.contains_key("job");
            sources.push(Source {
                path: path.clone(),
                method,
                id,
                job,
            });
        }
    }
    for s in sources {
        let mut links: Vec<(String, Link)> = Vec::new();
        if let Some(expr) = s.id {
            let prefix = format!("{}/{{", s.path);
            for (path, method, usable) in &targets {
                if !usable || !path.starts_with(&prefix) {
                    continue;
                }
                let param = &path[prefix.len()
                    ..path[prefix.len()..]
                        .find('}')
                        .map_or(path.len(), |i| prefix.len() + i)];
                links.push((
                    operation_id(method, path),
                    LinkBuilder::new()
                        .operation_id(operation_id(method, path))
                        .parameter(param, json!(expr))
                        .description(format!(
                            "{} {path} of what this created",
                            method.to_uppercase()
                        ))
                        .build(),
                ));
            }
        }
        if s.job
            && targets
                .iter()
                .any(|(p, m, _)| p == "/api/jobs/{id}" && *m == "get")
        {
            links.push((
                "get_job".into(),
                LinkBuilder::new()
                    .operation_id(operation_id("get", "/api/jobs/{id}"))
                    .parameter("id", json!("$response.body#/job/id"))
                    .description("The job doing the work")
                    .build(),
            ));
        }
        if links.is_empty() {
            continue;
        }
        let Some(item) = doc.paths.paths.get_mut(&s.path) else {
            continue;
        };
        let Some((_, Some(op))) = methods(item).into_iter().find(|(m, _)| *m == s.method) else {
            continue;
        };
        for code in ["201", "202"] {
            if let Some(RefOr::T(resp)) = op.responses.responses.get_mut(code) {
                for (name, link) in &links {
                    resp.links
                        .entry(name.clone())
                        .or_insert_with(|| RefOr::T(link.clone()));
                }
            }
        }
    }
}

/// An integer field: `minimum`, optional `maximum`, optionally nullable.
fn integer(min: u64, max: Option<u64>, null: bool) -> Schema {
    let o = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64,
        )))
        .minimum(Some(min))
        .maximum(max)
        .build();
    Schema::Object(if null { nullable(o) } else { o })
}

/// A closed object (`additionalProperties: false`, as `#[serde(deny_unknown_fields)]`).
fn object(properties: Vec<(String, Schema)>, required: &[&str], description: &str) -> Object {
    let mut b = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    for (name, schema) in properties {
        b = b.property(name, schema);
    }
    for r in required {
        b = b.required(*r);
    }
    b.build()
}

/// A package's `limits` (`store::Limits`): every field it has (read from its serialised form,
/// so a field added there is documented here), each a whole number or null (unlimited, or the
/// default for the `email_*` sending limits), within the bounds `Limits::problems` checks.
/// One cross-field rule is not expressible here and answers 422: `email_burst_per_15min` must
/// not exceed `email_per_hour`.
pub fn package_limits() -> Object {
    let names = match serde_json::to_value(store::Limits::default()) {
        Ok(Value::Object(m)) => m.keys().cloned().collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    let props = names
        .into_iter()
        .map(|n| {
            let (min, max) = match n.as_str() {
                "disk_mb" | "bandwidth_mb" => (1, None),
                "cpu_percent" => (1, Some(100 * 1024)),
                "memory_mb" => (16, None),
                "pids" => (8, None),
                "email_per_hour" | "email_burst_per_15min" => {
                    (1, Some(u64::from(store::MAX_EMAIL_PER_HOUR)))
                }
                "email_mb_per_hour" => (1, Some(u64::from(store::MAX_EMAIL_MB_PER_HOUR))),
                "email_max_connections" => (1, Some(u64::from(store::MAX_EMAIL_CONNECTIONS))),
                _ => (0, None),
            };
            (n, integer(min, max, true))
        })
        .collect();
    object(
        props,
        &[],
        "Resource limits; null: unlimited (email_*: the default)",
    )
}

/// A list of features (`everything` means all of them), or null when `null`.
fn features_list(null: bool) -> Schema {
    let item = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(
            std::iter::once("everything").chain(store::FEATURES.iter().copied()),
        ))
        .build();
    let t = if null {
        SchemaType::Array(vec![Type::Array, Type::Null])
    } else {
        SchemaType::Type(Type::Array)
    };
    Schema::Array(ArrayBuilder::new().schema_type(t).items(item).build())
}

fn string(min: usize, max: Option<usize>, pattern: Option<&str>, null: bool) -> Schema {
    let o = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(max)
        .pattern(pattern)
        .build();
    Schema::Object(if null { nullable(o) } else { o })
}

/// Any JSON value or null (`pricing`).
fn any() -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::AnyValue)
            .build(),
    )
}

/// The package id rule (`store`'s `validate_package_id`).
const PACKAGE_ID: &str = "^[a-z][a-z0-9_-]{0,31}$";

/// `POST /api/packages` body (`store::NewPackage`).
pub struct NewPackageBody;

impl utoipa::PartialSchema for NewPackageBody {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(object(
            vec![
                ("id".into(), string(1, Some(32), Some(PACKAGE_ID), false)),
                ("name".into(), string(1, Some(200), Some(r"\S"), true)),
                ("limits".into(), Schema::Object(package_limits())),
                ("features".into(), features_list(false)),
                ("disabled_features".into(), features_list(false)),
                ("pricing".into(), any()),
                ("owner".into(), string(0, None, None, true)),
            ],
            &["id"],
            "A new package (a draft). `owner` (admins only) must be a reseller; the whole \
             package is at most 50 KiB.",
        )))
    }
}

impl utoipa::ToSchema for NewPackageBody {}

/// `PUT /api/packages/{id}` body (`store::PackageUpdate`): fields to change.
pub struct PackageUpdateBody;

impl utoipa::PartialSchema for PackageUpdateBody {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(object(
            vec![
                ("name".into(), string(1, Some(200), Some(r"\S"), true)),
                ("limits".into(), Schema::Object(nullable(package_limits()))),
                ("features".into(), features_list(true)),
                ("disabled_features".into(), features_list(true)),
                ("pricing".into(), any()),
                (
                    "apply_to_existing".into(),
                    Schema::Object(ObjectBuilder::new().schema_type(Type::Boolean).build()),
                ),
            ],
            &[],
            "Fields to change (absent or null: unchanged); `apply_to_existing` enqueues one \
             provision/reapply_package job.",
        )))
    }
}

impl utoipa::ToSchema for PackageUpdateBody {}

/// A reseller's allowance (`store::Allowance`).
pub fn allowance() -> Object {
    object(
        vec![
            (
                "max_accounts".into(),
                integer(0, Some(u64::from(store::Allowance::MAX_ACCOUNTS)), false),
            ),
            ("disk_mb".into(), integer(0, None, true)),
            ("bandwidth_mb".into(), integer(0, None, true)),
        ],
        &["max_accounts"],
        "A reseller's allowance; null: unlimited",
    )
}

/// [`allowance`] or null.
pub fn allowance_or_null() -> Object {
    nullable(allowance())
}

/// `PUT /api/resellers/{id}/allowance` body.
pub struct AllowanceBody;

impl utoipa::PartialSchema for AllowanceBody {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(allowance()))
    }
}

impl utoipa::ToSchema for AllowanceBody {}

/// Rules between fields that a property's own schema cannot state, as JSON Schema
/// `if`/`then`/`else` on the named component (OpenAPI 3.1 schemas are JSON Schema 2020-12).
/// The handlers check each of them with a 422.
pub fn document_rules(doc: &mut OpenApi) {
    let rules = [(
        // Only a reseller has an allowance (`store`'s create_account).
        "CreateAccount",
        json!({"properties": {"type": {"const": "reseller"}}, "required": ["type"]}),
        json!({"properties": {"allowance": {"type": "null"}}}),
    )];
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for (name, when, otherwise) in rules {
        if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(name) {
            let ext = o.extensions.get_or_insert_with(Default::default);
            ext.insert("if".into(), when);
            ext.insert("else".into(), otherwise);
        }
    }
}

/// The document, built once, for [`check_body_shape`].
static DOC: std::sync::OnceLock<OpenApi> = std::sync::OnceLock::new();

/// Check that `body` has the shape the document gives `method` `path`'s request body where
/// serde alone would accept another: a struct deserialises from a JSON array too (its fields
/// in order), so without this `[1, 2]` would be taken for an object the document describes.
/// Only that is checked (objects where objects are declared, recursively through properties,
/// array items and `$ref`s); serde checks the rest. Unknown routes pass.
pub fn check_body_shape(
    method: &axum::http::Method,
    path: &str,
    body: &Value,
) -> Result<(), String> {
    let doc = DOC.get_or_init(crate::openapi);
    let Some(item) = doc.paths.paths.get(path) else {
        return Ok(());
    };
    let op = match *method {
        axum::http::Method::GET => item.get.as_ref(),
        axum::http::Method::PUT => item.put.as_ref(),
        axum::http::Method::POST => item.post.as_ref(),
        axum::http::Method::DELETE => item.delete.as_ref(),
        axum::http::Method::PATCH => item.patch.as_ref(),
        _ => None,
    };
    let schema = op.and_then(|op| match op.request_body.as_ref()? {
        RefOr::T(b) => match b.content.get("application/json")? {
            RefOr::T(c) => c.schema.as_ref(),
            RefOr::Ref(_) => None,
        },
        RefOr::Ref(_) => None,
    });
    match schema {
        Some(s) => walk(s, body, "the body", doc.components.as_ref(), 0),
        None => Ok(()),
    }
}

fn walk(
    s: &RefOr<Schema>,
    v: &Value,
    at: &str,
    components: Option<&Components>,
    depth: usize,
) -> Result<(), String> {
    if depth > 16 || v.is_null() {
        return Ok(());
    }
    match s {
        RefOr::Ref(r) => {
            let name = r.ref_location.rsplit('/').next().unwrap_or_default();
            match components.and_then(|c| c.schemas.get(name)) {
                Some(s) => walk(s, v, at, components, depth + 1),
                None => Ok(()),
            }
        }
        RefOr::T(Schema::Object(o)) => {
            let wants_object = match &o.schema_type {
                SchemaType::Type(t) => *t == Type::Object,
                SchemaType::Array(ts) => ts.contains(&Type::Object) && !ts.contains(&Type::Array),
                SchemaType::AnyValue => false,
            };
            match v {
                Value::Array(_) if wants_object => {
                    Err(format!("{at} must be a JSON object, not an array"))
                }
                Value::Object(m) => {
                    for (k, ps) in &o.properties {
                        if let Some(x) = m.get(k) {
                            walk(ps, x, &format!("{at}'s {k}"), components, depth + 1)?;
                        }
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        RefOr::T(Schema::Array(a)) => match (&a.items, v) {
            (utoipa::openapi::schema::ArrayItems::RefOrSchema(item), Value::Array(xs)) => xs
                .iter()
                .try_for_each(|x| walk(item, x, at, components, depth + 1)),
            _ => Ok(()),
        },
        RefOr::T(Schema::AllOf(all)) => all
            .items
            .iter()
            .try_for_each(|s| walk(s, v, at, components, depth + 1)),
        RefOr::T(Schema::OneOf(one)) => {
            // `Option<T>`: `T` or null; a null was let through above.
            let not_null: Vec<_> = one
                .items
                .iter()
                .filter(|s| !matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null)))
                .collect();
            match not_null.as_slice() {
                [only] => walk(only, v, at, components, depth + 1),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

//! The OpenAPI document against the server that serves it: the closed sets are declared as
//! the enums the handlers check, a kind without a handler is a declared 501, `POST /api/jobs`
//! links to the routes of the job it created, and the body errors (no JSON content type,
//! malformed JSON, the wrong shape, too large) are the documented statuses with the error
//! table's JSON body. The full conformance run (schemathesis, every operation) is the root
//! package's `tests/openapi_schemathesis.rs`.

mod common;

use api::Role;
use common::*;
use hyper::StatusCode;
use queue::JobKind;
use serde_json::Value;
use std::collections::BTreeSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// One HTTP/1.1 exchange on a fresh connection, with exactly the headers given (the test
/// client always says `Content-Type: application/json`): status and JSON body.
/// Raw on purpose: these requests lack or misstate the content type, which ws::client never does.
async fn raw(srv: &Server, head: &str, body: &[u8]) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let mut req = format!(
        "{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text[9..12].parse().unwrap();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "a JSON error body: {text}"
    );
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_declares_enums_501_and_links() {
    let srv = start(Opts {
        workers: false,
        ..Opts::default()
    })
    .await;
    let doc = srv.req("GET", "/api/openapi.json", None, None).await.json;
    let kinds: BTreeSet<String> = JobKind::ALL.iter().map(|k| k.to_string()).collect();
    let post = &doc["paths"]["/api/jobs"]["post"];
    let body = &post["requestBody"]["content"]["application/json"]["schema"];
    let body = match body["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => body,
    };
    assert_eq!(strings(&body["properties"]["kind"]["enum"]), kinds);
    assert_eq!(body["additionalProperties"], false, "{body}");
    assert_eq!(body["properties"]["max_attempts"]["minimum"], 1);
    assert_eq!(body["properties"]["max_attempts"]["maximum"], 100);
    for (path, method) in [("/api/jobs", "post"), ("/api/jobs/{id}/retry", "post")] {
        assert!(
            doc["paths"][path][method]["responses"]["501"].is_object(),
            "{method} {path} declares 501"
        );
    }
    let kind_param = doc["paths"]["/api/admin/concurrency/{kind}"]["put"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "kind")
        .unwrap()
        .clone();
    assert_eq!(strings(&kind_param["schema"]["enum"]), kinds);
    let list_kind = doc["paths"]["/api/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "kind" && p["in"] == "query")
        .unwrap()
        .clone();
    assert_eq!(strings(&list_kind["schema"]["enum"]), kinds);

    // Links from the 202 to every HTTP route of the job, with the id from the answer.
    let links = post["responses"]["202"]["links"].as_object().unwrap();
    let mut ops: BTreeSet<String> = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap().to_string();
            assert!(ids.insert(id.clone()), "operationId {id} is unique");
            if path.starts_with("/api/jobs/{id}") && !op["responses"]["101"].is_object() {
                ops.insert(id);
            }
            let _ = method;
        }
    }
    assert!(ops.len() >= 4, "get, wait, cancel, retry: {ops:?}");
    let linked: BTreeSet<String> = links
        .values()
        .map(|l| {
            assert_eq!(l["parameters"]["id"], "$response.body#/id", "{l}");
            l["operationId"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(linked, ops);
    // An account action's answer links to the job doing the work.
    let acc = &doc["paths"]["/api/accounts/{id}/suspend"]["post"]["responses"]["202"]["links"];
    assert_eq!(acc["get_job"]["parameters"]["id"], "$response.body#/job/id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_errors_are_the_documented_statuses() {
    let srv = start(Opts {
        workers: false,
        ..Opts::default()
    })
    .await;
    let doc = srv.req("GET", "/api/openapi.json", None, None).await.json;
    let documented = |path: &str, method: &str, status: u16| {
        assert!(
            doc["paths"][path][method]["responses"][status.to_string()].is_object(),
            "{method} {path} documents {status}"
        );
    };
    let admin = token(Role::Admin, None, None);
    let auth = format!("Authorization: Bearer {admin}");
    let job = br#"{"kind": "diagnostic"}"#;

    // No Content-Type, and a wrong one: 400 invalid_request, saying what is expected.
    for ct in ["", "\r\nContent-Type: text/plain"] {
        let (s, b) = raw(&srv, &format!("POST /api/jobs HTTP/1.1\r\n{auth}{ct}"), job).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (400, Some("invalid_request")),
            "{b}"
        );
        assert!(
            b["message"].as_str().unwrap().contains("application/json"),
            "{b}"
        );
        documented("/api/jobs", "post", s);
    }
    // Malformed JSON: 400.
    let (s, b) = raw(
        &srv,
        &format!("POST /api/jobs HTTP/1.1\r\n{auth}\r\nContent-Type: application/json"),
        b"{\"kind\": ",
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_request")),
        "{b}"
    );
    assert!(
        b["message"].as_str().unwrap().starts_with("malformed JSON"),
        "{b}"
    );

    // Well-formed, wrong shape: 422. An array is not the object the document describes, even
    // though serde would read a struct from one; nor is one nested where an object is.
    for (path, method, body) in [
        ("/api/jobs", "POST", r#"["diagnostic", {}]"#),
        (
            "/api/packages",
            "POST",
            r#"{"id": "p1", "limits": [null, 5]}"#,
        ),
        ("/api/migration/m1/health", "POST", "[null, null]"),
        ("/api/jobs", "POST", r#"{"kind": "no_such_kind"}"#),
        (
            "/api/jobs",
            "POST",
            r#"{"kind": "diagnostic", "max_attempts": 0}"#,
        ),
        // Every integer is declared int64: above i64::MAX is refused, unsigned fields too.
        (
            "/api/resellers/r1/allowance",
            "PUT",
            r#"{"max_accounts": 1, "disk_mb": 9223372036854775808}"#,
        ),
    ] {
        let r = srv.req(method, path, Some(&admin), Some(body)).await;
        assert_eq!(
            (r.status, r.json["error"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")),
            "{method} {path} {body}: {}",
            r.json
        );
    }
    documented("/api/jobs", "post", 422);
    documented("/api/migration/{id}/health", "post", 422);

    // A whole number written with a fraction of zero is that number (JSON Schema agrees).
    let r = srv
        .req(
            "POST",
            "/api/jobs",
            Some(&admin),
            Some(r#"{"kind": "diagnostic", "max_attempts": 3.0}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let id = r.json["id"].as_str().unwrap().to_string();
    let j = srv
        .req("GET", &format!("/api/jobs/{id}"), Some(&admin), None)
        .await;
    assert_eq!(j.json["max_attempts"], 3);
    // A health check with no body, or JSON null, takes the defaults (the document: optional);
    // this server has no health_check handler, so the answer is its declared 501, not a 4xx.
    for body in [None, Some("null")] {
        let r = srv
            .req("POST", "/api/migration/m1/health", Some(&admin), body)
            .await;
        assert!(
            [StatusCode::ACCEPTED, StatusCode::NOT_IMPLEMENTED].contains(&r.status),
            "{body:?}: {} {}",
            r.status,
            r.json
        );
    }
    documented("/api/migration/{id}/health", "post", 501);

    // A kind this build has no handler for: the declared 501.
    let r = srv
        .req(
            "POST",
            "/api/jobs",
            Some(&admin),
            Some(r#"{"kind": "upgrade"}"#),
        )
        .await;
    if r.status == StatusCode::NOT_IMPLEMENTED {
        assert_eq!(r.json["error"], "not_available");
    }

    // Too large: 413 payload_too_large, documented on every route with a body.
    let big = format!(
        r#"{{"kind": "diagnostic", "payload": {{"x": "{}"}}}}"#,
        "a".repeat(2 << 20)
    );
    let r = srv.req("POST", "/api/jobs", Some(&admin), Some(&big)).await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    documented("/api/jobs", "post", 413);

    // A declared minimum is enforced: limit=0 is 400, not quietly taken as 1.
    // And an enum: a `format` that is not csv or json is refused on the list too.
    for path in [
        "/api/audit?limit=0",
        "/api/audit/export?limit=0",
        "/api/jobs?limit=0",
        "/api/audit?format=xml",
    ] {
        let r = srv.req("GET", path, Some(&admin), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.json);
        assert_eq!(r.json["error"], "invalid_request");
    }
}

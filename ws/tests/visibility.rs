//! `serve_socket` checks who may see a job itself, on every path that tells about the job —
//! here the end of a replay whose `complete` lies before `since` — instead of trusting the
//! route in front of it. The socket is served by a bare axum route that checks nothing, over a
//! real Redis and a real WebSocket.

use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::routing::get;
use futures::StreamExt;
use queue::{testing, JobKind, NewJob, Outcome, Queue};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use ws::client::tungstenite::Message;
use ws::{Hub, HubConfig, Role, Scope, Viewer};

async fn live(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> axum::response::Response {
    // bob, a customer who does not own the job; no check here on purpose.
    let viewer = Viewer {
        role: Role::Customer,
        subject: "bob".into(),
        account: Some("bob".into()),
        reseller: None,
    };
    let guard = hub.try_acquire().expect("a connection slot");
    let since = q.get("since").cloned();
    upgrade.on_upgrade(move |s| ws::serve_socket(s, hub, viewer, Scope::Job(id), since, guard))
}

#[tokio::test]
async fn the_end_of_a_replay_tells_nothing_about_another_tenants_job() {
    let q = Queue::new(testing::config("wsvis")).unwrap();
    let id = q
        .enqueue(NewJob::new(JobKind::Diagnostic, serde_json::json!({})).account("alice"))
        .await
        .unwrap()
        .id;
    let claimed = q.claim("w", &[JobKind::Diagnostic], 1).await.unwrap().jobs;
    let c = &claimed[0];
    q.complete(
        &c.id,
        &c.token,
        JobKind::Diagnostic,
        Outcome::Succeeded(serde_json::json!({"secret": "alice's"})),
    )
    .await
    .unwrap();
    let (_, seq) = q.get_at(&id).await.unwrap();

    let stop = CancellationToken::new();
    let hub = Hub::start(q.clone(), HubConfig::default(), stop.clone());
    let app = axum::Router::new()
        .route("/live/{id}", get(live))
        .with_state(hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut sock = ws::client::HttpClient::new(&format!("http://{addr}"), None)
        .unwrap()
        .connect_ws(&format!("/live/{id}"), Some(&seq.to_string()))
        .await
        .unwrap();
    let mut texts = Vec::new();
    let mut closed_with = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), sock.next()).await {
        match m.unwrap() {
            Message::Text(t) => texts.push(t.to_string()),
            Message::Close(f) => {
                closed_with = f.map(|f| f.reason.to_string());
                break;
            }
            _ => {}
        }
    }
    stop.cancel();
    assert!(
        texts.iter().all(|t| !t.contains("alice")),
        "nothing of alice's job reaches bob: {texts:?}"
    );
    assert_eq!(closed_with.as_deref(), Some("job not found"), "{texts:?}");
}

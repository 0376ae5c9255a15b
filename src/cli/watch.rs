//! `npanel watch <job>...`: one indicatif bar per job (stage, percent, MB/s, ETA) fed by the
//! job's WebSocket stream, log lines printed above the bars. A dropped connection is resumed
//! with `?since=<last seq>`, so nothing is missed or shown twice. Exit status: 0 when every job
//! succeeded, 1 otherwise (failed or cancelled).

use super::client::Api;
use anyhow::{anyhow, bail};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use std::time::Duration;
use ws::client::tungstenite::http::StatusCode;
use ws::client::tungstenite::Message;
use ws::client::ClientError;

/// How a watched job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Succeeded, with its summary.
    Succeeded(String),
    /// Failed or was cancelled, with the error.
    Failed(String),
}

/// Watch `ids` until each completes; returns whether all succeeded.
pub async fn watch(api: &Api, ids: &[String]) -> anyhow::Result<bool> {
    let tty = std::io::stderr().is_terminal();
    let mp = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let mut tasks = Vec::new();
    for id in ids {
        let bar = mp.add(ProgressBar::new(1000));
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(short(id));
        let (api, id, mp) = (api.clone(), id.clone(), mp.clone());
        tasks.push(tokio::spawn(async move {
            let r = watch_one(&api, &id, &bar, &mp, tty).await;
            (id, r)
        }));
    }
    let mut all_ok = true;
    for t in tasks {
        let (id, r) = t.await?;
        match r {
            Ok(Ending::Succeeded(summary)) => println!("{id} succeeded: {summary}"),
            Ok(Ending::Failed(err)) => {
                all_ok = false;
                println!("{id} failed: {err}");
            }
            Err(e) => {
                all_ok = false;
                println!("{id}: cannot watch: {e:#}");
            }
        }
    }
    Ok(all_ok)
}

fn short(id: &str) -> String {
    id.chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

/// Redraw a bar from a job object or a progress/stage message.
fn render(bar: &ProgressBar, v: &Value, status: &str) {
    let pct = v["progress_percent"].as_f64().unwrap_or(0.0);
    bar.set_position((pct * 10.0).round().clamp(0.0, 1000.0) as u64);
    let stage = v["current_stage"].as_str().unwrap_or("-");
    let speed = v["speed_mbps"]
        .as_f64()
        .map(|s| format!("{s:.1} MB/s"))
        .unwrap_or_else(|| "- MB/s".into());
    let eta = v["eta_seconds"]
        .as_f64()
        .map(|e| format!("ETA {}s", e.round()))
        .unwrap_or_else(|| "ETA -".into());
    bar.set_message(format!(
        "{pct:5.1}% {status:<9} {stage:<18} {speed:>12} {eta}"
    ));
}

fn say(mp: &MultiProgress, tty: bool, line: String) {
    if tty {
        let _ = mp.println(line);
    } else {
        println!("{line}");
    }
}

/// Longest silence on a live socket before `watch` assumes the connection is dead.
const READ_IDLE: Duration = Duration::from_secs(90);

async fn watch_one(
    api: &Api,
    id: &str,
    bar: &ProgressBar,
    mp: &MultiProgress,
    tty: bool,
) -> anyhow::Result<Ending> {
    let mut since: Option<String> = None;
    let mut failures = 0u32;
    let mut status: String;
    let mut last: Value = Value::Null;
    loop {
        let path = format!("/api/jobs/{}/live", super::client::encode(id));
        let stream = match api.http().connect_ws(&path, since.as_deref()).await {
            Ok(s) => s,
            Err(ClientError::Api(a)) => {
                let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
                let retryable = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                if retryable && failures < 5 {
                    failures += 1;
                    let wait = a.retry_after_secs().unwrap_or(1).clamp(1, 60);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    continue;
                }
                let msg = a.body["message"].as_str().unwrap_or("");
                bail!("{}: {msg} (HTTP {status})", a.code);
            }
            Err(e) => {
                failures += 1;
                if failures > 10 {
                    return Err(anyhow!("cannot connect to {}: {e}", api.base()));
                }
                say(
                    mp,
                    tty,
                    format!("{}: connection lost ({e}); reconnecting", short(id)),
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        failures = 0;
        let (_, mut rx) = stream.split();
        loop {
            // The server pings every `ws.ping_interval_secs` (30 s): a silent minute and a
            // half means a half-open connection (NAT timeout, suspended laptop): reconnect.
            let m = match tokio::time::timeout(READ_IDLE, rx.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    say(
                        mp,
                        tty,
                        format!(
                            "{}: no data for {}s; reconnecting",
                            short(id),
                            READ_IDLE.as_secs()
                        ),
                    );
                    break;
                }
            };
            let text = match m {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            if let Some(s) = v["seq"].as_str() {
                since = Some(s.to_string());
            }
            match v["type"].as_str().unwrap_or("") {
                "snapshot" => {
                    let job = &v["job"];
                    status = job["status"].as_str().unwrap_or("?").to_string();
                    render(bar, job, &status);
                    last = job.clone();
                    let tail = job["log_tail"].as_array().cloned().unwrap_or_default();
                    for l in tail.iter().rev().take(5).rev() {
                        say(
                            mp,
                            tty,
                            format!("{}: {}", short(id), l.as_str().unwrap_or("")),
                        );
                    }
                }
                "progress" | "stage" => {
                    status = "running".into();
                    render(bar, &v, &status);
                    last = v.clone();
                }
                "status" => {
                    status = v["status"].as_str().unwrap_or("?").to_string();
                    render(bar, &last, &status);
                    if let Some(e) = v["error"].as_str() {
                        say(mp, tty, format!("{}: {status}: {e}", short(id)));
                    }
                }
                "log" => say(
                    mp,
                    tty,
                    format!("{}: {}", short(id), v["line"].as_str().unwrap_or("")),
                ),
                "complete" => {
                    let ending = if v["success"] == true {
                        bar.set_position(1000);
                        bar.finish_with_message("succeeded");
                        Ending::Succeeded(match &v["summary"] {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Null => String::new(),
                            other => other.to_string(),
                        })
                    } else {
                        let e = v["error"].as_str().unwrap_or("failed").to_string();
                        bar.abandon_with_message(format!("failed: {e}"));
                        Ending::Failed(e)
                    };
                    return Ok(ending);
                }
                _ => {}
            }
        }
        // Dropped before `complete`: resume after the last seq we saw.
        failures += 1;
        if failures > 10 {
            bail!("the stream kept dropping");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

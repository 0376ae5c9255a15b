//! A real headless Chromium for the dashboard's tests, driven over the Chrome DevTools
//! Protocol, and a TCP proxy whose connections a test can cut.
//!
//! # Why a small CDP client of our own
//! The tests need a handful of commands: open a tab, navigate, evaluate an expression
//! (awaiting its promise), set the viewport, type and press keys, take a screenshot, and
//! collect console errors. That is one WebSocket (tokio-tungstenite, already a workspace
//! dependency) and JSON messages with ids: about 300 lines here. chromiumoxide (or
//! headless_chrome) would bring the generated bindings of the whole protocol, minutes of
//! build on the 2-core CI machine for every clean build, and a second WebSocket stack.
//!
//! # Chromium
//! Debian's `chromium` (or `NPANEL_TEST_CHROMIUM`), started with `--headless=new`, a fresh
//! profile in a temp dir, `--remote-debugging-port=0` (the port is read from the profile's
//! `DevToolsActivePort`), `--no-sandbox` when running as root, and its background networking
//! off: it talks to loopback only. It runs in its own process group, killed on drop.
//! [`Chromium::launch`] answers `None` (after printing SKIP) when no Chromium is installed,
//! and panics instead when `CI` is set: in CI the dashboard tests must run.
//!
//! # Console errors
//! `Runtime.exceptionThrown`, `Runtime.consoleAPICalled` of type `error`/`assert` and
//! `Log.entryAdded` of level `error` (failed loads, CSP violations, refused WebSockets) are
//! collected per tab; [`Page::console_errors`] returns them.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// One event: session id, method, params.
type Event = (Option<String>, String, Value);

struct Conn {
    tx: mpsc::UnboundedSender<Message>,
    pending: Pending,
    events: Arc<Mutex<Vec<Event>>>,
    next: AtomicU64,
}

impl Conn {
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.tx
            .send(Message::text(msg.to_string()))
            .map_err(|_| "the DevTools connection is closed".to_string())?;
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(format!("{method}: the DevTools connection closed")),
            Err(_) => Err(format!("{method}: no answer in 60 s")),
        }
    }
}

/// A headless Chromium, killed (with its process group) on drop.
pub struct Chromium {
    child: Child,
    conn: Arc<Conn>,
    _profile: tempfile::TempDir,
}

fn find_chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NPANEL_TEST_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

impl Chromium {
    /// Start Chromium; `None` (after printing SKIP) when it is not installed and `CI` is unset.
    ///
    /// # Panics
    /// When `CI` is set and there is no Chromium, or when it does not start.
    pub async fn launch(test: &str) -> Option<Chromium> {
        let Some(bin) = find_chromium() else {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: chromium is not installed, and CI is set: .ci/run installs it (apt-get install chromium)");
            }
            eprintln!("SKIP {test}: chromium is not installed (apt-get install chromium)");
            return None;
        };
        let profile = tempfile::tempdir().expect("profile dir");
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--headless=new",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-breakpad",
            "--disable-dev-shm-usage",
            "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
            "--no-pings",
            "--metrics-recording-only",
            "--mute-audio",
            "--hide-scrollbars",
            "--password-store=basic",
            "--use-mock-keychain",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
        if nix::unistd::geteuid().is_root() {
            cmd.arg("--no-sandbox");
        }
        cmd.arg("about:blank");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut me = Guard(Some(child));
        let port_file = profile.path().join("DevToolsActivePort");
        let t0 = Instant::now();
        let ws_url = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                let mut lines = s.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{port}{path}");
                }
            }
            if let Some(st) = me.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("chromium exited at start: {st}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "chromium wrote no DevToolsActivePort in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("connect to chromium's DevTools");
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let (p2, e2) = (pending.clone(), events.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p2.lock().unwrap().remove(&id) {
                        let r = match v.get("error") {
                            Some(e) => Err(e.to_string()),
                            None => Ok(v["result"].clone()),
                        };
                        let _ = tx.send(r);
                    }
                } else if let Some(method) = v["method"].as_str() {
                    let session = v["sessionId"].as_str().map(String::from);
                    e2.lock()
                        .unwrap()
                        .push((session, method.to_string(), v["params"].clone()));
                }
            }
            // Whoever still waits learns the connection is gone.
            p2.lock().unwrap().clear();
        });
        let child = me.0.take().expect("child");
        Some(Chromium {
            child,
            conn: Arc::new(Conn {
                tx,
                pending,
                events,
                next: AtomicU64::new(1),
            }),
            _profile: profile,
        })
    }

    /// A new tab at `about:blank`, with page, runtime and log events on.
    pub async fn new_page(&self) -> Page {
        let t = self
            .conn
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await
            .expect("create a tab");
        let target = t["targetId"].as_str().expect("targetId").to_string();
        let a = self
            .conn
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await
            .expect("attach to the tab");
        let session = a["sessionId"].as_str().expect("sessionId").to_string();
        let p = Page {
            conn: self.conn.clone(),
            session,
            errors_from: Arc::new(Mutex::new(0)),
        };
        for m in ["Page.enable", "Runtime.enable", "Log.enable"] {
            p.call(m, json!({})).await.expect(m);
        }
        p
    }
}

struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            kill_group(c);
        }
    }
}

fn kill_group(c: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Chromium {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// One tab.
#[derive(Clone)]
pub struct Page {
    conn: Arc<Conn>,
    session: String,
    errors_from: Arc<Mutex<usize>>,
}

impl Page {
    /// A raw protocol command on this tab.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.conn.call(Some(&self.session), method, params).await
    }

    /// Go to `url` and wait until the document has loaded. (`Page.navigate` answers once the
    /// new document is committed; the page may go on elsewhere by itself, as `/login` does.)
    pub async fn goto(&self, url: &str) {
        let r = self
            .call("Page.navigate", json!({"url": url}))
            .await
            .expect("navigate");
        assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        )
        .await;
    }

    /// The value of a JavaScript expression (promises awaited).
    pub async fn eval(&self, expr: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!(
                "{expr}: {}",
                e["exception"]["description"]
                    .as_str()
                    .unwrap_or(&e.to_string())
            ));
        }
        Ok(r["result"]["value"].clone())
    }

    /// [`Page::eval`], panicking on an exception.
    pub async fn js(&self, expr: &str) -> Value {
        self.eval(expr).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Wait until `expr` is truthy (checked every 50 ms); its value.
    ///
    /// # Panics
    /// After `limit`, with the last value or exception.
    pub async fn wait_for(&self, expr: &str, limit: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.eval(expr).await;
            if let Ok(v) = &v {
                let truthy = match v {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    Value::String(s) => !s.is_empty(),
                    _ => true,
                };
                if truthy {
                    return v.clone();
                }
            }
            if t0.elapsed() > limit {
                let body = self
                    .eval("document.body && document.body.innerText.slice(0, 2000)")
                    .await
                    .unwrap_or_default();
                panic!("waited {limit:?} for `{expr}`: last {v:?}\npage text: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lay the page out at `width`×`height` CSS pixels (`mobile`: a phone's viewport).
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await
        .expect("set the viewport");
    }

    /// Write a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await
            .expect("screenshot");
        let png = base64_decode(r["data"].as_str().expect("png data"));
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Type `text` into the focused element, as a keyboard would.
    pub async fn type_text(&self, text: &str) {
        self.call("Input.insertText", json!({"text": text}))
            .await
            .expect("type");
    }

    /// Press and release one key (`Enter`, `Tab`, ...).
    pub async fn press(&self, key: &str) {
        let (code, vk, text) = match key {
            "Enter" => ("Enter", 13, "\r"),
            "Tab" => ("Tab", 9, ""),
            "Space" => ("Space", 32, " "),
            other => panic!("no key code for {other}"),
        };
        let mut down = json!({"type": "keyDown", "key": if key == "Space" { " " } else { key }, "code": code,
            "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk});
        if !text.is_empty() {
            down["text"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", down)
            .await
            .expect("key down");
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": if key == "Space" { " " } else { key }, "code": code,
                "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}),
        )
        .await
        .expect("key up");
    }

    /// Console errors, uncaught exceptions and error log entries of this tab since it opened
    /// (or since the last [`Page::forget_errors`]).
    pub fn console_errors(&self) -> Vec<String> {
        let from = *self.errors_from.lock().unwrap();
        self.conn.events.lock().unwrap()[..]
            .iter()
            .filter(|(s, _, _)| s.as_deref() == Some(self.session.as_str()))
            .filter_map(|(_, m, p)| match m.as_str() {
                "Runtime.exceptionThrown" => Some(format!(
                    "exception: {}",
                    p["exceptionDetails"]["exception"]["description"]
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| p["exceptionDetails"]["text"].to_string())
                )),
                "Runtime.consoleAPICalled"
                    if matches!(p["type"].as_str(), Some("error" | "assert")) =>
                {
                    Some(format!(
                        "console.{}: {}",
                        p["type"].as_str().unwrap_or(""),
                        p["args"]
                    ))
                }
                "Log.entryAdded" if p["entry"]["level"] == "error" => Some(format!(
                    "log ({}): {} {}",
                    p["entry"]["source"].as_str().unwrap_or(""),
                    p["entry"]["text"].as_str().unwrap_or(""),
                    p["entry"]["url"].as_str().unwrap_or("")
                )),
                _ => None,
            })
            .collect::<Vec<_>>()
            .into_iter()
            .skip(from)
            .collect()
    }

    /// Start counting console errors afresh (after an expected one).
    pub fn forget_errors(&self) {
        let n = self.console_errors().len() + *self.errors_from.lock().unwrap();
        *self.errors_from.lock().unwrap() = n;
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => 0,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let mut n = 0u32;
        for i in 0..4 {
            n = (n << 6) | chunk.get(i).map_or(0, |&c| val(c));
        }
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad.min(2)]);
    }
    out
}

/// A loopback TCP proxy in front of a server, so a test can drop every open connection (as a
/// flaky network would) and hold new ones until it lets them through.
pub struct CutProxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    open: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// A proxy to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> CutProxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (open, open_rx) = watch::channel(true);
        let c2 = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let up = upstream.clone();
                let mut gate = open_rx.clone();
                let task = tokio::spawn(async move {
                    // Held: the connection waits here, unanswered, until the gate opens.
                    if gate.wait_for(|o| *o).await.is_err() {
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(&up).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let mut v = c2.lock().unwrap();
                v.retain(|h| !h.is_finished());
                v.push(task.abort_handle());
            }
        });
        CutProxy {
            url,
            conns,
            open,
            accept,
        }
    }

    /// Close every connection open now, and hold new ones until [`CutProxy::release`].
    pub fn cut_and_hold(&self) {
        self.open.send_replace(false);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Let held and new connections through.
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

//! A real headless Chromium for the tests of authd's HTML pages, driven over the Chrome DevTools
//! Protocol (CDP) on a loopback websocket: open a page, click like a person (a mouse press and
//! release where the element is), type, read the text, and see every request the page made and
//! every error it reported (console errors, uncaught exceptions, Content-Security-Policy
//! violations).
//!
//! Chromium is `$AUTHD_TEST_CHROMIUM`, else `chromium` or `chromium-browser` on PATH (Debian:
//! `apt-get install chromium`). Nothing is skipped when it is missing: [`Browser::launch`] fails
//! and says how to install it.
//!
//! Every wait is bounded and waits on something: a CDP answer, a CDP event (a new document's
//! `load`), or a predicate polled against a deadline ([`Page::wait_for_text`]).
//!
//! Navigations: [`Page::open`] returns once the document is loaded. A click that submits a form
//! or follows a link starts a navigation the click does not wait for; use
//! [`Page::click_and_wait_for_navigation`] to return once the new document is loaded.
//! [`Page::wait_for_text`] also works across a navigation: while one is under way it keeps
//! polling the page that is there.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

/// How long Chromium may take to print its DevTools address (a loaded CI machine starting
/// several at once).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CDP command may take to be answered.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a document may take to load after `open` or a navigating click.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `wait_for_text` reads the page again when no CDP event came in between.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of Chromium's stderr kept to explain a launch that failed.
const STDERR_TAIL: usize = 20;

const INSTALL_HINT: &str = "install it with `apt-get install chromium` (Debian, Ubuntu) or set \
                            AUTHD_TEST_CHROMIUM to a Chromium or Chrome binary";

mod sys {
    unsafe extern "C" {
        pub fn geteuid() -> u32;
        pub fn kill(pid: i32, signal: i32) -> i32;
        pub fn prctl(option: i32, ...) -> i32;
    }
    pub const PR_SET_PDEATHSIG: i32 = 1;
    pub const SIGKILL: i32 = 9;
}

/// A headless Chromium of its own: its process group is killed and its temporary directory
/// (profile, temporary files) removed when this is dropped.
pub struct Browser {
    cdp: Arc<Cdp>,
    tasks: [JoinHandle<()>; 2],
    process: Chromium,
}

impl Browser {
    /// Starts headless Chromium: `$AUTHD_TEST_CHROMIUM`, else `chromium` / `chromium-browser` on
    /// PATH; an error naming `apt-get install chromium` when there is none. A fresh profile in a
    /// temporary directory (its TMPDIR there too), no sandbox when running as root (Chromium
    /// refuses to start there otherwise), no GPU, no extensions, sync or background networking;
    /// the DevTools address (port 0: the system picks one) is read from its stderr, within 30 s.
    pub async fn launch() -> anyhow::Result<Browser> {
        let executable = find_chromium()?;
        let dir = fresh_temp_dir()?;
        let mut command = Command::new(&executable);
        command
            .args([
                "--headless=new",
                "--disable-gpu",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-component-extensions-with-background-pages",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-sync",
                "--disable-background-networking",
                "--disable-domain-reliability",
                "--disable-client-side-phishing-detection",
                "--disable-breakpad",
                "--metrics-recording-only",
                // Containers often have a /dev/shm of 64 MiB: Chromium crashes when it fills.
                "--disable-dev-shm-usage",
                "--password-store=basic",
                "--mute-audio",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            // Its temporary files (shared memory, with --disable-dev-shm-usage) and the default
            // profile's place (crash reports) in the directory Drop removes, not /tmp or ~.
            .env("TMPDIR", dir.join("tmp"))
            .env("XDG_CONFIG_HOME", dir.join("config"));
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { sys::geteuid() } == 0 {
            command.arg("--no-sandbox");
        }
        command
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // A process group of its own, so that Drop kills the renderers and helpers too.
            .process_group(0);
        // SAFETY: between fork and exec only prctl, which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                // Chromium dies with the test process, even one killed by a test runner.
                sys::prctl(sys::PR_SET_PDEATHSIG, sys::SIGKILL);
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error).with_context(|| {
                    format!(
                        "cannot start Chromium ({}); {INSTALL_HINT}",
                        executable.display()
                    )
                });
            }
        };
        let stderr = child.stderr.take();
        let mut process = Chromium {
            child,
            dir,
            executable,
        };
        let stderr = stderr.context("Chromium's stderr was not captured")?;
        let ws_url = process.devtools_url(stderr).await?;
        let (socket, _) = timeout(
            COMMAND_TIMEOUT,
            tokio_tungstenite::connect_async(ws_url.as_str()),
        )
        .await
        .map_err(|_| anyhow!("Chromium's DevTools websocket ({ws_url}) did not open in time"))?
        .with_context(|| format!("cannot open Chromium's DevTools websocket ({ws_url})"))?;
        let (cdp, tasks) = Cdp::start(socket);
        Ok(Browser {
            cdp,
            tasks,
            process,
        })
    }

    /// The process id of Chromium's main process (it leads a process group of its own).
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// This browser's temporary directory (its profile, its temporary files), removed on Drop.
    pub fn temp_dir(&self) -> &Path {
        &self.process.dir
    }

    /// Opens a new tab at `url` and waits (30 s at most) for its document's load event.
    pub async fn open(&self, url: &str) -> anyhow::Result<Page> {
        let created = self
            .cdp
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        let target_id = string_at(&created, "/targetId")?;
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        let session = string_at(&attached, "/sessionId")?;
        let state = Arc::new(PageState::default());
        self.cdp
            .sessions()
            .insert(session.clone(), Arc::clone(&state));
        let page = Page {
            cdp: Arc::clone(&self.cdp),
            session,
            target_id,
            state,
        };
        for (method, params) in [
            ("Page.enable", json!({})),
            ("Page.setLifecycleEventsEnabled", json!({ "enabled": true })),
            ("Network.enable", json!({})),
            ("Runtime.enable", json!({})),
            ("Log.enable", json!({})),
        ] {
            page.call(method, params).await?;
        }
        let navigated = page.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = navigated.get("errorText").and_then(Value::as_str) {
            bail!("cannot open {url}: {error}");
        }
        let loader = string_at(&navigated, "/loaderId")
            .with_context(|| format!("opening {url} started no new document"))?;
        page.wait_for_load_of(&loader, url).await?;
        Ok(page)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What a virtual authenticator ([`Page::add_virtual_authenticator`]) can do.
#[derive(Clone, Copy, Debug)]
pub struct VirtualAuthenticator {
    /// It keeps discoverable credentials (resident keys): a passkey.
    pub resident_key: bool,
    /// It can verify the user (a PIN, a fingerprint).
    pub user_verification: bool,
    /// Whether that verification succeeds.
    pub user_verified: bool,
}

impl VirtualAuthenticator {
    /// A passkey authenticator: discoverable credentials, the user verified every time.
    pub const PASSKEY: VirtualAuthenticator = VirtualAuthenticator {
        resident_key: true,
        user_verification: true,
        user_verified: true,
    };
}

/// One tab, attached to its own CDP session.
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
    target_id: String,
    state: Arc<PageState>,
}

impl Page {
    /// A person's click: scrolls the element into view and dispatches a real mouse press and
    /// release at its centre (`Input.dispatchMouseEvent`), not `element.click()`. Fails when no
    /// element matches, when it has no size (hidden), or when another element covers its centre
    /// (a person would click that one). Does not wait for a navigation the click starts: see
    /// [`Page::click_and_wait_for_navigation`].
    pub async fn click(&self, selector: &str) -> anyhow::Result<()> {
        let found = self
            .eval(&format!(
                r#"(() => {{
                    const el = document.querySelector({selector});
                    if (!el) return {{ error: "no element matches it" }};
                    el.scrollIntoView({{
                        block: "center", inline: "center", behavior: "instant"
                    }});
                    const r = el.getBoundingClientRect();
                    if (r.width === 0 || r.height === 0)
                        return {{ error: "it has no size (hidden?)" }};
                    const x = r.left + r.width / 2, y = r.top + r.height / 2;
                    const hit = document.elementFromPoint(x, y);
                    if (!hit || !(hit === el || el.contains(hit)))
                        return {{ error: "its centre is covered by "
                            + (hit ? hit.outerHTML.slice(0, 120) : "nothing") }};
                    return {{ x, y }};
                }})()"#,
                selector = js_string(selector)
            ))
            .await?;
        if let Some(error) = found.get("error").and_then(Value::as_str) {
            bail!("cannot click {selector:?}: {error}");
        }
        let (x, y) = match (
            found.get("x").and_then(Value::as_f64),
            found.get("y").and_then(Value::as_f64),
        ) {
            (Some(x), Some(y)) => (x, y),
            _ => bail!("cannot click {selector:?}: no position for it ({found})"),
        };
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            let mut event = json!({ "type": kind, "x": x, "y": y, "buttons": buttons });
            if kind != "mouseMoved" {
                event["button"] = json!("left");
                event["clickCount"] = json!(1);
            }
            self.call("Input.dispatchMouseEvent", event).await?;
        }
        Ok(())
    }

    /// [`Page::click`], then waits (30 s at most) until a new document has replaced the current
    /// one and fired its load event: a form submitted, a link followed. Fails when none does.
    pub async fn click_and_wait_for_navigation(&self, selector: &str) -> anyhow::Result<()> {
        let before = self.state.log().main_loader.clone();
        self.click(selector).await?;
        let deadline = Instant::now() + LOAD_TIMEOUT;
        let outcome = self
            .wait_until(deadline, |log| {
                let current = log.main_loader.as_ref()?;
                (Some(current) != before.as_ref() && log.loaded.contains(current)).then_some(())
            })
            .await?;
        if outcome.is_none() {
            let log = self.state.log();
            if log.main_loader == before {
                bail!(
                    "clicking {selector:?} loaded no new document within {} s",
                    LOAD_TIMEOUT.as_secs()
                );
            }
            bail!(
                "clicking {selector:?} started a new document, which did not load within {} s",
                LOAD_TIMEOUT.as_secs()
            );
        }
        Ok(())
    }

    /// Focuses the element (scrolled into view) and types the text into it
    /// (`Input.insertText`). Fails when no element matches or it cannot take the focus
    /// (disabled, not focusable).
    pub async fn type_into(&self, selector: &str, text: &str) -> anyhow::Result<()> {
        let focused = self
            .eval(&format!(
                r#"(() => {{
                    const el = document.querySelector({selector});
                    if (!el) return "no element matches it";
                    el.scrollIntoView({{
                        block: "center", inline: "center", behavior: "instant"
                    }});
                    el.focus();
                    return document.activeElement === el ? null : "it does not take the focus";
                }})()"#,
                selector = js_string(selector)
            ))
            .await?;
        if let Some(error) = focused.as_str() {
            bail!("cannot type into {selector:?}: {error}");
        }
        self.call("Input.insertText", json!({ "text": text }))
            .await?;
        Ok(())
    }

    /// `document.body.innerText`: the text a person sees ("" while there is no body).
    pub async fn text(&self) -> anyhow::Result<String> {
        let text = self
            .eval("document.body ? document.body.innerText : ''")
            .await?;
        text.as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the page's text is not a string: {text}"))
    }

    /// Waits until the page's text contains `needle`, at most `within`; the error shows the text
    /// it last saw. Reads the text again on every CDP event from the page and at least every
    /// 50 ms. Across a navigation it keeps reading whichever document is there (a read that
    /// fails because the document is being replaced counts as "not yet").
    pub async fn wait_for_text(&self, needle: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut changed = self.state.changed.subscribe();
        let mut last_seen: Option<String> = None;
        let mut last_error: Option<anyhow::Error> = None;
        loop {
            match timeout_at(deadline, self.text()).await {
                Ok(Ok(text)) if text.contains(needle) => return Ok(()),
                Ok(Ok(text)) => {
                    last_seen = Some(text);
                    last_error = None;
                }
                Ok(Err(error)) => last_error = Some(error),
                Err(_) => {}
            }
            if let Some(reason) = self.cdp.closed_reason() {
                bail!("waiting for {needle:?}: the browser is gone ({reason})");
            }
            if Instant::now() >= deadline {
                let seen = match (&last_seen, &last_error) {
                    (_, Some(error)) => format!("its last read failed: {error:#}"),
                    (Some(text), None) => format!("the text it last showed was: {text:?}"),
                    (None, None) => "it could not be read in that time".to_owned(),
                };
                bail!(
                    "the page did not show {needle:?} within {} ms; {seen}",
                    within.as_millis()
                );
            }
            let next = (Instant::now() + POLL_INTERVAL).min(deadline);
            let _ = timeout_at(next, changed.changed()).await;
        }
    }

    /// Evaluates a JavaScript expression in the page (promises are awaited) and returns its
    /// value as JSON (`undefined` as null). A thrown exception is an error.
    pub async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(details) = answer.get("exceptionDetails") {
            bail!("the script threw: {}", describe_exception(details));
        }
        Ok(answer
            .pointer("/result/value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Every request the page made so far, as (method, URL), in order: documents (form posts
    /// included) and subresources, from `Network.requestWillBeSent`. A redirect is a second
    /// request. Chromium's own request for /favicon.ico (made when a page names no icon) is
    /// left out: it is the browser's, and comes at a time of its own.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.log().requests.clone()
    }

    /// What the page reported as wrong so far: console errors, uncaught exceptions,
    /// Content-Security-Policy violations and failed loads (`Runtime.consoleAPICalled` errors,
    /// `Runtime.exceptionThrown`, `Log.entryAdded` errors), one line each. A missing
    /// /favicon.ico is left out: Chromium asks for it on its own when a page names no icon.
    /// Events arrive asynchronously: one the page sent before the last command it answered
    /// (an `eval`, a `text`) is here.
    pub fn problems(&self) -> Vec<String> {
        self.state.log().problems.clone()
    }

    /// The URL of the document the tab shows.
    pub async fn url(&self) -> anyhow::Result<String> {
        let info = self
            .cdp
            .call(
                None,
                "Target.getTargetInfo",
                json!({ "targetId": self.target_id }),
            )
            .await?;
        string_at(&info, "/targetInfo/url")
    }

    /// Gives this tab a virtual WebAuthn authenticator (`WebAuthn.enable`, then
    /// `WebAuthn.addVirtualAuthenticator`): CTAP2 over the `internal` transport (a platform
    /// authenticator, like a laptop's or a phone's), presence simulated, so the page's
    /// `navigator.credentials.create` and `.get` complete without a dialog. `options` says
    /// whether it keeps discoverable credentials and verifies the user. Returns its id, for
    /// [`Page::virtual_credentials`]. It lives as long as the tab.
    ///
    /// WebAuthn needs a secure context and a domain: open the page at `http://localhost:PORT`
    /// (a potentially trustworthy origin); at `http://127.0.0.1:PORT` the browser refuses with
    /// "This is an invalid domain" (an IP address is no RP id).
    pub async fn add_virtual_authenticator(
        &self,
        options: VirtualAuthenticator,
    ) -> anyhow::Result<String> {
        self.call("WebAuthn.enable", json!({ "enableUI": false }))
            .await?;
        let added = self
            .call(
                "WebAuthn.addVirtualAuthenticator",
                json!({ "options": {
                    "protocol": "ctap2",
                    "ctap2Version": "ctap2_1",
                    "transport": "internal",
                    "hasResidentKey": options.resident_key,
                    "hasUserVerification": options.user_verification,
                    "isUserVerified": options.user_verified,
                    "automaticPresenceSimulation": true,
                } }),
            )
            .await?;
        string_at(&added, "/authenticatorId")
    }

    /// The credentials the virtual authenticator `authenticator` holds (`WebAuthn.getCredentials`),
    /// as CDP gives them: `credentialId`, `isResidentCredential`, `rpId`, `userHandle`,
    /// `signCount`, ...
    pub async fn virtual_credentials(&self, authenticator: &str) -> anyhow::Result<Vec<Value>> {
        let answer = self
            .call(
                "WebAuthn.getCredentials",
                json!({ "authenticatorId": authenticator }),
            )
            .await?;
        answer
            .get("credentials")
            .and_then(Value::as_array)
            .cloned()
            .context("WebAuthn.getCredentials gave no list of credentials")
    }

    async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.cdp.call(Some(&self.session), method, params).await
    }

    /// Waits until the document `loader` (a CDP loader id) fired its load event.
    async fn wait_for_load_of(&self, loader: &str, url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + LOAD_TIMEOUT;
        self.wait_until(deadline, |log| log.loaded.contains(loader).then_some(()))
            .await?
            .with_context(|| {
                format!(
                    "{url} did not finish loading within {} s",
                    LOAD_TIMEOUT.as_secs()
                )
            })
    }

    /// `check` on the page's log, again on every event, until it gives a value or the deadline
    /// passes (`Ok(None)`); an error when the browser connection is gone.
    async fn wait_until<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&PageLog) -> Option<T>,
    ) -> anyhow::Result<Option<T>> {
        let mut changed = self.state.changed.subscribe();
        loop {
            if let Some(value) = check(&self.state.log()) {
                return Ok(Some(value));
            }
            if let Some(reason) = self.cdp.closed_reason() {
                bail!("the browser is gone ({reason})");
            }
            if timeout_at(deadline, changed.changed()).await.is_err() {
                return Ok(None);
            }
        }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.cdp.sessions().remove(&self.session);
        self.cdp
            .send_and_forget("Target.closeTarget", json!({ "targetId": self.target_id }));
    }
}

/// What a page's events told so far.
#[derive(Default)]
struct PageState {
    log: Mutex<PageLog>,
    /// Bumped on every event of the page (and when the connection closes): what waits wake on.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct PageLog {
    requests: Vec<(String, String)>,
    problems: Vec<String>,
    /// The loader id of the main frame's current document (`Page.frameNavigated`).
    main_loader: Option<String>,
    /// Loader ids of the documents that fired their load event (`Page.lifecycleEvent`).
    loaded: HashSet<String>,
}

impl PageState {
    fn log(&self) -> MutexGuard<'_, PageLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, method: &str, params: &Value) {
        let text = |pointer: &str| params.pointer(pointer).and_then(Value::as_str);
        {
            let mut log = self.log();
            match method {
                "Network.requestWillBeSent" if !is_browsers_favicon_request(params) => {
                    if let (Some(method), Some(url)) =
                        (text("/request/method"), text("/request/url"))
                    {
                        log.requests.push((method.to_owned(), url.to_owned()));
                    }
                }
                "Page.frameNavigated" if params.pointer("/frame/parentId").is_none() => {
                    log.main_loader = text("/frame/loaderId").map(str::to_owned);
                }
                "Page.lifecycleEvent" if text("/name") == Some("load") => {
                    if let Some(loader) = text("/loaderId") {
                        log.loaded.insert(loader.to_owned());
                    }
                }
                "Runtime.consoleAPICalled"
                    if matches!(text("/type"), Some("error") | Some("assert")) =>
                {
                    let args = params
                        .get("args")
                        .and_then(Value::as_array)
                        .map(|args| {
                            args.iter()
                                .map(|arg| match arg.get("value") {
                                    Some(Value::String(s)) => s.clone(),
                                    Some(value) => value.to_string(),
                                    None => arg
                                        .get("description")
                                        .and_then(Value::as_str)
                                        .unwrap_or("?")
                                        .to_owned(),
                                })
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    log.problems.push(format!("console.error: {args}"));
                }
                "Runtime.exceptionThrown" => {
                    let details = params.get("exceptionDetails").unwrap_or(&Value::Null);
                    log.problems
                        .push(format!("uncaught: {}", describe_exception(details)));
                }
                "Log.entryAdded"
                    if text("/entry/level") == Some("error") && !is_favicon_miss(params) =>
                {
                    let source = text("/entry/source").unwrap_or("log");
                    let message = text("/entry/text").unwrap_or("");
                    let problem = match text("/entry/url") {
                        Some(url) if !url.is_empty() => format!("{source}: {message} ({url})"),
                        _ => format!("{source}: {message}"),
                    };
                    log.problems.push(problem);
                }
                _ => return,
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The CDP connection: commands out, answers matched to them by id, events routed to their
/// page by session id.
struct Cdp {
    outgoing: mpsc::UnboundedSender<Message>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>,
    sessions: Mutex<HashMap<String, Arc<PageState>>>,
    closed: Mutex<Option<String>>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Cdp {
    fn start(socket: Socket) -> (Arc<Cdp>, [JoinHandle<()>; 2]) {
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        let cdp = Arc::new(Cdp {
            outgoing,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
        });
        let writer = tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let reader = {
            let cdp = Arc::clone(&cdp);
            tokio::spawn(async move {
                let reason = loop {
                    match stream.next().await {
                        Some(Ok(Message::Text(text))) => cdp.dispatch(text.as_str()),
                        Some(Ok(Message::Close(_))) | None => {
                            break "Chromium closed the DevTools connection".to_owned();
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => break format!("DevTools connection failed: {error}"),
                    }
                };
                cdp.close(reason);
            })
        };
        (cdp, [writer, reader])
    }

    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.pending().insert(id, answer);
        // Checked after the insert: a close that came before it is seen here, one after it
        // fails the pending answer.
        if let Some(reason) = self.closed_reason() {
            self.pending().remove(&id);
            bail!("{method}: the browser is gone ({reason})");
        }
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        if self
            .outgoing
            .send(Message::text(message.to_string()))
            .is_err()
        {
            self.pending().remove(&id);
            bail!("{method}: the DevTools connection is closed");
        }
        match timeout(COMMAND_TIMEOUT, answered).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => bail!("{method}: {error}"),
            Ok(Err(_)) => bail!("{method}: the DevTools connection closed before the answer"),
            Err(_) => {
                self.pending().remove(&id);
                bail!(
                    "{method}: Chromium did not answer within {} s",
                    COMMAND_TIMEOUT.as_secs()
                )
            }
        }
    }

    /// Sends a command whose answer nobody waits for (from Drop).
    fn send_and_forget(&self, method: &str, params: Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = json!({ "id": id, "method": method, "params": params });
        let _ = self.outgoing.send(Message::text(message.to_string()));
    }

    fn dispatch(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            let Some(answer) = self.pending().remove(&id) else {
                return;
            };
            let result = match message.get("error") {
                Some(error) => Err(error
                    .get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| error.to_string(), str::to_owned)),
                None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = answer.send(result);
            return;
        }
        let (Some(method), Some(session)) = (
            message.get("method").and_then(Value::as_str),
            message.get("sessionId").and_then(Value::as_str),
        ) else {
            return;
        };
        let page = self.sessions().get(session).cloned();
        if let Some(page) = page {
            page.record(method, message.get("params").unwrap_or(&Value::Null));
        }
    }

    fn close(&self, reason: String) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        for (_, answer) in self.pending().drain() {
            let _ = answer.send(Err(reason.clone()));
        }
        for page in self.sessions().values() {
            page.changed.send_modify(|n| *n += 1);
        }
    }

    fn closed_reason(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Value, String>>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<PageState>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The Chromium process group and its temporary directory, both gone on Drop.
struct Chromium {
    child: Child,
    dir: PathBuf,
    executable: PathBuf,
}

impl Chromium {
    /// The `ws://` address Chromium prints on stderr once it listens; stderr is drained for the
    /// rest of its life so it never blocks on a full pipe.
    async fn devtools_url(&mut self, stderr: std::process::ChildStderr) -> anyhow::Result<String> {
        let (found, url) = oneshot::channel::<Result<String, Vec<String>>>();
        std::thread::spawn(move || {
            let mut found = Some(found);
            let mut tail = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let Some(sender) = found.take() else { continue };
                match line.split_once("DevTools listening on ") {
                    Some((_, url)) => {
                        let _ = sender.send(Ok(url.trim().to_owned()));
                    }
                    None => {
                        if tail.len() == STDERR_TAIL {
                            tail.remove(0);
                        }
                        tail.push(line);
                        found = Some(sender);
                    }
                }
            }
            if let Some(sender) = found {
                let _ = sender.send(Err(tail));
            }
        });
        let answer = timeout(LAUNCH_TIMEOUT, url).await;
        let executable = self.executable.display();
        match answer {
            Ok(Ok(Ok(url))) => Ok(url),
            Ok(Ok(Err(tail))) => {
                let status = match self.child.try_wait() {
                    Ok(Some(status)) => status.to_string(),
                    _ => "its stderr closed".to_owned(),
                };
                bail!(
                    "Chromium ({executable}) stopped before it listened for DevTools ({status}); \
                     its stderr ended with:\n{}",
                    tail.join("\n")
                )
            }
            Ok(Err(_)) => bail!("Chromium ({executable}): its stderr reader stopped"),
            Err(_) => bail!(
                "Chromium ({executable}) did not print its DevTools address within {} s",
                LAUNCH_TIMEOUT.as_secs()
            ),
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        // SAFETY: kill only reads its arguments; the group is the one our child leads, and the
        // child is not reaped yet, so its id cannot have been reused.
        unsafe { sys::kill(-group, sys::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `$AUTHD_TEST_CHROMIUM`, else `chromium` or `chromium-browser` on PATH.
fn find_chromium() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("AUTHD_TEST_CHROMIUM") {
        let path = PathBuf::from(path);
        if !is_executable(&path) {
            bail!(
                "AUTHD_TEST_CHROMIUM is {}, which is not an executable file",
                path.display()
            );
        }
        return Ok(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "the browser tests need Chromium, and neither `chromium` nor `chromium-browser` is on \
         PATH; {INSTALL_HINT}"
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A new directory for one browser: `profile/` (its user data dir), `tmp/` (its TMPDIR) and
/// `config/` (its XDG_CONFIG_HOME).
fn fresh_temp_dir() -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "authd-test-chromium-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let create = || -> std::io::Result<()> {
        std::fs::create_dir(&dir)?;
        for sub in ["profile", "tmp", "config"] {
            std::fs::create_dir(dir.join(sub))?;
        }
        Ok(())
    };
    if let Err(error) = create() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(error).with_context(|| {
            format!(
                "cannot create Chromium's temporary directory {}",
                dir.display()
            )
        });
    }
    Ok(dir)
}

fn string_at(value: &Value, pointer: &str) -> anyhow::Result<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("Chromium's answer has no {pointer}: {value}"))
}

/// Chromium's own request for /favicon.ico, made when a page names no icon: the browser's, not
/// the page's, and at a time of its own.
fn is_browsers_favicon_request(params: &Value) -> bool {
    params.pointer("/type").and_then(Value::as_str) == Some("Other")
        && params
            .pointer("/request/url")
            .and_then(Value::as_str)
            .is_some_and(is_favicon_url)
}

/// A failed load of /favicon.ico: the browser's own request (above), not the page's mistake.
fn is_favicon_miss(params: &Value) -> bool {
    params.pointer("/entry/source").and_then(Value::as_str) == Some("network")
        && params
            .pointer("/entry/url")
            .and_then(Value::as_str)
            .is_some_and(is_favicon_url)
}

fn is_favicon_url(url: &str) -> bool {
    url.split(['?', '#'])
        .next()
        .is_some_and(|path| path.ends_with("/favicon.ico"))
}

/// A JavaScript string literal of `s` (JSON's are).
fn js_string(s: &str) -> String {
    Value::from(s).to_string()
}

fn describe_exception(details: &Value) -> String {
    let text = |pointer: &str| details.pointer(pointer).and_then(Value::as_str);
    let message = text("/exception/description")
        .or_else(|| text("/text"))
        .unwrap_or("an exception");
    match text("/url") {
        Some(url) if !url.is_empty() => {
            let line = details
                .get("lineNumber")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                + 1;
            format!("{message} ({url}:{line})")
        }
        _ => message.to_owned(),
    }
}

//! The HTTP side of vipd on `[director] listen`: `GET /metrics`, `GET /status`, `GET /connections`,
//! `GET /ha`, `POST /reals/{name}/drain|enable|disable` and `POST /ha/active|standby` (docs/admin.md).
//!
//! It runs on its own thread with a current-thread tokio runtime and never touches the director: it
//! reads the [`Snapshot`](crate::director::Snapshot) the data path publishes, and sends [`Command`]s (operator state changes, the
//! flow dump) over a channel that the data path drains between batches ([`apply`]), woken by the capture
//! [`Waker`]; each answer comes back on a oneshot.
//!
//! Access: without `admin_token` only loopback peers are answered (others get 403); with a token every
//! request must carry `Authorization: Bearer TOKEN` (401 otherwise, and nothing is done). Bad requests get
//! a 4xx with a one-line JSON `{"error": ...}`: 400 bad parameters or body, 404 unknown path or server,
//! 405 wrong method, 409 a role change without `[sync]`. What can fail at start: binding the address (reported by [`spawn`]).
//!
//! Slow and hostile clients ([`AdminLimits`]): at most [`MAX_CONNECTIONS`] connections are open at once
//! (more get a 503 and are closed); a request head must arrive within [`HEADER_READ_TIMEOUT`] (which also
//! closes idle keep-alive connections) and fit in [`MAX_HEADER_BYTES`] (431 otherwise); a connection is
//! asked to close after [`CONNECTION_LIFETIME`] and cut [`CONNECTION_GRACE`] later. Each refusal is counted
//! in `vipd_admin_connections_refused_total` ([`Refusal`]).

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::{Arc, mpsc};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, oneshot};

use crate::capture::{CaptureStats, Waker};
use crate::config::Role;
use crate::conntable::Connection;
use crate::director::{Director, NoSync, Published, RoleChange};
use crate::metrics::Refusal;
use crate::plugin::{PluginDir, PluginEntry};
use crate::policy::ServerState;
use crate::shadow::ShadowSnapshot;
use crate::status::Status;
use crate::wire::Protocol;

/// Rows of `/connections` when `limit` is not given, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;
/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;

/// Connections open at once. Prometheus, `vipd status` and a few dashboards need a handful; an open
/// connection costs some 15 KB (3,000 slow clients took 44 MB before there was a bound), so this keeps
/// the server within a few MB.
pub const MAX_CONNECTIONS: usize = 256;
/// Time to send a whole request head, and how long an idle keep-alive connection stays open. Clients of
/// this API send their head in one write; a few seconds is plenty even over a slow link.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Age at which a connection is asked to close (after the response in progress, if any): only a client
/// asking more often than [`HEADER_READ_TIMEOUT`] keeps one this long, and it simply reconnects.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Time a connection asked to close has to finish its response before it is cut: room for the largest
/// `/connections` dump (some 3.5 MB) to a slow reader, or for a slow request body, but not forever.
pub const CONNECTION_GRACE: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers). Ours are a few hundred bytes, a token included;
/// 16 KiB leaves room for what proxies add. Larger heads, or more than 100 headers, get a 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// After a 431 or a 503 written outside hyper, the rest of the request is read and dropped for at most
/// this long (and [`LINGER_BYTES`]) before closing: closing with unread input would reset the connection,
/// and the client would likely lose the answer or fail to send its request.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// Connections over [`AdminLimits::max_connections`] answered 503 at once; more are closed unanswered.
/// Each takes up to [`LINGER`], so a flood of silent connections costs at most this many small tasks.
const MAX_REFUSING: usize = 64;
/// The least time between two warnings about refused connections (the metric counts every one).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the HTTP server allows a client; [`Default`] is what [`spawn`] uses, tests pass shorter times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Time to send a request head; also the idle time of a keep-alive connection.
    pub header_read: Duration,
    /// Age at which a connection is asked to close.
    pub lifetime: Duration,
    /// Time after `lifetime` at which a connection still open is cut.
    pub grace: Duration,
}

impl Default for AdminLimits {
    fn default() -> AdminLimits {
        AdminLimits {
            max_connections: MAX_CONNECTIONS,
            header_read: HEADER_READ_TIMEOUT,
            lifetime: CONNECTION_LIFETIME,
            grace: CONNECTION_GRACE,
        }
    }
}

/// An operator action on a real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RealAction {
    /// No new connections; existing ones run to their end.
    Drain,
    /// Takes new connections again.
    Enable,
    /// Taken out as if failed: no new connections, its backup stands in.
    Disable,
}

impl RealAction {
    pub fn parse(s: &str) -> Option<RealAction> {
        match s {
            "drain" => Some(RealAction::Drain),
            "enable" => Some(RealAction::Enable),
            "disable" => Some(RealAction::Disable),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RealAction::Drain => "drain",
            RealAction::Enable => "enable",
            RealAction::Disable => "disable",
        }
    }

    /// The state the server is put in.
    pub fn state(self) -> ServerState {
        match self {
            RealAction::Drain => ServerState::Draining,
            RealAction::Enable => ServerState::Up,
            RealAction::Disable => ServerState::Failed,
        }
    }
}

/// Which connections `/connections` dumps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionQuery {
    /// Virtual machine name.
    pub virtual_name: Option<String>,
    /// Real server name.
    pub real: Option<String>,
    /// Connection state (`syn_sent`, `syn_recv`, `established`, `closing`, `udp`).
    pub state: Option<String>,
    pub limit: usize,
}

/// One row of the flow dump.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionInfo {
    pub protocol: Protocol,
    pub client: SocketAddr,
    pub virtual_name: String,
    pub virtual_addr: SocketAddr,
    pub real: String,
    pub real_addr: SocketAddr,
    pub state: &'static str,
    pub age: Duration,
    pub idle: Duration,
    pub syn_resends: u8,
}

/// A request for the data path.
pub enum Command {
    /// Sets a real server's state; answers false when no server has that name.
    SetState {
        name: String,
        action: RealAction,
        reply: oneshot::Sender<bool>,
    },
    /// Dumps up to `limit` connections.
    Connections {
        query: ConnectionQuery,
        reply: oneshot::Sender<Vec<ConnectionInfo>>,
    },
    /// Makes this director active or standby (`POST /ha/active|standby`, `vipd ha`).
    SetRole {
        role: Role,
        reply: oneshot::Sender<Result<RoleChange, NoSync>>,
    },
}

/// Carries out a [`Command`] on the data-path thread (between batches, never per packet).
pub fn apply(director: &mut Director, command: Command, now: Duration) {
    match command {
        Command::SetState {
            name,
            action,
            reply,
        } => {
            let found = director.set_real_state(&name, action.state(), now).is_ok();
            director.publish_now(now);
            let _ = reply.send(found);
        }
        Command::Connections { query, reply } => {
            let _ = reply.send(connections(director, &query, now));
        }
        Command::SetRole { role, reply } => {
            let result = director.set_role(role, now);
            if let Ok(change) = result
                && change.from != change.to
            {
                tracing::info!(
                    from = change.from.as_str(),
                    to = change.to.as_str(),
                    connections = change.connections,
                    "role changed"
                );
                director.publish_now(now);
            }
            let _ = reply.send(result);
        }
    }
}

fn connections(director: &Director, query: &ConnectionQuery, now: Duration) -> Vec<ConnectionInfo> {
    let bindings = director.bindings();
    let reals = director.reals();
    let virtual_name = |c: &Connection| {
        bindings
            .virtual_by_address(c.virtual_addr.ip())
            .and_then(|id| bindings.virtuals.get(id as usize))
            .map_or("", |vm| vm.name.as_str())
    };
    let real_name = |c: &Connection| {
        reals
            .get(c.real_id as usize)
            .map_or("", |r| r.name.as_str())
    };
    director
        .table()
        .iter()
        .map(|(_, c)| c)
        .filter(|c| {
            query
                .virtual_name
                .as_deref()
                .is_none_or(|v| v == virtual_name(c))
        })
        .filter(|c| query.real.as_deref().is_none_or(|r| r == real_name(c)))
        .filter(|c| query.state.as_deref().is_none_or(|s| s == c.state.as_str()))
        .take(query.limit.min(MAX_LIMIT))
        .map(|c| ConnectionInfo {
            protocol: c.protocol,
            client: c.client.into(),
            virtual_name: virtual_name(c).to_owned(),
            virtual_addr: c.virtual_addr.into(),
            real: real_name(c).to_owned(),
            real_addr: c.real.into(),
            state: c.state.as_str(),
            age: now.saturating_sub(c.created.get()),
            idle: now.saturating_sub(c.last_seen.get()),
            syn_resends: c.syn_resends,
        })
        .collect()
}

/// What the HTTP side reads and whom it asks.
#[derive(Clone)]
pub struct Admin {
    pub snapshot: Published,
    pub capture: Option<Arc<CaptureStats>>,
    pub commands: mpsc::Sender<Command>,
    /// Wakes the data path so it drains `commands` at once.
    pub waker: Option<Waker>,
    pub token: Option<String>,
    /// The watched plugins folder, listed per `/status` and `/metrics` request.
    pub plugins: Option<Arc<PluginDir>>,
    /// The shadow policies' counts ([`crate::shadow`]).
    pub shadow: Option<Arc<ArcSwap<ShadowSnapshot>>>,
    /// Connection sync (`[sync]`): its role and the sync thread's counts.
    pub sync: Option<crate::sync::SyncView>,
    /// `[cluster]`: the announced routes, and the drain (`POST /ha/drain`).
    pub cluster: Option<Cluster>,
}

/// What the admin API holds of `[cluster]`: the routes thread, and when a drain ends.
#[derive(Clone)]
pub struct Cluster {
    pub routes: crate::announce::Routes,
    pub drain_time: Duration,
    /// The routed virtual addresses of the config in force: what is announced while announcing.
    pub wanted: Arc<std::sync::Mutex<Vec<std::net::IpAddr>>>,
    /// Whether the routes are meant to be up now (serving, synced, both links up, not draining).
    pub announcing: Arc<std::sync::atomic::AtomicBool>,
    /// Set by `POST /ha/drain`: the daemon stops at this instant.
    pub drain_until: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Cluster {
    /// Seconds left of a drain in progress.
    pub fn draining(&self) -> Option<f64> {
        let until = (*self.drain_until.lock().ok()?)?;
        Some(
            until
                .saturating_duration_since(Instant::now())
                .as_secs_f64(),
        )
    }
}

/// Binds `listen` now (so a bad address fails the start) and serves on a new thread until the process
/// ends, with the default [`AdminLimits`].
pub fn spawn(listen: SocketAddr, admin: Admin) -> Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(listen).with_context(|| {
        format!("[director] listen = \"{listen}\": cannot bind the admin and metrics address")
    })?;
    if !listen.ip().is_loopback() && admin.token.is_none() {
        tracing::warn!(
            %listen,
            "no admin_token: the HTTP API answers loopback peers only; set [director] admin_token to serve others"
        );
    }
    spawn_on(listener, admin, AdminLimits::default())
}

/// Serves on `listener` (already bound) on a new thread until the process ends.
pub fn spawn_on(
    listener: TcpListener,
    admin: Admin,
    limits: AdminLimits,
) -> Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let handle = std::thread::Builder::new()
        .name("vipd-admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("admin HTTP server: cannot start its runtime: {e}");
                    return;
                }
            };
            runtime.block_on(serve(listener, Arc::new(admin), limits));
        })?;
    Ok(handle)
}

async fn serve(listener: TcpListener, admin: Arc<Admin>, limits: AdminLimits) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("admin HTTP server: {e}");
            return;
        }
    };
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let busy: Arc<[u8]> = raw_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many connections to the admin API; try again shortly",
    )
    .into();
    let mut refused = RefusalLog::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("admin HTTP server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            refused.note(limits.max_connections);
            // Answered 503 while few are being refused; in a flood, closed at once.
            if let Ok(refusing) = Arc::clone(&refusing).try_acquire_owned() {
                let busy = Arc::clone(&busy);
                tokio::spawn(async move {
                    linger(stream, &busy).await;
                    drop(refusing);
                });
            }
            continue;
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            connection(stream, peer, admin, limits).await;
            drop(permit);
        });
    }
}

/// Warns about connections refused for [`Refusal::TooMany`] at most once per [`WARN_EVERY`].
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unreported: u64,
}

impl RefusalLog {
    fn note(&mut self, max_connections: usize) {
        crate::metrics::admin_refused(Refusal::TooMany);
        self.unreported += 1;
        if self.last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                refused = self.unreported,
                max_connections,
                "admin HTTP server: connections refused, {max_connections} already open (slow or idle \
                 clients?); see vipd_admin_connections_refused_total"
            );
            self.last = Some(Instant::now());
            self.unreported = 0;
        }
    }
}

/// Serves one connection within `limits`; counts what it refuses.
async fn connection(stream: TcpStream, peer: SocketAddr, admin: Arc<Admin>, limits: AdminLimits) {
    let mut io = Watched::new(stream);
    let service = service_fn(move |req| {
        let admin = Arc::clone(&admin);
        async move { Ok::<_, Infallible>(handle(&admin, peer, req).await) }
    });
    let result = {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read)
            .max_header_size(MAX_HEADER_BYTES)
            .serve_connection(TokioIo::new(&mut io), service);
        let mut conn = std::pin::pin!(conn);
        match tokio::time::timeout(limits.lifetime, conn.as_mut()).await {
            Ok(r) => r,
            Err(_) => {
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(limits.grace, conn).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::debug!(%peer, "admin HTTP server: connection cut at its deadline");
                        crate::metrics::admin_refused(Refusal::Deadline);
                        return;
                    }
                }
            }
        }
    };
    let Err(e) = result else {
        return;
    };
    if e.is_parse_too_large() {
        tracing::debug!(%peer, "admin HTTP server: request head too large");
        crate::metrics::admin_refused(Refusal::HeaderTooLarge);
        let answer = io.held_431.then(|| {
            raw_error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format_args!("request head over {MAX_HEADER_BYTES} bytes or 100 header fields"),
            )
        });
        linger(io.stream, answer.as_deref().unwrap_or_default()).await;
    } else if e.is_timeout() && (io.reading || !io.answered) {
        tracing::debug!(%peer, "admin HTTP server: no whole request head in time");
        crate::metrics::admin_refused(Refusal::HeaderTimeout);
    }
}

/// Writes `answer`, closes the sending side, and reads and drops the rest of the request for at most
/// [`LINGER`] and [`LINGER_BYTES`], so that the close does not reset the connection before the client
/// has read the answer.
async fn linger(mut stream: TcpStream, answer: &[u8]) {
    let _ = tokio::time::timeout(LINGER, async {
        let mut sent = 0;
        while sent < answer.len() {
            stream.writable().await?;
            match stream.try_write(&answer[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        std::future::poll_fn(|cx| Pin::new(&mut stream).poll_shutdown(cx)).await?;
        let mut sink = [0u8; 8192];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            stream.readable().await?;
            match stream.try_read(&mut sink) {
                Ok(0) => break,
                Ok(n) => dropped += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
}

/// The connection's socket as hyper sees it, noting what the server needs to tell a slow client from an
/// idle one and to answer an oversized head itself.
struct Watched {
    stream: TcpStream,
    /// Bytes came in since the last answer was written: a request is under way.
    reading: bool,
    /// Something was answered on this connection.
    answered: bool,
    /// hyper's own answer to an oversized head was held back (see [`Watched::is_hypers_431`]).
    held_431: bool,
}

impl Watched {
    fn new(stream: TcpStream) -> Watched {
        Watched {
            stream,
            reading: false,
            answered: false,
            held_431: false,
        }
    }

    /// hyper answers an oversized head itself with a bodiless 431 and closes (proto/h1/role.rs,
    /// `on_error`), with no hook to change it; [`connection`] sends the module's JSON error instead.
    /// The handler never answers 431, so this status line can only be hyper's.
    fn is_hypers_431(buf: &[u8]) -> bool {
        buf.starts_with(b"HTTP/1.") && buf.get(8..13) == Some(b" 431 ")
    }

    fn wrote(&mut self, n: usize) {
        if n > 0 {
            self.reading = false;
            self.answered = true;
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.reading = true;
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.held_431 || Watched::is_hypers_431(buf) {
            self.held_431 = true;
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.wrote(n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.held_431 || first.is_some_and(|b| Watched::is_hypers_431(b)) {
            self.held_431 = true;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.wrote(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Keeps the socket open for the JSON 431 after hyper's was held back.
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.held_431 {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_body(value: &impl serde::Serialize) -> Vec<u8> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    body
}

fn json_reply(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    reply(status, "application/json", json_body(value))
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Reply {
    json_reply(status, &json!({ "error": message.to_string() }))
}

/// [`error`] as the bytes of a whole HTTP/1.1 response with `Connection: close`, for the answers written
/// outside hyper (503 over the connection limit, 431).
fn raw_error(status: StatusCode, message: impl std::fmt::Display) -> Vec<u8> {
    let body = json_body(&json!({ "error": message.to_string() }));
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format_args!("method not allowed; use {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(admin: &Admin, peer: SocketAddr, req: Request<Incoming>) -> Reply {
    match &admin.token {
        Some(token) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
            if !given.is_some_and(|g| same(g, token.as_bytes())) {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong token: send Authorization: Bearer TOKEN ([director] admin_token)",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
        None if !peer.ip().is_loopback() => {
            return error(
                StatusCode::FORBIDDEN,
                "this API answers loopback only; set [director] admin_token to serve other addresses",
            );
        }
        None => {}
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["metrics"] => match *req.method() {
            Method::GET => metrics(admin),
            _ => method_not_allowed("GET"),
        },
        ["status"] => match *req.method() {
            Method::GET => {
                let shadows = admin.shadow.as_ref().map(|s| s.load_full());
                let snapshot = admin.snapshot.load();
                let mut status =
                    Status::new(&snapshot, &admin.plugin_entries(), shadows.as_deref());
                status.sync = admin
                    .sync
                    .as_ref()
                    .map(|view| crate::status::SyncStatus::new(view, &snapshot));
                json_reply(StatusCode::OK, &status)
            }
            _ => method_not_allowed("GET"),
        },
        ["connections"] => match *req.method() {
            Method::GET => dump(admin, req.uri().query().unwrap_or("")).await,
            _ => method_not_allowed("GET"),
        },
        ["ha"] => match *req.method() {
            Method::GET => ha_status(admin),
            _ => method_not_allowed("GET"),
        },
        ["ha", "drain"] => {
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            drain(admin).await
        }
        ["ha", role] => {
            let role = match *role {
                "active" => Role::Active,
                "standby" => Role::Standby,
                other => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format_args!("unknown role {other:?}: use active or standby"),
                    );
                }
            };
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            set_role(admin, role).await
        }
        ["reals", name, action] => {
            let Some(action) = RealAction::parse(action) else {
                return error(
                    StatusCode::NOT_FOUND,
                    format_args!("unknown action {action:?}: use drain, enable or disable"),
                );
            };
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            let name = (*name).to_owned();
            set_state(admin, name, action, req.into_body()).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format_args!(
                "no such path {path:?}: GET /metrics, /status, /connections, /ha; POST /reals/NAME/drain|enable|disable, /ha/active|standby|drain"
            ),
        ),
    }
}

fn metrics(admin: &Admin) -> Reply {
    let snapshot = admin.snapshot.load();
    let shadows = admin.shadow.as_ref().map(|s| s.load_full());
    let mut text = crate::metrics::render(
        &snapshot,
        admin.capture.as_deref(),
        &admin.plugin_entries(),
        shadows.as_deref(),
    );
    if let Some(view) = &admin.sync {
        crate::metrics::render_sync(&mut text, &snapshot, view);
    }
    if let Some(cluster) = &admin.cluster {
        use std::fmt::Write as _;
        let _ = writeln!(
            text,
            "# HELP vipd_cluster_routes_announced Virtual addresses this director announces now ([cluster]).\n\
             # TYPE vipd_cluster_routes_announced gauge\nvipd_cluster_routes_announced {}\n\
             # HELP vipd_cluster_draining 1 while a drain is in progress (routes withdrawn, stopping after drain_time).\n\
             # TYPE vipd_cluster_draining gauge\nvipd_cluster_draining {}",
            cluster.routes.announced().len(),
            u8::from(cluster.draining().is_some())
        );
        let _ = writeln!(
            text,
            "# HELP vipd_cluster_returns_total Server replies translated by the binding table, no connection here having them (the SYN went through another director).\n\
             # TYPE vipd_cluster_returns_total counter\nvipd_cluster_returns_total {}\n\
             # HELP vipd_cluster_client_established_total Connections made established by the client's ACK, their server's SYN-ACK having gone through another director.\n\
             # TYPE vipd_cluster_client_established_total counter\nvipd_cluster_client_established_total {}\n\
             # HELP vipd_cluster_moved_total Flows the router moved to this director, by what placed them here (synced: a peer's record; policy: the port's consistent policy).\n\
             # TYPE vipd_cluster_moved_total counter\nvipd_cluster_moved_total{{placed_by=\"synced\"}} {}\n\
             vipd_cluster_moved_total{{placed_by=\"policy\"}} {}\n\
             # HELP vipd_cluster_moved_unplaced_total Frames of moved flows dropped unplaced: the consistent policy failed or deferred, and a fallback would have chosen a server other directors do not.\n\
             # TYPE vipd_cluster_moved_unplaced_total counter\nvipd_cluster_moved_unplaced_total {}",
            snapshot.counters.cluster_returns,
            snapshot.counters.cluster_client_established,
            snapshot.counters.cluster_moved_synced,
            snapshot.counters.cluster_moved_policy,
            snapshot.counters.cluster_moved_unplaced
        );
    }
    reply(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        text,
    )
}

impl Admin {
    fn plugin_entries(&self) -> Vec<PluginEntry> {
        self.plugins.as_ref().map_or_else(Vec::new, |d| d.entries())
    }
}

/// Parses `virtual=..&real=..&limit=..`.
pub fn parse_query(query: &str) -> std::result::Result<ConnectionQuery, String> {
    let mut q = ConnectionQuery {
        limit: DEFAULT_LIMIT,
        ..ConnectionQuery::default()
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| format!("bad escape in {pair:?}"))?;
        match k {
            "virtual" => q.virtual_name = Some(v),
            "real" => q.real = Some(v),
            "state" => {
                const STATES: [&str; 5] = ["syn_sent", "syn_recv", "established", "closing", "udp"];
                if !STATES.contains(&v.as_str()) {
                    return Err(format!(
                        "state must be one of {}, not {v:?}",
                        STATES.join(", ")
                    ));
                }
                q.state = Some(v);
            }
            "limit" => {
                q.limit = match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(format!(
                            "limit must be a number from 1 to {MAX_LIMIT}, not {v:?}"
                        ));
                    }
                }
            }
            _ => {
                return Err(format!(
                    "unknown parameter {k:?}: use virtual, real, state, limit"
                ));
            }
        }
    }
    Ok(q)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn ask<T>(admin: &Admin, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    admin.commands.send(make(tx)).ok()?;
    if let Some(w) = &admin.waker {
        w.wake();
    }
    tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .ok()?
        .ok()
}

async fn dump(admin: &Admin, query: &str) -> Reply {
    let query = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    {
        let s = admin.snapshot.load();
        if let Some(v) = &query.virtual_name
            && !s.bindings.virtuals.iter().any(|vm| &vm.name == v)
        {
            return error(
                StatusCode::NOT_FOUND,
                format_args!("no virtual machine named {v:?}"),
            );
        }
        if let Some(r) = &query.real
            && !s.reals.iter().any(|real| &real.name == r)
        {
            return error(
                StatusCode::NOT_FOUND,
                format_args!("no real server named {r:?}"),
            );
        }
    }
    let Some(rows) = ask(admin, |reply| Command::Connections { query, reply }).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the data path did not answer",
        );
    };
    let rows: Vec<Value> = rows
        .iter()
        .map(|c| {
            json!({
                "protocol": c.protocol.as_str(),
                "client": c.client.to_string(),
                "virtual": c.virtual_name,
                "virtual_address": c.virtual_addr.to_string(),
                "real": c.real,
                "real_address": c.real_addr.to_string(),
                "state": c.state,
                "age_seconds": c.age.as_secs_f64(),
                "idle_seconds": c.idle.as_secs_f64(),
                "syn_resends": c.syn_resends,
            })
        })
        .collect();
    json_reply(StatusCode::OK, &json!({ "connections": rows }))
}

async fn set_state(admin: &Admin, name: String, action: RealAction, body: Incoming) -> Reply {
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format_args!("cannot read the body: {e}"),
            );
        }
    };
    // The body is optional; when present it must be a JSON object (room for options such as a reason).
    if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(_)) => {}
            Ok(_) => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
            Err(e) => return error(StatusCode::BAD_REQUEST, format_args!("bad JSON body: {e}")),
        }
    }
    let request_name = name.clone();
    match ask(admin, |reply| Command::SetState {
        name,
        action,
        reply,
    })
    .await
    {
        Some(true) => json_reply(
            StatusCode::OK,
            &json!({ "real": request_name, "action": action.as_str(), "state": action.state().as_str() }),
        ),
        Some(false) => error(
            StatusCode::NOT_FOUND,
            format_args!("no real server named {request_name:?}"),
        ),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the data path did not answer",
        ),
    }
}

/// What `GET /ha` answers (and `vipd ha status` prints): the role, whether the table holds the peers'
/// connections, and the table's size. A director without `[sync]` is active and synced, not in a pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HaStatus {
    pub role: String,
    pub synced: bool,
    pub pair: bool,
    pub connections: usize,
    pub role_changes: u64,
    /// `[cluster]`: the virtual addresses announced now (empty once drained), and the seconds left of a
    /// drain in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<Vec<std::net::IpAddr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_seconds: Option<f64>,
}

fn ha_status(admin: &Admin) -> Reply {
    let snapshot = admin.snapshot.load();
    let mut status = match &admin.sync {
        Some(view) => HaStatus {
            role: view.role().as_str().to_owned(),
            synced: view.synced(),
            pair: true,
            connections: snapshot.connections,
            role_changes: crate::sync::SyncStats::get(&view.stats.role_changes),
            announced: None,
            draining_seconds: None,
        },
        None => HaStatus {
            role: Role::Active.as_str().to_owned(),
            synced: true,
            pair: false,
            connections: snapshot.connections,
            role_changes: 0,
            announced: None,
            draining_seconds: None,
        },
    };
    if let Some(cluster) = &admin.cluster {
        status.announced = Some(cluster.routes.announced());
        status.draining_seconds = cluster.draining();
    }
    json_reply(StatusCode::OK, &status)
}

/// `POST /ha/drain`: withdraw the announced routes now (the routers stop sending new flows here), keep
/// serving what still arrives for `drain_time`, then stop.
async fn drain(admin: &Admin) -> Reply {
    let Some(cluster) = &admin.cluster else {
        return error(
            StatusCode::CONFLICT,
            "this director has no [cluster] table: it announces no routes to drain",
        );
    };
    cluster
        .announcing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let routes = cluster.routes.clone();
    let withdrawn = routes.announced();
    let _ = tokio::task::spawn_blocking(move || routes.withdraw()).await;
    let until = Instant::now() + cluster.drain_time;
    if let Ok(mut d) = cluster.drain_until.lock() {
        d.get_or_insert(until);
    }
    tracing::info!(
        withdrawn = ?withdrawn,
        drain_time = ?cluster.drain_time,
        "draining: routes withdrawn; serving what still arrives, then stopping"
    );
    if let Some(w) = &admin.waker {
        w.wake();
    }
    json_reply(
        StatusCode::OK,
        &json!({
            "withdrawn": withdrawn,
            "draining_seconds": cluster.draining().unwrap_or(0.0),
        }),
    )
}

async fn set_role(admin: &Admin, role: Role) -> Reply {
    match ask(admin, |reply| Command::SetRole { role, reply }).await {
        Some(Ok(change)) => json_reply(
            StatusCode::OK,
            &json!({
                "role": change.to.as_str(),
                "previous": change.from.as_str(),
                "connections": change.connections,
            }),
        ),
        Some(Err(e)) => error(StatusCode::CONFLICT, e),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the data path did not answer",
        ),
    }
}

/// A minimal HTTP/1.1 client for the CLI: one request, `Connection: close`; (status, body).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| {
            format!("cannot connect to vipd at {addr} (is it running? [director] listen)")
        })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP status line")?;
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Query strings: defaults, decoding, bounds and unknown keys.
    #[test]
    fn parses_connection_queries() {
        assert_eq!(parse_query("").unwrap().limit, DEFAULT_LIMIT);
        let q = parse_query("virtual=site%201&real=host-a&limit=5").unwrap();
        assert_eq!(q.virtual_name.as_deref(), Some("site 1"));
        assert_eq!((q.real.as_deref(), q.limit), (Some("host-a"), 5));
        assert!(parse_query("limit=0").is_err());
        assert!(parse_query("limit=10001").is_err());
        assert!(parse_query("limit=x").is_err());
        assert!(parse_query("colour=red").is_err());
        assert_eq!(
            parse_query("state=established").unwrap().state.as_deref(),
            Some("established")
        );
        assert!(parse_query("state=open").is_err());
    }

    /// The answers written outside hyper are whole responses whose length matches their JSON body, and
    /// only hyper's own 431 status line is held back.
    #[test]
    fn raw_answers_and_hypers_431() {
        let raw = raw_error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too big");
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(body).unwrap()["error"],
            "too big"
        );
        assert!(Watched::is_hypers_431(text.as_bytes()));
        assert!(Watched::is_hypers_431(
            b"HTTP/1.0 431 Request Header Fields Too Large\r\n"
        ));
        assert!(!Watched::is_hypers_431(b"HTTP/1.1 200 OK\r\n"));
        assert!(!Watched::is_hypers_431(b"{\"error\": \"HTTP/1.1 431 \"}"));
    }
}

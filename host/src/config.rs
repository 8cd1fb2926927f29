//! The TOML configuration users write (documented key by key in docs/configuration.md).
//!
//! Contract: [`Config::parse`] either returns a configuration in which every value is in range, every name
//! is unique, every binding names a defined real server and no backup chain loops, or a [`ConfigError`]
//! listing every problem it found with file, line, column and dotted key. A TOML syntax or type error stops
//! the parse, so it is reported alone; all semantic problems are collected. Pure apart from
//! [`Config::load`], which reads the file, and the `[sync] key_file` it names, read while checking (a
//! missing or short key is a problem of the config, reported with its line like any other).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hashbrown::{HashMap, HashSet};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::Sides;
use crate::conntable::Timeouts;
use crate::wire::{MacAddr, Protocol};

/// `[director] listen` when not given.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9469));
/// `[director] max_connections` when not given.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1_000_000;
/// `[director] syn_retries` when not given.
pub const DEFAULT_SYN_RETRIES: u32 = 2;
/// `[director] plugin_memory` when not given: 16 MiB.
pub const DEFAULT_PLUGIN_MEMORY: u64 = 16 << 20;
/// `[director] send_threads` when not given: frames towards the clients get a sender thread (measured in
/// docs/benchmarks.md: +50 % bulk throughput, +6 % keep-alive requests; a second one for the inside cost more
/// wake-ups than it saved).
pub const DEFAULT_SEND_THREADS: SendThreads = SendThreads::new(true, false);

/// `[director] send_threads`: which interfaces get a sender thread of their own.
pub type SendThreads = Sides<bool>;

/// `[director] offload_connections` when not given: 2 x 131,072 kernel flow entries pin about 44 MB.
pub const DEFAULT_OFFLOAD_CONNECTIONS: u32 = 131_072;

/// `[director] offload`: where established connections are translated (docs/offload.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offload {
    /// Every frame through the libpcap path.
    #[default]
    None,
    /// Established connections' frames translated by an XDP program, attached in this mode.
    Xdp(XdpMode),
}

/// `[director] xdp_mode`: how the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Native where both interfaces' drivers run it and can take redirected frames; generic otherwise.
    #[default]
    Auto,
    /// In the driver (`XDP_FLAGS_DRV_MODE`); refused where the driver has no XDP.
    Native,
    /// In the kernel's network stack, after the skb is made (`XDP_FLAGS_SKB_MODE`): any interface.
    Generic,
}

impl XdpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

/// `[director] syn_proxy_mss` when not given: Ethernet's 1500-byte MTU less the IPv4 and TCP headers.
pub const DEFAULT_SYN_PROXY_MSS: u16 = 1460;
/// `[director] syn_proxy_wscale` when not given: what Linux servers announce with default buffers.
pub const DEFAULT_SYN_PROXY_WSCALE: u8 = 7;
/// `[director] new_per_wakeup` when not given: a quarter of a wake-up's batch (256 frames per interface).
pub const DEFAULT_NEW_PER_WAKEUP: u32 = 64;

/// `[director] plugin_deadline` when not given.
pub const DEFAULT_PLUGIN_DEADLINE: Duration = Duration::from_millis(1);
/// `[director] plugin_keep_warm` when not given.
pub const DEFAULT_PLUGIN_KEEP_WARM: Duration = Duration::from_millis(1);
/// `[sync] max_datagram` when not given: below a 1500-byte MTU less the IPv6 and UDP headers (48 bytes).
pub const DEFAULT_SYNC_MAX_DATAGRAM: u16 = 1400;
/// The shortest `[sync] key_file` accepted: 16 bytes (128 bits) of secret.
pub const MIN_SYNC_KEY: usize = 16;
/// The smallest `[sync] max_datagram`: room for the header, one IPv6 record and the tag
/// ([`crate::sync::wire`]), with margin.
pub const MIN_SYNC_MAX_DATAGRAM: u16 = 256;
/// `[sync] garp_repeat` and `garp_interval` when not given: gratuitous ARP (unsolicited neighbour
/// advertisements) for every announced virtual address on becoming active, as keepalived's
/// `garp_master_repeat` (5).
pub const DEFAULT_GARP_REPEAT: u8 = 5;
pub const DEFAULT_GARP_INTERVAL: Duration = Duration::from_millis(200);
/// `[cluster] consistent_policies` when not given: the shipped Maglev plugin.
pub const DEFAULT_CONSISTENT_POLICY: &str = "maglev";

/// `[cluster] drain_time` when not given.
pub const DEFAULT_DRAIN_TIME: Duration = Duration::from_secs(30);
/// `[sync] resync_timeout` when not given.
pub const DEFAULT_RESYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// `[[real]] failure_threshold` when not given.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 8;
/// `[[real]] retry_after` when not given.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
/// `[[virtual]] policy` when not given.
pub const DEFAULT_POLICY: &str = "round-robin";
/// A plugin memory limit below one WebAssembly page could never run anything.
const MIN_PLUGIN_MEMORY: u64 = 64 << 10;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub director: DirectorConfig,
    pub timeouts: Timeouts,
    /// The `[sync]` table: connection sync with other directors; `None` when absent (no sync at all).
    pub sync: Option<SyncConfig>,
    /// The `[cluster]` table: one of several active directors behind ECMP; `None` when absent.
    pub cluster: Option<ClusterConfig>,
    /// The `[[real]]` tables, in file order.
    pub reals: Vec<RealConfig>,
    /// The `[[virtual]]` tables, in file order.
    pub virtuals: Vec<VirtualConfig>,
}

/// The `[director]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectorConfig {
    /// Interface facing the clients.
    pub outside: String,
    /// Interface facing the real servers.
    pub inside: String,
    /// Watched folder of policy plugins; relative paths are resolved against the config file's folder.
    pub plugins: Option<PathBuf>,
    /// HTTP address for /metrics and the admin API.
    pub listen: SocketAddr,
    /// Connection table capacity, preallocated.
    pub max_connections: u32,
    /// SYN resends without a SYN-ACK before a connection is ditched.
    pub syn_retries: u32,
    /// Bearer token the admin API demands when set.
    pub admin_token: Option<String>,
    /// Memory limit per plugin instance, bytes.
    pub plugin_memory: u64,
    /// CPU deadline per plugin call.
    pub plugin_deadline: Duration,
    /// How often a plugin that served a connection in the last second is called with the warm-up
    /// connection to keep its code in the CPU's caches; zero (`"off"`) never.
    pub plugin_keep_warm: Duration,
    /// Interfaces whose frames a sender thread of their own sends (start only).
    pub send_threads: SendThreads,
    /// Send with `PACKET_QDISC_BYPASS`: straight to the driver, past the interface's qdisc (start only).
    pub qdisc_bypass: bool,
    /// Answer SYNs with SYN cookies and open a server connection only for a client that completes the
    /// handshake (docs/failure-handling.md, "Under a SYN flood").
    pub syn_proxy: bool,
    /// The MSS and window scale the SYN proxy announces to clients on the servers' behalf.
    pub syn_proxy_mss: u16,
    pub syn_proxy_wscale: u8,
    /// When the data path is behind (8 wake-ups in a row left frames in a ring), at most this many connections
    /// are opened per wake-up and the rest dropped as `shed`; 0: never shed.
    pub new_per_wakeup: u32,
    /// `offload` and `xdp_mode` (start only).
    pub offload: Offload,
    /// Connections the offload holds at most; the rest stay on the libpcap path (start only).
    pub offload_connections: u32,
}

/// The `[sync]` table: this director's end of the connection sync (docs/high-availability.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// The UDP address this director sends from and receives on.
    pub listen: SocketAddr,
    /// Where every datagram goes: the other directors, or a multicast group. Same family as `listen`.
    pub peers: Vec<SocketAddr>,
    /// The shared secret's file (resolved against the config file's folder) and its contents.
    pub key_file: PathBuf,
    pub key: SyncKey,
    /// The role at start.
    pub role: Role,
    /// Largest datagram sent, bytes (UDP payload).
    pub max_datagram: u16,
    /// Gratuitous ARP on becoming active: how many rounds, how far apart.
    pub garp_repeat: u8,
    pub garp_interval: Duration,
    /// How long a standby waits for a peer's bulk resync before it counts as synced with what it has.
    pub resync_timeout: Duration,
}

/// The `[cluster]` table: this director is one of several active ones behind a router that spreads flows by
/// ECMP; it announces its virtual addresses to BGP (BIRD) through a kernel routing table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The kernel routing table vipd keeps one route per announced virtual address in (BIRD's `kernel
    /// table N` learns them); never the main, local or default table.
    pub route_table: u32,
    /// After `vipd ha drain`: how long the director keeps serving the connections that still arrive after
    /// its routes are withdrawn, before it stops.
    pub drain_time: Duration,
    /// The policies that choose the same server for a client on every director that has the same servers
    /// (a consistent hash). A packet of a flow the router moved here, with no connection and no peer's
    /// record, is placed by its port's policy when the policy is one of these; any other policy's flows
    /// are dropped then. `vipd check` warns about the others. Default: `["maglev"]`.
    pub consistent_policies: Vec<String>,
}

/// The secret the directors share: the HMAC key of every sync datagram. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SyncKey(pub Vec<u8>);

impl fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncKey({} bytes)", self.0.len())
    }
}

/// `[sync] role`: what a director does with connection sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// Sends its connections to the peers.
    Active,
    /// Receives the peers' connections into its table (and sends none).
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A `[[real]]` table: a physical machine, or one port of it (patent FIG. 6B).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealConfig {
    pub name: String,
    /// IPv4 or IPv6.
    pub address: IpAddr,
    /// When set, this object stands for that one port of the machine.
    pub port: Option<u16>,
    /// Share of new connections; 0 drains the server.
    pub weight: u32,
    /// Name of the real server that takes over while this one is failed.
    pub backup: Option<String>,
    /// Ditched connections in a row before the server is marked failed.
    pub failure_threshold: u32,
    /// How long a failed server waits before it gets a trial connection.
    pub retry_after: Duration,
    /// Static neighbour entry; skips ARP.
    pub mac: Option<MacAddr>,
    pub check: Option<HealthCheck>,
}

/// An active health check of a real server (`check = { ... }`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// Port probed; defaults to the real server's `port`.
    pub port: u16,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successes in a row that bring a server up.
    pub rise: u32,
    /// Failures in a row that fail it.
    pub fall: u32,
}

/// What a health check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` answers with status `expect`.
    Http { path: String, expect: u16 },
}

/// A `[[virtual]]` table: a virtual machine (patent FIG. 6A).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualConfig {
    pub name: String,
    /// IPv4 or IPv6.
    pub address: IpAddr,
    /// Built-in policy or plugin name for ports that don't name their own.
    pub policy: String,
    pub policy_args: BTreeMap<String, String>,
    /// A policy asked too for every new connection of ports that name none of their own; its answer is
    /// recorded, never applied.
    pub shadow_policy: Option<String>,
    pub shadow_policy_args: BTreeMap<String, String>,
    /// Binding plugin that supplies bindings for ports without a `bind`.
    pub binder: Option<String>,
    /// Arguments passed to the binding plugin's `init`.
    pub binder_args: BTreeMap<String, String>,
    /// Binding for every port without its own `bind`.
    pub bind: Option<Vec<BindTarget>>,
    pub announce: Announce,
    /// The ports this virtual machine supports, exactly these.
    pub ports: Vec<PortConfig>,
}

/// How a virtual address is made known on the outside link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    /// Answer ARP and send gratuitous ARP.
    Arp,
    /// Stay silent; the address is routed to the director.
    None,
}

/// A `[[virtual.port]]` table: a port object (patent FIG. 6D).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    pub port: u16,
    pub protocol: Protocol,
    /// Overrides the virtual machine's `bind`.
    pub bind: Option<Vec<BindTarget>>,
    /// Overrides the virtual machine's `policy`.
    pub policy: Option<String>,
    /// Overrides the policy arguments.
    pub policy_args: Option<BTreeMap<String, String>>,
    /// Overrides the virtual machine's `shadow_policy`, and its arguments.
    pub shadow_policy: Option<String>,
    pub shadow_policy_args: Option<BTreeMap<String, String>>,
}

/// One entry of a `bind` list: `"REAL"` or `"REAL:PORT"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BindTarget {
    pub real: String,
    pub port: Option<u16>,
}

impl fmt::Display for BindTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{}", self.real, port),
            None => f.write_str(&self.real),
        }
    }
}

impl VirtualConfig {
    /// The bind list that applies to `port`: its own, else the virtual machine's.
    pub fn effective_bind<'a>(&'a self, port: &'a PortConfig) -> Option<&'a [BindTarget]> {
        port.bind.as_deref().or(self.bind.as_deref())
    }

    /// The policy and arguments that apply to `port`. A port that names its own policy gets only its own
    /// arguments; one that doesn't inherits the virtual machine's policy and arguments unless it gives its own.
    pub fn effective_policy<'a>(
        &'a self,
        port: &'a PortConfig,
    ) -> (&'a str, &'a BTreeMap<String, String>) {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        match (&port.policy, &port.policy_args) {
            (Some(policy), Some(args)) => (policy, args),
            (Some(policy), None) => (policy, &EMPTY),
            (None, Some(args)) => (&self.policy, args),
            (None, None) => (&self.policy, &self.policy_args),
        }
    }

    /// The shadow policy and arguments that apply to `port`, by the same rules as [`Self::effective_policy`].
    pub fn effective_shadow<'a>(
        &'a self,
        port: &'a PortConfig,
    ) -> Option<(&'a str, &'a BTreeMap<String, String>)> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        match (&port.shadow_policy, &port.shadow_policy_args) {
            (Some(shadow), Some(args)) => Some((shadow, args)),
            (Some(shadow), None) => Some((shadow, &EMPTY)),
            (None, Some(args)) => self.shadow_policy.as_deref().map(|s| (s, args)),
            (None, None) => self
                .shadow_policy
                .as_deref()
                .map(|s| (s, &self.shadow_policy_args)),
        }
    }
}

/// The real server port a connection to `virtual_port` goes to, for a real server with fixed port
/// `real_port` and a bind entry with port `entry_port` (patent FIG. 4A); `None` when the entry names a port
/// other than the real server's fixed one.
pub fn resolve_port(
    real_port: Option<u16>,
    entry_port: Option<u16>,
    virtual_port: u16,
) -> Option<u16> {
    match (real_port, entry_port) {
        (Some(fixed), Some(asked)) if fixed != asked => None,
        (_, Some(asked)) => Some(asked),
        (Some(fixed), None) => Some(fixed),
        (None, None) => Some(virtual_port),
    }
}

/// Every problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One problem, located in the file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the whole file (e.g. it cannot be read).
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Dotted key path, e.g. `virtual[1].port[0].bind[2]` (indexes count from 0 in file order).
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.key,
                self.message
            )
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(err) => Err(ConfigError {
                problems: vec![Problem {
                    file: path.to_owned(),
                    line: 0,
                    column: 0,
                    key: "file".to_owned(),
                    message: format!("cannot read: {err}"),
                }],
            }),
        }
    }

    /// Validates `text`; `file` names it in messages and anchors a relative `plugins` folder.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut checker = Checker {
            text,
            file,
            problems: Vec::new(),
        };
        let (tree, syntax) = DeTable::parse_recoverable(text);
        if let Some(err) = syntax.first() {
            checker.toml_error(err, &tree);
            return Err(checker.finish());
        }
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(err) => {
                checker.toml_error(&err, &tree);
                return Err(checker.finish());
            }
        };
        let config = checker.config(raw);
        if checker.problems.is_empty() {
            Ok(config)
        } else {
            Err(checker.finish())
        }
    }
}

// The file as serde sees it: everything optional and loosely typed so that range, syntax and cross-reference
// checks can all be collected with their spans instead of stopping at the first.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    director: Option<Spanned<RawDirector>>,
    timeouts: Option<RawTimeouts>,
    sync: Option<Spanned<RawSync>>,
    cluster: Option<Spanned<RawCluster>>,
    #[serde(default)]
    real: Vec<Spanned<RawReal>>,
    #[serde(default, rename = "virtual")]
    virtuals: Vec<Spanned<RawVirtual>>,
}

type Text = Option<Spanned<String>>;
type Int = Option<Spanned<i64>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirector {
    outside: Text,
    inside: Text,
    plugins: Text,
    listen: Text,
    max_connections: Int,
    syn_retries: Int,
    admin_token: Text,
    plugin_memory: Text,
    plugin_deadline: Text,
    plugin_keep_warm: Text,
    send_threads: Text,
    qdisc_bypass: Option<Spanned<bool>>,
    syn_proxy: Option<Spanned<bool>>,
    syn_proxy_mss: Int,
    syn_proxy_wscale: Int,
    new_per_wakeup: Int,
    offload: Text,
    xdp_mode: Text,
    offload_connections: Int,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    syn: Text,
    syn_recv: Text,
    established: Text,
    closing: Text,
    udp: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    listen: Text,
    peers: Option<Spanned<Vec<Spanned<String>>>>,
    key_file: Text,
    role: Text,
    max_datagram: Int,
    garp_repeat: Int,
    garp_interval: Text,
    resync_timeout: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    route_table: Int,
    drain_time: Text,
    consistent_policies: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReal {
    name: Text,
    address: Text,
    port: Int,
    weight: Int,
    backup: Text,
    failure_threshold: Int,
    retry_after: Text,
    mac: Text,
    check: Option<Spanned<RawCheck>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    kind: Text,
    port: Int,
    path: Text,
    expect: Int,
    interval: Text,
    timeout: Text,
    rise: Int,
    fall: Int,
}

type Args = Option<Spanned<BTreeMap<String, String>>>;
type BindList = Option<Spanned<Vec<Spanned<String>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVirtual {
    name: Text,
    address: Text,
    policy: Text,
    policy_args: Args,
    shadow_policy: Text,
    shadow_policy_args: Args,
    binder: Text,
    binder_args: Args,
    bind: BindList,
    announce: Text,
    #[serde(default)]
    port: Vec<Spanned<RawPort>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    port: Int,
    protocol: Text,
    bind: BindList,
    policy: Text,
    policy_args: Args,
    shadow_policy: Text,
    shadow_policy_args: Args,
}

/// A parsed bind entry with where it came from, for cross-reference messages.
struct BindEntry {
    target: BindTarget,
    /// Index of the real server when it is defined.
    real: Option<usize>,
    span: Range<usize>,
    key: String,
}

/// Collects problems while turning the raw file into a [`Config`].
struct Checker<'a> {
    text: &'a str,
    file: &'a Path,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    /// Reports `name` (of table `table[i]`, at `key`) if an earlier table of the same kind has it already.
    fn unique_name(
        &mut self,
        names: &mut HashMap<String, usize>,
        raw: &Text,
        name: &str,
        key: &str,
        table: &str,
        i: usize,
    ) {
        let Some(n) = raw else { return };
        if name.is_empty() {
            return;
        }
        match names.get(name) {
            Some(&first) => self.report(
                n.span(),
                format!("{key}.name"),
                format!("\"{name}\" is already the name of {table}[{first}]"),
            ),
            None => {
                names.insert(name.to_owned(), i);
            }
        }
    }

    fn report(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = position(self.text, span.start);
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    fn finish(mut self) -> ConfigError {
        self.problems.sort();
        self.problems.dedup();
        ConfigError {
            problems: self.problems,
        }
    }

    /// A syntax or type error from toml: one problem, keyed by whatever key its span falls in.
    fn toml_error(&mut self, err: &toml::de::Error, tree: &Spanned<DeTable<'_>>) {
        let span = err.span().unwrap_or(0..0);
        let key = key_at(tree.get_ref(), span.start).unwrap_or_else(|| "toml".to_owned());
        let message = err
            .message()
            .trim()
            .replace('\n', " ")
            .replace("expected i64", "expected an integer");
        self.report(span, key, message);
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let director = self.director(raw.director);
        let timeouts = self.timeouts(raw.timeouts);
        let sync = raw.sync.map(|s| self.sync(s));
        let cluster = raw.cluster.map(|c| self.cluster(c));
        let reals = self.reals(&raw.real);
        let virtuals = self.virtuals(&raw.virtuals, &raw.real, &reals);
        Config {
            director,
            timeouts,
            sync,
            cluster,
            reals,
            virtuals,
        }
    }

    fn cluster(&mut self, raw: Spanned<RawCluster>) -> ClusterConfig {
        let span = raw.span();
        let raw = raw.into_inner();
        let route_table = match &raw.route_table {
            None => {
                self.report(
                    span,
                    "cluster.route_table",
                    "required: the kernel routing table (1 to 252, or above 255) vipd keeps its announced routes in, for BIRD's `kernel table N`",
                );
                0
            }
            Some(t) => match u32::try_from(*t.get_ref()) {
                Ok(n @ (1..=252 | 256..)) => n,
                _ => {
                    self.report(
                        t.span(),
                        "cluster.route_table",
                        format!(
                            "{} cannot be used: take 1 to 252 or a number above 255 (0 is unspecified; 253, 254 and 255 are the kernel's default, main and local tables, where the routes would change forwarding)",
                            t.get_ref()
                        ),
                    );
                    0
                }
            },
        };
        let drain_time = self.duration(&raw.drain_time, "cluster.drain_time", DEFAULT_DRAIN_TIME);
        let consistent_policies = raw
            .consistent_policies
            .unwrap_or_else(|| vec![DEFAULT_CONSISTENT_POLICY.to_owned()]);
        ClusterConfig {
            route_table,
            drain_time,
            consistent_policies,
        }
    }

    fn director(&mut self, raw: Option<Spanned<RawDirector>>) -> DirectorConfig {
        let Some(raw) = raw else {
            self.report(0..0, "director", "the [director] section is required");
            return DirectorConfig {
                outside: String::new(),
                inside: String::new(),
                plugins: None,
                listen: DEFAULT_LISTEN,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                syn_retries: DEFAULT_SYN_RETRIES,
                admin_token: None,
                plugin_memory: DEFAULT_PLUGIN_MEMORY,
                plugin_deadline: DEFAULT_PLUGIN_DEADLINE,
                plugin_keep_warm: DEFAULT_PLUGIN_KEEP_WARM,
                send_threads: DEFAULT_SEND_THREADS,
                qdisc_bypass: true,
                syn_proxy: false,
                syn_proxy_mss: DEFAULT_SYN_PROXY_MSS,
                syn_proxy_wscale: DEFAULT_SYN_PROXY_WSCALE,
                new_per_wakeup: DEFAULT_NEW_PER_WAKEUP,
                offload: Offload::None,
                offload_connections: DEFAULT_OFFLOAD_CONNECTIONS,
            };
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let outside = self.interface(&raw.outside, &span, "director.outside");
        let inside = self.interface(&raw.inside, &span, "director.inside");
        if let Some(inn) = &raw.inside
            && !outside.is_empty()
            && outside == inside
        {
            self.report(
                inn.span(),
                "director.inside",
                format!("\"{inside}\" is also the outside interface; they must differ"),
            );
        }
        let plugins = raw.plugins.as_ref().and_then(|p| {
            if p.get_ref().is_empty() {
                self.report(p.span(), "director.plugins", "must not be empty");
                return None;
            }
            let path = PathBuf::from(p.get_ref());
            Some(match self.file.parent() {
                Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
                _ => path,
            })
        });
        let listen = match &raw.listen {
            Some(l) => l.get_ref().parse().unwrap_or_else(|_| {
                self.report(
                    l.span(),
                    "director.listen",
                    format!(
                        "\"{}\" is not an address:port like \"127.0.0.1:9469\"",
                        l.get_ref()
                    ),
                );
                DEFAULT_LISTEN
            }),
            None => DEFAULT_LISTEN,
        };
        let max_connections = self.int(
            &raw.max_connections,
            "director.max_connections",
            1,
            u32::MAX.into(),
            DEFAULT_MAX_CONNECTIONS,
        );
        let syn_retries = self.int(
            &raw.syn_retries,
            "director.syn_retries",
            0,
            255,
            DEFAULT_SYN_RETRIES,
        );
        let admin_token = raw.admin_token.as_ref().map(|t| {
            if t.get_ref().trim().is_empty() {
                self.report(t.span(), "director.admin_token", "must not be empty");
            }
            t.get_ref().clone()
        });
        let plugin_memory = match &raw.plugin_memory {
            Some(m) => match parse_size(m.get_ref()) {
                Some(bytes) if bytes >= MIN_PLUGIN_MEMORY => bytes,
                Some(_) => {
                    self.report(
                        m.span(),
                        "director.plugin_memory",
                        "must be at least 64KiB (one WebAssembly page)",
                    );
                    DEFAULT_PLUGIN_MEMORY
                }
                None => {
                    self.report(
                        m.span(),
                        "director.plugin_memory",
                        format!(
                            "\"{}\" is not a size like \"16MiB\" (suffixes B, KiB, MiB, GiB)",
                            m.get_ref()
                        ),
                    );
                    DEFAULT_PLUGIN_MEMORY
                }
            },
            None => DEFAULT_PLUGIN_MEMORY,
        };
        let plugin_deadline = self.duration(
            &raw.plugin_deadline,
            "director.plugin_deadline",
            DEFAULT_PLUGIN_DEADLINE,
        );
        let plugin_keep_warm = match &raw.plugin_keep_warm {
            Some(v) if v.get_ref() == "off" => Duration::ZERO,
            other => self.duration(other, "director.plugin_keep_warm", DEFAULT_PLUGIN_KEEP_WARM),
        };
        let send_threads = match &raw.send_threads {
            None => DEFAULT_SEND_THREADS,
            Some(t) => {
                let (outside, inside) = match t.get_ref().as_str() {
                    "none" => (false, false),
                    "outside" => (true, false),
                    "inside" => (false, true),
                    "both" => (true, true),
                    other => {
                        self.report(
                            t.span(),
                            "director.send_threads",
                            format!(
                                "\"{other}\" is not a choice; use \"none\", \"outside\", \"inside\" or \"both\""
                            ),
                        );
                        (DEFAULT_SEND_THREADS.outside, DEFAULT_SEND_THREADS.inside)
                    }
                };
                SendThreads::new(outside, inside)
            }
        };
        let syn_proxy_mss = self.int(
            &raw.syn_proxy_mss,
            "director.syn_proxy_mss",
            536,
            9000,
            DEFAULT_SYN_PROXY_MSS,
        );
        let syn_proxy_wscale = self.int(
            &raw.syn_proxy_wscale,
            "director.syn_proxy_wscale",
            0,
            14,
            DEFAULT_SYN_PROXY_WSCALE,
        );
        let new_per_wakeup = self.int(
            &raw.new_per_wakeup,
            "director.new_per_wakeup",
            0,
            u32::MAX.into(),
            DEFAULT_NEW_PER_WAKEUP,
        );
        let xdp_mode = match &raw.xdp_mode {
            None => XdpMode::Auto,
            Some(m) => match m.get_ref().as_str() {
                "auto" => XdpMode::Auto,
                "native" => XdpMode::Native,
                "generic" => XdpMode::Generic,
                other => {
                    self.report(
                        m.span(),
                        "director.xdp_mode",
                        format!(
                            "\"{other}\" is not a choice; use \"auto\", \"native\" or \"generic\""
                        ),
                    );
                    XdpMode::Auto
                }
            },
        };
        let offload = match &raw.offload {
            None => Offload::None,
            Some(o) => match o.get_ref().as_str() {
                "none" => Offload::None,
                "xdp" => Offload::Xdp(xdp_mode),
                other => {
                    self.report(
                        o.span(),
                        "director.offload",
                        format!("\"{other}\" is not a choice; use \"none\" or \"xdp\""),
                    );
                    Offload::None
                }
            },
        };
        if offload == Offload::None
            && let Some(m) = &raw.xdp_mode
        {
            self.report(
                m.span(),
                "director.xdp_mode",
                "applies only with offload = \"xdp\"",
            );
        }
        let offload_connections = self.int(
            &raw.offload_connections,
            "director.offload_connections",
            1,
            i64::from(u32::MAX / 2),
            DEFAULT_OFFLOAD_CONNECTIONS,
        );
        DirectorConfig {
            outside,
            inside,
            plugins,
            listen,
            max_connections,
            syn_retries,
            admin_token,
            plugin_memory,
            plugin_deadline,
            plugin_keep_warm,
            send_threads,
            qdisc_bypass: raw.qdisc_bypass.is_none_or(|b| b.into_inner()),
            syn_proxy: raw.syn_proxy.is_some_and(|b| b.into_inner()),
            syn_proxy_mss,
            syn_proxy_wscale,
            new_per_wakeup,
            offload,
            offload_connections,
        }
    }

    /// `[sync]`: every key checked, the key file read (a missing, unreadable or short key is a problem).
    fn sync(&mut self, raw: Spanned<RawSync>) -> SyncConfig {
        let span = raw.span();
        let raw = raw.into_inner();
        let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let listen = match &raw.listen {
            None => {
                self.report(span.clone(), "sync.listen", "required: the UDP address:port this director syncs on, like \"192.0.2.10:8848\"");
                unspecified
            }
            Some(l) => self.socket_address(l, "sync.listen").unwrap_or(unspecified),
        };
        let mut peers = Vec::new();
        match &raw.peers {
            None => self.report(
                span.clone(),
                "sync.peers",
                "required: the other directors' address:port (or a multicast group)",
            ),
            Some(list) if list.get_ref().is_empty() => {
                self.report(list.span(), "sync.peers", "must name at least one peer")
            }
            Some(list) => {
                for (i, peer) in list.get_ref().iter().enumerate() {
                    let key = format!("sync.peers[{i}]");
                    let Some(addr) = self.socket_address(peer, &key) else {
                        continue;
                    };
                    if addr.port() == 0 {
                        self.report(peer.span(), key, "needs a port other than 0");
                    } else if addr.is_ipv4() != listen.is_ipv4() && listen != unspecified {
                        self.report(
                            peer.span(),
                            key,
                            format!(
                                "{addr} is {} but listen is {}: one socket sends to every peer",
                                family(addr.ip()),
                                family(listen.ip())
                            ),
                        );
                    } else if addr == listen {
                        self.report(
                            peer.span(),
                            key,
                            format!("{addr} is this director's own listen address"),
                        );
                    } else if peers.contains(&addr) {
                        self.report(peer.span(), key, format!("{addr} is listed twice"));
                    } else {
                        peers.push(addr);
                    }
                }
            }
        }
        let (key_file, key) = match &raw.key_file {
            None => {
                self.report(span.clone(), "sync.key_file", "required: a file holding the secret the directors share (at least 16 bytes); sync does not run without one");
                (PathBuf::new(), SyncKey(Vec::new()))
            }
            Some(k) if k.get_ref().is_empty() => {
                self.report(k.span(), "sync.key_file", "must not be empty");
                (PathBuf::new(), SyncKey(Vec::new()))
            }
            Some(k) => {
                let path = self.relative(k.get_ref());
                let key = match std::fs::read(&path) {
                    Ok(bytes) if bytes.len() >= MIN_SYNC_KEY => bytes,
                    Ok(bytes) => {
                        self.report(
                            k.span(),
                            "sync.key_file",
                            format!("{} holds {} bytes; the key must be at least {MIN_SYNC_KEY} (make one with `head -c 32 /dev/urandom > {}`)", path.display(), bytes.len(), path.display()),
                        );
                        Vec::new()
                    }
                    Err(err) => {
                        self.report(
                            k.span(),
                            "sync.key_file",
                            format!("cannot read {}: {err}", path.display()),
                        );
                        Vec::new()
                    }
                };
                (path, SyncKey(key))
            }
        };
        let role = match &raw.role {
            None => Role::Standby,
            Some(r) => match r.get_ref().as_str() {
                "active" => Role::Active,
                "standby" => Role::Standby,
                other => {
                    self.report(
                        r.span(),
                        "sync.role",
                        format!("\"{other}\" is not a role; use \"active\" or \"standby\""),
                    );
                    Role::Standby
                }
            },
        };
        let max_datagram = self.int(
            &raw.max_datagram,
            "sync.max_datagram",
            MIN_SYNC_MAX_DATAGRAM.into(),
            65507,
            DEFAULT_SYNC_MAX_DATAGRAM,
        );
        let garp_repeat = self.int(
            &raw.garp_repeat,
            "sync.garp_repeat",
            1,
            100,
            DEFAULT_GARP_REPEAT,
        );
        let garp_interval = self.duration(
            &raw.garp_interval,
            "sync.garp_interval",
            DEFAULT_GARP_INTERVAL,
        );
        let resync_timeout = self.duration(
            &raw.resync_timeout,
            "sync.resync_timeout",
            DEFAULT_RESYNC_TIMEOUT,
        );
        SyncConfig {
            listen,
            peers,
            key_file,
            key,
            role,
            max_datagram,
            garp_repeat,
            garp_interval,
            resync_timeout,
        }
    }

    /// A path as written, relative ones resolved against the config file's folder.
    fn relative(&self, path: &str) -> PathBuf {
        let path = PathBuf::from(path);
        match self.file.parent() {
            Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
            _ => path,
        }
    }

    fn socket_address(&mut self, raw: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match raw.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.report(
                    raw.span(),
                    key,
                    format!("\"{}\" is not an address:port like \"192.0.2.10:8848\" or \"[2001:db8::10]:8848\"", raw.get_ref()),
                );
                None
            }
        }
    }

    fn interface(&mut self, raw: &Text, table: &Range<usize>, key: &str) -> String {
        match raw {
            None => {
                self.report(table.clone(), key, "required: the interface name");
                String::new()
            }
            Some(name) => {
                let value = name.get_ref();
                if value.is_empty() || value.len() > 15 || value.contains(['/', ' ', '\t']) {
                    self.report(
                        name.span(),
                        key,
                        format!("\"{value}\" is not an interface name (1 to 15 characters, no '/' or spaces)"),
                    );
                }
                value.clone()
            }
        }
    }

    fn timeouts(&mut self, raw: Option<RawTimeouts>) -> Timeouts {
        let defaults = Timeouts::default();
        let Some(raw) = raw else {
            return defaults;
        };
        Timeouts {
            syn: self.duration(&raw.syn, "timeouts.syn", defaults.syn),
            syn_recv: self.duration(&raw.syn_recv, "timeouts.syn_recv", defaults.syn_recv),
            established: self.duration(
                &raw.established,
                "timeouts.established",
                defaults.established,
            ),
            closing: self.duration(&raw.closing, "timeouts.closing", defaults.closing),
            udp: self.duration(&raw.udp, "timeouts.udp", defaults.udp),
        }
    }

    fn reals(&mut self, raws: &[Spanned<RawReal>]) -> Vec<RealConfig> {
        let mut reals = Vec::with_capacity(raws.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, raw_span) in raws.iter().enumerate() {
            let raw = raw_span.get_ref();
            let key = format!("real[{i}]");
            let name = self.name(&raw.name, &raw_span.span(), &key, "real server");
            self.unique_name(&mut names, &raw.name, &name, &key, "real", i);
            let address = self.address(&raw.address, &raw_span.span(), &format!("{key}.address"));
            let port = raw
                .port
                .as_ref()
                .map(|p| self.port(p, &format!("{key}.port")));
            let weight = self.int(&raw.weight, &format!("{key}.weight"), 0, u32::MAX.into(), 1);
            let failure_threshold = self.int(
                &raw.failure_threshold,
                &format!("{key}.failure_threshold"),
                1,
                u32::MAX.into(),
                DEFAULT_FAILURE_THRESHOLD,
            );
            let retry_after = self.duration(
                &raw.retry_after,
                &format!("{key}.retry_after"),
                DEFAULT_RETRY_AFTER,
            );
            let mac = raw.mac.as_ref().and_then(|m| {
                let parsed = m.get_ref().parse::<MacAddr>().ok();
                if parsed.is_none() {
                    self.report(
                        m.span(),
                        format!("{key}.mac"),
                        format!(
                            "\"{}\" is not a MAC address like \"02:00:00:00:00:0a\"",
                            m.get_ref()
                        ),
                    );
                }
                parsed
            });
            let check = raw
                .check
                .as_ref()
                .map(|c| self.check(c, port, &format!("{key}.check")));
            reals.push(RealConfig {
                name,
                address,
                port,
                weight,
                backup: raw.backup.as_ref().map(|b| b.get_ref().clone()),
                failure_threshold,
                retry_after,
                mac,
                check,
            });
        }
        self.backups(raws, &reals, &names);
        reals
    }

    /// Backups must name another defined real server, and following backups must never come back.
    fn backups(
        &mut self,
        raws: &[Spanned<RawReal>],
        reals: &[RealConfig],
        names: &HashMap<String, usize>,
    ) {
        let next: Vec<Option<usize>> = raws
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let backup = raw.get_ref().backup.as_ref()?;
                let key = format!("real[{i}].backup");
                match names.get(backup.get_ref()) {
                    None => {
                        self.report(
                            backup.span(),
                            key,
                            format!("\"{}\" is not a defined real server", backup.get_ref()),
                        );
                        None
                    }
                    Some(&j) if j == i || reals[j].name == reals[i].name => {
                        self.report(
                            backup.span(),
                            key,
                            format!("\"{}\" names itself as its backup", reals[i].name),
                        );
                        None
                    }
                    Some(&j) if reals[j].address.is_ipv6() != reals[i].address.is_ipv6() => {
                        self.report(
                            backup.span(),
                            key,
                            format!(
                                "backup \"{}\" ({}) is {}, \"{}\" ({}) is {}: a backup serves the same virtual \
                                 addresses, so it must be of the same address family",
                                reals[j].name,
                                reals[j].address,
                                family(reals[j].address),
                                reals[i].name,
                                reals[i].address,
                                family(reals[i].address),
                            ),
                        );
                        None
                    }
                    Some(&j) => Some(j),
                }
            })
            .collect();
        for start in 0..next.len() {
            // Walk at most len steps; report a cycle once, at its first member in file order.
            let mut cycle = vec![start];
            let mut at = next[start];
            while let Some(j) = at {
                if j == start {
                    if cycle.iter().all(|&member| member >= start) {
                        let path: Vec<&str> = cycle
                            .iter()
                            .chain(std::iter::once(&start))
                            .map(|&m| reals[m].name.as_str())
                            .collect();
                        let backup = raws[start].get_ref().backup.as_ref().expect("has a backup");
                        self.report(
                            backup.span(),
                            format!("real[{start}].backup"),
                            format!("backup cycle: {}", path.join(" -> ")),
                        );
                    }
                    break;
                }
                if cycle.len() > next.len() || cycle.contains(&j) {
                    break;
                }
                cycle.push(j);
                at = next[j];
            }
        }
    }

    fn check(&mut self, raw: &Spanned<RawCheck>, real_port: Option<u16>, key: &str) -> HealthCheck {
        let c = raw.get_ref();
        let kind_name = match &c.kind {
            None => {
                self.report(
                    raw.span(),
                    format!("{key}.kind"),
                    "required: \"tcp\" or \"http\"",
                );
                "tcp"
            }
            Some(k) => match k.get_ref().as_str() {
                "tcp" => "tcp",
                "http" => "http",
                other => {
                    self.report(
                        k.span(),
                        format!("{key}.kind"),
                        format!("\"{other}\" is not a check kind; use \"tcp\" or \"http\""),
                    );
                    "tcp"
                }
            },
        };
        let kind = if kind_name == "http" {
            let path = match &c.path {
                Some(p) if !p.get_ref().starts_with('/') => {
                    self.report(p.span(), format!("{key}.path"), "must start with '/'");
                    "/".to_owned()
                }
                Some(p) => p.get_ref().clone(),
                None => "/".to_owned(),
            };
            let expect = self.int(&c.expect, &format!("{key}.expect"), 100, 599, 200u16);
            CheckKind::Http { path, expect }
        } else {
            for (given, name) in [
                (c.path.as_ref().map(|p| p.span()), "path"),
                (c.expect.as_ref().map(|e| e.span()), "expect"),
            ] {
                if let Some(span) = given {
                    self.report(
                        span,
                        format!("{key}.{name}"),
                        "only applies to kind = \"http\"",
                    );
                }
            }
            CheckKind::Tcp
        };
        let port = match (&c.port, real_port) {
            (Some(p), _) => self.port(p, &format!("{key}.port")),
            (None, Some(p)) => p,
            (None, None) => {
                self.report(
                    raw.span(),
                    format!("{key}.port"),
                    "required when the real server has no port",
                );
                0
            }
        };
        let interval = self.duration(
            &c.interval,
            &format!("{key}.interval"),
            Duration::from_secs(2),
        );
        let timeout = self.duration(
            &c.timeout,
            &format!("{key}.timeout"),
            Duration::from_secs(1),
        );
        let rise = self.int(&c.rise, &format!("{key}.rise"), 1, u32::MAX.into(), 2);
        let fall = self.int(&c.fall, &format!("{key}.fall"), 1, u32::MAX.into(), 3);
        HealthCheck {
            kind,
            port,
            interval,
            timeout,
            rise,
            fall,
        }
    }

    fn virtuals(
        &mut self,
        raws: &[Spanned<RawVirtual>],
        raw_reals: &[Spanned<RawReal>],
        reals: &[RealConfig],
    ) -> Vec<VirtualConfig> {
        let real_index: HashMap<&str, usize> = reals
            .iter()
            .enumerate()
            .rev()
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        let real_addresses: HashMap<IpAddr, usize> = reals
            .iter()
            .enumerate()
            .rev()
            .filter(|(i, _)| raw_reals[*i].get_ref().address.is_some())
            .map(|(i, r)| (r.address, i))
            .collect();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addresses: HashMap<IpAddr, usize> = HashMap::new();
        let mut virtuals = Vec::with_capacity(raws.len());
        for (i, raw_span) in raws.iter().enumerate() {
            let raw = raw_span.get_ref();
            let key = format!("virtual[{i}]");
            let name = self.name(&raw.name, &raw_span.span(), &key, "virtual machine");
            self.unique_name(&mut names, &raw.name, &name, &key, "virtual", i);
            let address_key = format!("{key}.address");
            let address = self.address(&raw.address, &raw_span.span(), &address_key);
            if let Some(a) = &raw.address
                && !address.is_unspecified()
            {
                if let Some(&first) = addresses.get(&address) {
                    self.report(
                        a.span(),
                        &address_key,
                        format!("{address} is already the address of virtual[{first}]"),
                    );
                } else {
                    addresses.insert(address, i);
                }
                if let Some(&r) = real_addresses.get(&address) {
                    self.report(
                        a.span(),
                        &address_key,
                        format!(
                            "{address} is the address of real server \"{}\"",
                            reals[r].name
                        ),
                    );
                }
            }
            let policy = self.policy_name(&raw.policy, &format!("{key}.policy"));
            let shadow_policy = raw.shadow_policy.as_ref().map(|s| {
                self.plugin_name(s, &format!("{key}.shadow_policy"));
                s.get_ref().clone()
            });
            let binder = raw.binder.as_ref().map(|b| {
                self.plugin_name(b, &format!("{key}.binder"));
                b.get_ref().clone()
            });
            let announce = match &raw.announce {
                None => Announce::Arp,
                Some(a) => match a.get_ref().as_str() {
                    "arp" => Announce::Arp,
                    "none" => Announce::None,
                    other => {
                        self.report(
                            a.span(),
                            format!("{key}.announce"),
                            format!("\"{other}\" is not an announce mode; use \"arp\" or \"none\""),
                        );
                        Announce::Arp
                    }
                },
            };
            let virtual_bind = raw
                .bind
                .as_ref()
                .map(|b| self.bind_list(b, &format!("{key}.bind"), address, &real_index, reals));
            if raw.port.is_empty() {
                self.report(
                    raw_span.span(),
                    format!("{key}.port"),
                    "a virtual machine needs at least one [[virtual.port]]; it supports exactly those ports",
                );
            }
            let mut ports = Vec::with_capacity(raw.port.len());
            let mut seen: HashMap<(Protocol, u16), usize> = HashMap::new();
            for (j, port_span) in raw.port.iter().enumerate() {
                let p = port_span.get_ref();
                let pkey = format!("{key}.port[{j}]");
                let number = match &p.port {
                    Some(n) => self.port(n, &format!("{pkey}.port")),
                    None => {
                        self.report(
                            port_span.span(),
                            format!("{pkey}.port"),
                            "required: the port number",
                        );
                        0
                    }
                };
                let protocol = match &p.protocol {
                    None => Protocol::Tcp,
                    Some(s) => match s.get_ref().as_str() {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        other => {
                            self.report(
                                s.span(),
                                format!("{pkey}.protocol"),
                                format!("\"{other}\" is not a protocol; use \"tcp\" or \"udp\""),
                            );
                            Protocol::Tcp
                        }
                    },
                };
                if number != 0 {
                    if let Some(&first) = seen.get(&(protocol, number)) {
                        let span = p.port.as_ref().map_or(port_span.span(), |n| n.span());
                        self.report(
                            span,
                            format!("{pkey}.port"),
                            format!(
                                "{}/{} is already defined by {key}.port[{first}]",
                                SocketAddr::new(address, number),
                                protocol.as_str()
                            ),
                        );
                    } else {
                        seen.insert((protocol, number), j);
                    }
                }
                let port_bind = p.bind.as_ref().map(|b| {
                    self.bind_list(b, &format!("{pkey}.bind"), address, &real_index, reals)
                });
                match port_bind.as_ref().or(virtual_bind.as_ref()) {
                    Some(entries) if number != 0 => self.targets(entries, number, reals),
                    Some(_) => {}
                    None if binder.is_some() => {}
                    None => self.report(
                        port_span.span(),
                        format!("{pkey}.bind"),
                        "no binding: give bind here or on the virtual machine, or a binder plugin",
                    ),
                }
                let port_policy = p
                    .policy
                    .as_ref()
                    .map(|_| self.policy_name(&p.policy, &format!("{pkey}.policy")));
                let port_shadow = p.shadow_policy.as_ref().map(|s| {
                    self.plugin_name(s, &format!("{pkey}.shadow_policy"));
                    s.get_ref().clone()
                });
                ports.push(PortConfig {
                    port: number,
                    protocol,
                    bind: port_bind.map(|entries| entries.into_iter().map(|e| e.target).collect()),
                    policy: port_policy,
                    policy_args: p.policy_args.as_ref().map(|a| a.get_ref().clone()),
                    shadow_policy: port_shadow,
                    shadow_policy_args: p.shadow_policy_args.as_ref().map(|a| a.get_ref().clone()),
                });
            }
            virtuals.push(VirtualConfig {
                name,
                address,
                policy,
                policy_args: raw
                    .policy_args
                    .as_ref()
                    .map(|a| a.get_ref().clone())
                    .unwrap_or_default(),
                shadow_policy,
                shadow_policy_args: raw
                    .shadow_policy_args
                    .as_ref()
                    .map(|a| a.get_ref().clone())
                    .unwrap_or_default(),
                binder,
                binder_args: raw
                    .binder_args
                    .as_ref()
                    .map(|a| a.get_ref().clone())
                    .unwrap_or_default(),
                bind: virtual_bind.map(|entries| entries.into_iter().map(|e| e.target).collect()),
                announce,
                ports,
            });
        }
        virtuals
    }

    /// Parses each `"REAL"` / `"REAL:PORT"` entry and checks it names a defined real server of the
    /// virtual address's family whose fixed port, if any, agrees.
    fn bind_list(
        &mut self,
        list: &Spanned<Vec<Spanned<String>>>,
        key: &str,
        virtual_address: IpAddr,
        real_index: &HashMap<&str, usize>,
        reals: &[RealConfig],
    ) -> Vec<BindEntry> {
        if list.get_ref().is_empty() {
            self.report(list.span(), key, "must name at least one real server");
        }
        let mut entries = Vec::with_capacity(list.get_ref().len());
        for (k, item) in list.get_ref().iter().enumerate() {
            let ekey = format!("{key}[{k}]");
            let text = item.get_ref();
            let (real, port) = match text.rsplit_once(':') {
                Some((real, port)) => match port.parse::<u16>() {
                    Ok(p) if p != 0 => (real, Some(p)),
                    _ => {
                        self.report(
                            item.span(),
                            &ekey,
                            format!("\"{text}\": \"{port}\" is not a port number (1 to 65535)"),
                        );
                        continue;
                    }
                },
                None => (text.as_str(), None),
            };
            if !valid_name(real) {
                self.report(
                    item.span(),
                    &ekey,
                    format!("\"{text}\" is not \"REAL\" or \"REAL:PORT\""),
                );
                continue;
            }
            let index = real_index.get(real).copied();
            match index {
                None => self.report(
                    item.span(),
                    &ekey,
                    format!("\"{real}\" is not a defined real server"),
                ),
                Some(r) => {
                    if !virtual_address.is_unspecified()
                        && !reals[r].address.is_unspecified()
                        && virtual_address.is_ipv6() != reals[r].address.is_ipv6()
                    {
                        self.report(
                            item.span(),
                            &ekey,
                            format!(
                                "real server \"{real}\" ({}) is {}, virtual address {virtual_address} is {}: a binding \
                                 cannot mix address families (vipd does no NAT64)",
                                reals[r].address,
                                family(reals[r].address),
                                family(virtual_address),
                            ),
                        );
                    }
                    if let (Some(fixed), Some(asked)) = (reals[r].port, port)
                        && fixed != asked
                    {
                        self.report(
                            item.span(),
                            &ekey,
                            format!("real server \"{real}\" stands for port {fixed} only; bind \"{real}\" instead"),
                        );
                    }
                }
            }
            entries.push(BindEntry {
                target: BindTarget {
                    real: real.to_owned(),
                    port,
                },
                real: index,
                span: item.span(),
                key: ekey,
            });
        }
        entries
    }

    /// Resolves a bind list for one virtual port and refuses two entries reaching the same real port.
    fn targets(&mut self, entries: &[BindEntry], virtual_port: u16, reals: &[RealConfig]) {
        let mut seen: HashSet<(usize, u16)> = HashSet::new();
        for entry in entries {
            let Some(r) = entry.real else { continue };
            let Some(port) = resolve_port(reals[r].port, entry.target.port, virtual_port) else {
                continue;
            };
            if !seen.insert((r, port)) {
                self.report(
                    entry.span.clone(),
                    &entry.key,
                    format!(
                        "\"{}\" binds port {virtual_port} to {}:{port} a second time",
                        entry.target, reals[r].name
                    ),
                );
            }
        }
    }

    fn name(&mut self, raw: &Text, table: &Range<usize>, key: &str, what: &str) -> String {
        match raw {
            None => {
                self.report(
                    table.clone(),
                    format!("{key}.name"),
                    format!("required: the {what}'s name"),
                );
                String::new()
            }
            Some(n) => {
                if !valid_name(n.get_ref()) {
                    self.report(
                        n.span(),
                        format!("{key}.name"),
                        format!(
                            "\"{}\" is not a name: use letters, digits, '.', '_' and '-'",
                            n.get_ref()
                        ),
                    );
                }
                n.get_ref().clone()
            }
        }
    }

    fn policy_name(&mut self, raw: &Text, key: &str) -> String {
        match raw {
            None => DEFAULT_POLICY.to_owned(),
            Some(p) => {
                self.plugin_name(p, key);
                p.get_ref().clone()
            }
        }
    }

    fn plugin_name(&mut self, raw: &Spanned<String>, key: &str) {
        if !valid_name(raw.get_ref()) || raw.get_ref().ends_with(".wasm") {
            self.report(
                raw.span(),
                key,
                format!(
                    "\"{}\" is not a policy name: a built-in or the plugin file's name without .wasm",
                    raw.get_ref()
                ),
            );
        }
    }

    fn address(&mut self, raw: &Text, table: &Range<usize>, key: &str) -> IpAddr {
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let Some(a) = raw else {
            self.report(table.clone(), key, "required: an IPv4 or IPv6 address");
            return unspecified;
        };
        match a.get_ref().parse::<IpAddr>() {
            Ok(addr) if !is_host_address(addr) => {
                self.report(a.span(), key, format!("{addr} cannot be a host address"));
                unspecified
            }
            Ok(addr) => addr,
            Err(_) => {
                self.report(
                    a.span(),
                    key,
                    format!("\"{}\" is not an IPv4 or IPv6 address", a.get_ref()),
                );
                unspecified
            }
        }
    }

    fn port(&mut self, raw: &Spanned<i64>, key: &str) -> u16 {
        match u16::try_from(*raw.get_ref()) {
            Ok(p) if p != 0 => p,
            _ => {
                self.report(
                    raw.span(),
                    key,
                    format!("{} is not a port number (1 to 65535)", raw.get_ref()),
                );
                0
            }
        }
    }

    fn int<T: TryFrom<i64>>(&mut self, raw: &Int, key: &str, min: i64, max: i64, default: T) -> T {
        let Some(v) = raw else { return default };
        let value = *v.get_ref();
        match T::try_from(value) {
            Ok(t) if (min..=max).contains(&value) => t,
            _ => {
                self.report(
                    v.span(),
                    key,
                    format!("{value} is out of range ({min} to {max})"),
                );
                default
            }
        }
    }

    fn duration(&mut self, raw: &Text, key: &str, default: Duration) -> Duration {
        let Some(d) = raw else { return default };
        match humantime::parse_duration(d.get_ref()) {
            Ok(duration) if !duration.is_zero() => duration,
            Ok(_) => {
                self.report(d.span(), key, "must be longer than zero");
                default
            }
            Err(err) => {
                self.report(
                    d.span(),
                    key,
                    format!(
                        "\"{}\" is not a duration like \"10s\" or \"15m\": {err}",
                        d.get_ref()
                    ),
                );
                default
            }
        }
    }
}

/// 1-based line and character column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The dotted key whose key or value holds `offset`, deepest first. Table spans cover only their headers, so
/// every child is searched.
fn key_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    for (key, value) in table.iter() {
        if key.span().contains(&offset) {
            return Some(key.get_ref().to_string());
        }
        if let Some(inner) = value_key_at(value.get_ref(), offset) {
            let sep = if inner.starts_with('[') { "" } else { "." };
            return Some(format!("{}{sep}{inner}", key.get_ref()));
        }
        if value.span().contains(&offset) {
            return Some(key.get_ref().to_string());
        }
    }
    None
}

fn value_key_at(value: &DeValue<'_>, offset: usize) -> Option<String> {
    match value {
        DeValue::Table(table) => key_at(table, offset),
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| match value_key_at(item.get_ref(), offset) {
                Some(inner) if inner.starts_with('[') => Some(format!("[{i}]{inner}")),
                Some(inner) => Some(format!("[{i}].{inner}")),
                None => item.span().contains(&offset).then(|| format!("[{i}]")),
            }),
        _ => None,
    }
}

/// Names of real servers, virtual machines and plugins: they appear in bind entries, metric labels and
/// file names, so no ':' , '/' or spaces.
/// "IPv4" or "IPv6", for messages.
pub fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv6() { "IPv6" } else { "IPv4" }
}

/// Whether `addr` can be a virtual or real server's address: not unspecified, multicast or broadcast, and
/// for IPv6 not an IPv4-mapped address (vipd does no NAT64: an IPv4 server is written as IPv4).
fn is_host_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_broadcast() || a.is_multicast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast() || a.to_ipv4_mapped().is_some()),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `"16MiB"`, `"512 KiB"`, `"1GiB"`, `"65536B"` or `"65536"` to bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIRECTOR: &str = "[director]\noutside = \"eth0\"\ninside = \"eth1\"\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    /// (line, key) of every problem, and the problems themselves for messages.
    fn problems(text: &str) -> Vec<Problem> {
        parse(text).expect_err("config should be refused").problems
    }

    fn assert_problem(text: &str, line: usize, key: &str, needle: &str) {
        let all = problems(text);
        assert!(
            all.iter()
                .any(|p| p.line == line && p.key == key && p.message.contains(needle)),
            "no problem at line {line} key {key} containing {needle:?}; got:\n{}",
            ConfigError {
                problems: all.clone()
            }
        );
    }

    /// Line numbers in the test texts below, counted from this base of 3 director lines.
    fn with_director(body: &str) -> String {
        format!("{DIRECTOR}{body}")
    }

    const ONE_REAL: &str = "[[real]]\nname = \"a\"\naddress = \"10.0.0.1\"\n"; // lines 4-6

    /// The smallest useful config gets every default.
    #[test]
    fn defaults() {
        let text = with_director(&format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\n[[virtual.port]]\nport = 80\nbind = [\"a\"]\n"
        ));
        let config = parse(&text).unwrap();
        let d = &config.director;
        assert_eq!(d.listen, "127.0.0.1:9469".parse().unwrap());
        assert_eq!(d.max_connections, 1_000_000);
        assert_eq!(d.syn_retries, 2);
        assert_eq!(d.plugin_memory, 16 << 20);
        assert_eq!(d.plugin_deadline, Duration::from_millis(1));
        assert_eq!(d.plugin_keep_warm, Duration::from_millis(1));
        assert_eq!((d.plugins.clone(), d.admin_token.clone()), (None, None));
        assert_eq!(
            (d.send_threads, d.qdisc_bypass),
            (DEFAULT_SEND_THREADS, true)
        );
        assert_eq!(config.timeouts, Timeouts::default());
        let r = &config.reals[0];
        assert_eq!((r.port, r.weight, r.failure_threshold), (None, 1, 8));
        assert_eq!(
            (r.retry_after, r.mac, r.backup.clone(), r.check.clone()),
            (Duration::from_secs(30), None, None, None)
        );
        let v = &config.virtuals[0];
        assert_eq!(
            (v.policy.as_str(), v.announce, v.binder.clone()),
            ("round-robin", Announce::Arp, None)
        );
        assert_eq!(v.ports[0].protocol, Protocol::Tcp);
    }

    /// Every key given explicitly is read with its type.
    #[test]
    fn every_key() {
        let text = r#"[director]
outside = "o"
inside = "i"
plugins = "/etc/vipd/plugins"
listen = "0.0.0.0:9000"
max_connections = 5
syn_retries = 4
admin_token = "secret"
plugin_memory = "1GiB"
plugin_deadline = "5ms"
plugin_keep_warm = "off"
send_threads = "both"
qdisc_bypass = false
[timeouts]
syn = "1s"
syn_recv = "5s"
established = "2m"
closing = "3s"
udp = "4s"
[[real]]
name = "a"
address = "10.0.0.1"
port = 8001
weight = 3
backup = "b"
failure_threshold = 2
retry_after = "1m"
mac = "02:00:00:00:00:0a"
check = { kind = "http", path = "/health", expect = 204, interval = "5s", timeout = "2s", rise = 1, fall = 4 }
[[real]]
name = "b"
address = "10.0.0.2"
check = { kind = "tcp", port = 22 }
[[virtual]]
name = "v"
address = "192.0.2.1"
policy = "maglev"
policy_args = { table = "65537" }
binder = "port-offset"
announce = "none"
[[virtual.port]]
port = 53
protocol = "udp"
policy = "least-connections"
policy_args = { x = "y" }
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.director.plugins, Some(PathBuf::from("/etc/vipd/plugins")));
        assert_eq!(c.director.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!((c.director.max_connections, c.director.syn_retries), (5, 4));
        assert_eq!(c.director.admin_token.as_deref(), Some("secret"));
        assert_eq!(c.director.plugin_memory, 1 << 30);
        assert_eq!(c.director.plugin_deadline, Duration::from_millis(5));
        assert_eq!(c.director.plugin_keep_warm, Duration::ZERO);
        assert_eq!(
            (c.director.send_threads, c.director.qdisc_bypass),
            (SendThreads::new(true, true), false)
        );
        assert_eq!(c.timeouts.syn_recv, Duration::from_secs(5));
        assert_eq!(c.timeouts.established, Duration::from_secs(120));
        assert_eq!(c.timeouts.udp, Duration::from_secs(4));
        let a = &c.reals[0];
        assert_eq!(
            (a.port, a.weight, a.backup.as_deref(), a.failure_threshold),
            (Some(8001), 3, Some("b"), 2)
        );
        assert_eq!(a.mac, Some(MacAddr([2, 0, 0, 0, 0, 0x0a])));
        assert_eq!(
            a.check,
            Some(HealthCheck {
                kind: CheckKind::Http {
                    path: "/health".into(),
                    expect: 204
                },
                port: 8001,
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                rise: 1,
                fall: 4
            })
        );
        let b = c.reals[1].check.as_ref().unwrap();
        assert_eq!(
            (&b.kind, b.port, b.rise, b.fall),
            (&CheckKind::Tcp, 22, 2, 3)
        );
        let v = &c.virtuals[0];
        assert_eq!(
            (v.policy.as_str(), v.binder.as_deref(), v.announce),
            ("maglev", Some("port-offset"), Announce::None)
        );
        assert_eq!(
            v.policy_args.get("table").map(String::as_str),
            Some("65537")
        );
        let p = &v.ports[0];
        assert_eq!(
            (p.port, p.protocol, p.bind.clone()),
            (53, Protocol::Udp, None)
        );
        let (policy, args) = v.effective_policy(p);
        assert_eq!(
            (policy, args.get("x").map(String::as_str)),
            ("least-connections", Some("y"))
        );
    }

    /// A relative plugins folder is anchored at the config file's folder.
    #[test]
    fn relative_plugins_folder() {
        let text = "[director]\noutside = \"o\"\ninside = \"i\"\nplugins = \"plugins\"\n";
        let c = Config::parse(text, Path::new("/etc/vipd/vipd.toml")).unwrap();
        assert_eq!(c.director.plugins, Some(PathBuf::from("/etc/vipd/plugins")));
    }

    /// An unknown key is refused with its line and dotted key.
    #[test]
    fn unknown_key() {
        let text = with_director(&format!("{ONE_REAL}colour = \"red\"\n"));
        assert_problem(&text, 7, "real[0].colour", "unknown field `colour`");
    }

    /// An unknown key inside a port table names the port.
    #[test]
    fn unknown_key_in_port() {
        let text = with_director(&format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\n[[virtual.port]]\nport = 80\nbnid = [\"a\"]\n"
        ));
        assert_problem(&text, 12, "virtual[0].port[0].bnid", "unknown field");
    }

    /// A value of the wrong type is refused with its line and key.
    #[test]
    fn wrong_type() {
        let text = with_director(&format!("{ONE_REAL}weight = \"heavy\"\n"));
        let all = problems(&text);
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].line, all[0].column, all[0].key.as_str()),
            (7, 10, "real[0].weight")
        );
    }

    /// A TOML syntax error is one problem with its line.
    #[test]
    fn syntax_error() {
        let all = problems("[director]\noutside = \"eth0\ninside = \"eth1\"\n");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].line, 2);
        assert_eq!(all[0].file, PathBuf::from("test.toml"));
    }

    /// The [director] section and its interfaces are required.
    #[test]
    fn director_required() {
        assert_problem(ONE_REAL, 1, "director", "required");
        assert_problem(
            "[director]\noutside = \"eth0\"\n",
            1,
            "director.inside",
            "required",
        );
    }

    /// Missing required keys of a table are reported at the table's header.
    #[test]
    fn missing_required_keys() {
        let text = with_director(&format!(
            "{ONE_REAL}[[real]]\nweight = 2\n[[virtual]]\nbind = [\"a\"]\n[[virtual.port]]\nprotocol = \"udp\"\n"
        ));
        assert_problem(&text, 7, "real[1].name", "required");
        assert_problem(&text, 7, "real[1].address", "required");
        assert_problem(&text, 9, "virtual[0].name", "required");
        assert_problem(&text, 9, "virtual[0].address", "required");
        assert_problem(&text, 11, "virtual[0].port[0].port", "required");
    }

    /// Duplicate real server names are refused at the second one.
    #[test]
    fn duplicate_real_name() {
        let text = with_director(&format!(
            "{ONE_REAL}[[real]]\nname = \"a\"\naddress = \"10.0.0.2\"\n"
        ));
        assert_problem(&text, 8, "real[1].name", "already the name of real[0]");
    }

    /// Duplicate virtual machine names are refused at the second one.
    #[test]
    fn duplicate_virtual_name() {
        let v = |addr: &str| {
            format!(
                "[[virtual]]\nname = \"v\"\naddress = \"{addr}\"\nbind = [\"a\"]\n[[virtual.port]]\nport = 80\n"
            )
        };
        let text = with_director(&format!("{ONE_REAL}{}{}", v("192.0.2.1"), v("192.0.2.2")));
        assert_problem(
            &text,
            14,
            "virtual[1].name",
            "already the name of virtual[0]",
        );
    }

    /// Two virtual machines on one address are refused.
    #[test]
    fn duplicate_virtual_address() {
        let v = |name: &str| {
            format!(
                "[[virtual]]\nname = \"{name}\"\naddress = \"192.0.2.1\"\nbind = [\"a\"]\n[[virtual.port]]\nport = 80\n"
            )
        };
        let text = with_director(&format!("{ONE_REAL}{}{}", v("v1"), v("v2")));
        assert_problem(
            &text,
            15,
            "virtual[1].address",
            "already the address of virtual[0]",
        );
    }

    /// The same (protocol, port) twice on one virtual machine is refused; the same port with another protocol is not.
    #[test]
    fn duplicate_virtual_port() {
        let text = with_director(&format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\nbind = [\"a\"]\n\
             [[virtual.port]]\nport = 53\n[[virtual.port]]\nport = 53\nprotocol = \"udp\"\n[[virtual.port]]\nport = 53\n"
        ));
        let all = problems(&text);
        assert_eq!(all.len(), 1, "{all:?}");
        assert_problem(
            &text,
            17,
            "virtual[0].port[2].port",
            "192.0.2.1:53/tcp is already defined by virtual[0].port[0]",
        );
    }

    /// A bind entry naming an undefined real server is refused at that entry.
    #[test]
    fn bind_undefined_real() {
        let text = with_director(&format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\n[[virtual.port]]\nport = 80\nbind = [\"a\", \"zz:80\"]\n"
        ));
        let all = problems(&text);
        assert_eq!((all[0].line, all[0].column), (12, 14));
        assert_problem(
            &text,
            12,
            "virtual[0].port[0].bind[1]",
            "\"zz\" is not a defined real server",
        );
    }

    /// Malformed bind entries are refused.
    #[test]
    fn bad_bind_syntax() {
        for entry in ["a:", "a:0", "a:70000", ":80", "a b", "a:x"] {
            let text = with_director(&format!(
                "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\nbind = [\"{entry}\"]\n[[virtual.port]]\nport = 80\n"
            ));
            assert_problem(&text, 10, "virtual[0].bind[0]", "");
        }
    }

    /// "REAL:PORT" where the real server stands for another fixed port is refused.
    #[test]
    fn bind_conflicts_with_fixed_port() {
        let text = with_director(
            "[[real]]\nname = \"a\"\naddress = \"10.0.0.1\"\nport = 8001\n\
             [[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\nbind = [\"a:8002\"]\n[[virtual.port]]\nport = 80\n",
        );
        assert_problem(&text, 11, "virtual[0].bind[0]", "stands for port 8001 only");
    }

    /// The same real port twice in one bind list is refused, also when written two ways.
    #[test]
    fn duplicate_bind_target() {
        let text = with_director(&format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\n[[virtual.port]]\nport = 80\nbind = [\"a\", \"a:80\"]\n"
        ));
        assert_problem(&text, 12, "virtual[0].port[0].bind[1]", "a second time");
        let text = with_director(&format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\n[[virtual.port]]\nport = 80\nbind = [\"a:80\", \"a:81\"]\n"
        ));
        assert!(parse(&text).is_ok());
    }

    /// A port with no bind at either level and no binder is refused; a binder makes it acceptable.
    #[test]
    fn port_without_binding() {
        let body = format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\n[[virtual.port]]\nport = 80\n"
        );
        assert_problem(
            &with_director(&body),
            10,
            "virtual[0].port[0].bind",
            "no binding",
        );
        let body = body.replace(
            "address = \"192.0.2.1\"\n",
            "address = \"192.0.2.1\"\nbinder = \"port-offset\"\n",
        );
        assert!(parse(&with_director(&body)).is_ok());
    }

    /// A virtual machine without ports is refused.
    #[test]
    fn virtual_without_ports() {
        let text = with_director(&format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\nbind = [\"a\"]\n"
        ));
        assert_problem(&text, 7, "virtual[0].port", "at least one");
    }

    /// A virtual address that is a real server's address is refused.
    #[test]
    fn virtual_address_is_real_address() {
        let text = with_director(&format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"10.0.0.1\"\nbind = [\"a\"]\n[[virtual.port]]\nport = 80\n"
        ));
        assert_problem(
            &text,
            9,
            "virtual[0].address",
            "address of real server \"a\"",
        );
    }

    /// A backup naming an undefined real server is refused at the backup key.
    #[test]
    fn backup_undefined() {
        let text = with_director(&format!("{ONE_REAL}backup = \"host-z\"\n"));
        assert_problem(
            &text,
            7,
            "real[0].backup",
            "\"host-z\" is not a defined real server",
        );
        assert_eq!(
            problems(&text)[0].to_string(),
            "test.toml:7:10: real[0].backup: \"host-z\" is not a defined real server"
        );
    }

    /// A real server that is its own backup is refused.
    #[test]
    fn backup_self() {
        let text = with_director(&format!("{ONE_REAL}backup = \"a\"\n"));
        assert_problem(&text, 7, "real[0].backup", "names itself");
    }

    /// A backup cycle is refused once, at its first member; a chain is accepted.
    #[test]
    fn backup_cycle() {
        let real = |name: &str, addr: u8, backup: &str| {
            format!(
                "[[real]]\nname = \"{name}\"\naddress = \"10.0.0.{addr}\"\nbackup = \"{backup}\"\n"
            )
        };
        let text = with_director(&format!(
            "{}{}{}",
            real("a", 1, "b"),
            real("b", 2, "c"),
            real("c", 3, "b")
        ));
        let all = problems(&text);
        assert_eq!(all.len(), 1, "{all:?}");
        assert_problem(&text, 11, "real[1].backup", "backup cycle: b -> c -> b");
        let text = with_director(&format!("{}{}", real("a", 1, "b"), real("b", 2, "a")));
        assert_problem(&text, 7, "real[0].backup", "a -> b -> a");
        let chain = with_director(&format!(
            "{}{}{ONE_REAL}",
            real("c", 3, "b"),
            real("b", 2, "a")
        ));
        assert!(parse(&chain).is_ok(), "{:?}", parse(&chain));
    }

    /// Bad addresses, ports, durations, MACs, sizes and ranges are each refused with their key.
    #[test]
    fn bad_values() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "address = \"10.0.0.300\"",
                "real[0].address",
                "not an IPv4 or IPv6 address",
            ),
            (
                "address = \"255.255.255.255\"",
                "real[0].address",
                "cannot be a host address",
            ),
            ("port = 0", "real[0].port", "not a port number"),
            ("port = 65536", "real[0].port", "not a port number"),
            ("weight = -1", "real[0].weight", "out of range"),
            (
                "failure_threshold = 0",
                "real[0].failure_threshold",
                "out of range",
            ),
            (
                "retry_after = \"soon\"",
                "real[0].retry_after",
                "not a duration",
            ),
            (
                "retry_after = \"0s\"",
                "real[0].retry_after",
                "longer than zero",
            ),
            (
                "mac = \"02:00:00:00:00\"",
                "real[0].mac",
                "not a MAC address",
            ),
            (
                "mac = \"02:00:00:00:00:zz\"",
                "real[0].mac",
                "not a MAC address",
            ),
            (
                "check = { kind = \"icmp\", port = 1 }",
                "real[0].check.kind",
                "not a check kind",
            ),
            (
                "check = { kind = \"tcp\" }",
                "real[0].check.port",
                "required",
            ),
            (
                "check = { kind = \"tcp\", port = 1, path = \"/\" }",
                "real[0].check.path",
                "only applies",
            ),
            (
                "check = { kind = \"http\", port = 1, expect = 99 }",
                "real[0].check.expect",
                "out of range",
            ),
            (
                "check = { kind = \"http\", port = 1, rise = 0 }",
                "real[0].check.rise",
                "out of range",
            ),
            ("name = \"a:b\"", "real[0].name", "not a name"),
        ];
        for (line, key, needle) in cases {
            // Replace a default line or add one, always on line 7 or in place of name/address lines.
            let text = if line.starts_with("address") {
                with_director(&format!("[[real]]\nname = \"a\"\n{line}\n"))
            } else if line.starts_with("name") {
                with_director(&format!("[[real]]\n{line}\naddress = \"10.0.0.1\"\n"))
            } else {
                with_director(&format!("{ONE_REAL}{line}\n"))
            };
            let expected_line = text.lines().position(|l| l == *line).unwrap() + 1;
            assert_problem(&text, expected_line, key, needle);
        }
        let director: &[(&str, &str, &str)] = &[
            (
                "listen = \"localhost\"",
                "director.listen",
                "not an address:port",
            ),
            (
                "max_connections = 0",
                "director.max_connections",
                "out of range",
            ),
            (
                "plugin_memory = \"16MB\"",
                "director.plugin_memory",
                "not a size",
            ),
            (
                "plugin_memory = \"1KiB\"",
                "director.plugin_memory",
                "at least 64KiB",
            ),
            (
                "plugin_deadline = \"0ms\"",
                "director.plugin_deadline",
                "longer than zero",
            ),
            ("admin_token = \"\"", "director.admin_token", "empty"),
            (
                "send_threads = \"all\"",
                "director.send_threads",
                "use \"none\", \"outside\", \"inside\" or \"both\"",
            ),
        ];
        for (line, key, needle) in director {
            assert_problem(&format!("{DIRECTOR}{line}\n"), 4, key, needle);
        }
        assert_problem(
            &format!("{DIRECTOR}[timeouts]\nsyn = \"10 parsecs\"\n"),
            5,
            "timeouts.syn",
            "not a duration",
        );
        assert_problem(
            &format!("{DIRECTOR}[timeouts]\nudp = \"0s\"\n"),
            5,
            "timeouts.udp",
            "longer than zero",
        );
    }

    /// Bad virtual values: address, port, protocol, announce, policy name.
    #[test]
    fn bad_virtual_values() {
        let text = with_director(&format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2\"\nbind = [\"a\"]\nannounce = \"bgp\"\npolicy = \"../evil\"\n\
             [[virtual.port]]\nport = 0\nprotocol = \"sctp\"\n"
        ));
        assert_problem(
            &text,
            9,
            "virtual[0].address",
            "not an IPv4 or IPv6 address",
        );
        assert_problem(&text, 11, "virtual[0].announce", "not an announce mode");
        assert_problem(&text, 12, "virtual[0].policy", "not a policy name");
        assert_problem(&text, 14, "virtual[0].port[0].port", "not a port number");
        assert_problem(&text, 15, "virtual[0].port[0].protocol", "not a protocol");
    }

    /// IPv6 addresses are accepted for virtual machines and real servers; a binding or a backup that
    /// mixes families, and addresses no host can have, are refused naming both ends.
    #[test]
    fn ipv6_addresses_and_families() {
        let ok = with_director(
            "[[real]]\nname = \"a6\"\naddress = \"2001:db8:1::1\"\nbackup = \"b6\"\n\
             [[real]]\nname = \"b6\"\naddress = \"2001:db8:1::2\"\n\
             [[virtual]]\nname = \"v6\"\naddress = \"2001:db8:f::1\"\nbind = [\"a6\"]\n[[virtual.port]]\nport = 80\n",
        );
        let config = Config::parse(&ok, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.virtuals[0].address,
            "2001:db8:f::1".parse::<IpAddr>().unwrap()
        );

        let mixed = with_director(
            "[[real]]\nname = \"a\"\naddress = \"10.0.0.1\"\nbackup = \"b6\"\n\
             [[real]]\nname = \"b6\"\naddress = \"2001:db8:1::2\"\n\
             [[virtual]]\nname = \"v6\"\naddress = \"2001:db8:f::1\"\nbind = [\"a\"]\n[[virtual.port]]\nport = 80\n",
        );
        assert_problem(
            &mixed,
            7,
            "real[0].backup",
            "must be of the same address family",
        );
        assert_problem(
            &mixed,
            14,
            "virtual[0].bind[0]",
            "real server \"a\" (10.0.0.1) is IPv4, virtual address 2001:db8:f::1 is IPv6",
        );
        for bad in ["ff02::1", "::", "::ffff:10.0.0.1"] {
            let text = with_director(&format!("[[real]]\nname = \"a\"\naddress = \"{bad}\"\n"));
            assert_problem(&text, 6, "real[0].address", "cannot be a host address");
        }
    }

    /// Several problems in one file are all reported, in file order.
    #[test]
    fn all_problems_reported() {
        let text = r#"[director]
outside = "eth0"
inside = "eth1"
max_connections = 0
[[real]]
name = "a"
address = "10.0.0.1"
backup = "nobody"
[[real]]
name = "a"
address = "10.0.0.999"
[[virtual]]
name = "v"
address = "192.0.2.1"
[[virtual.port]]
port = 80
bind = ["ghost"]
"#;
        let all = problems(text);
        let found: Vec<(usize, &str)> = all.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            found,
            [
                (4, "director.max_connections"),
                (8, "real[0].backup"),
                (10, "real[1].name"),
                (11, "real[1].address"),
                (17, "virtual[0].port[0].bind[0]"),
            ]
        );
        let shown = ConfigError { problems: all }.to_string();
        assert_eq!(shown.lines().count(), 5);
        assert!(
            shown.starts_with("test.toml:4:19: director.max_connections: "),
            "{shown}"
        );
    }

    /// A port's own policy drops the virtual machine's arguments; no override inherits them.
    #[test]
    fn policy_inheritance() {
        let text = with_director(&format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\nbind = [\"a\"]\npolicy = \"maglev\"\npolicy_args = {{ size = \"7\" }}\n\
             [[virtual.port]]\nport = 80\n[[virtual.port]]\nport = 81\npolicy = \"fastest\"\n"
        ));
        let c = parse(&text).unwrap();
        let v = &c.virtuals[0];
        let (p0, a0) = v.effective_policy(&v.ports[0]);
        assert_eq!((p0, a0.len()), ("maglev", 1));
        let (p1, a1) = v.effective_policy(&v.ports[1]);
        assert_eq!((p1, a1.len()), ("fastest", 0));
    }

    /// Port resolution of the three binding modes, and the fixed-port conflict.
    #[test]
    fn resolve_port_modes() {
        assert_eq!(resolve_port(None, None, 80), Some(80));
        assert_eq!(resolve_port(Some(8003), None, 80), Some(8003));
        assert_eq!(resolve_port(None, Some(8001), 80), Some(8001));
        assert_eq!(resolve_port(Some(8001), Some(8001), 80), Some(8001));
        assert_eq!(resolve_port(Some(8001), Some(8002), 80), None);
    }

    /// Sizes with and without suffixes.
    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("1.5MiB"), None);
    }

    /// The bundled FIG. 3 example is valid.
    #[test]
    fn offload_keys() {
        let tail = format!(
            "{ONE_REAL}[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\n[[virtual.port]]\nport = 80\nbind = [\"a\"]\n"
        );
        let with =
            |keys: &str| format!("[director]\noutside = \"o\"\ninside = \"i\"\n{keys}\n{tail}");
        let d = parse(&with("")).unwrap().director;
        assert_eq!(
            (d.offload, d.offload_connections),
            (Offload::None, DEFAULT_OFFLOAD_CONNECTIONS)
        );
        let d = parse(&with("offload = \"xdp\"")).unwrap().director;
        assert_eq!(d.offload, Offload::Xdp(XdpMode::Auto));
        let d = parse(&with(
            "offload = \"xdp\"\nxdp_mode = \"generic\"\noffload_connections = 1000",
        ))
        .unwrap()
        .director;
        assert_eq!(
            (d.offload, d.offload_connections),
            (Offload::Xdp(XdpMode::Generic), 1000)
        );
        assert_problem(
            &with("offload = \"dpdk\""),
            4,
            "director.offload",
            "\"none\" or \"xdp\"",
        );
        assert_problem(
            &with("offload = \"xdp\"\nxdp_mode = \"hw\""),
            5,
            "director.xdp_mode",
            "\"auto\", \"native\" or \"generic\"",
        );
        assert_problem(
            &with("xdp_mode = \"native\""),
            4,
            "director.xdp_mode",
            "only with offload = \"xdp\"",
        );
        assert_problem(
            &with("offload = \"xdp\"\noffload_connections = 0"),
            5,
            "director.offload_connections",
            "out of range",
        );
    }

    #[test]
    fn fig3_example_loads() {
        let c = Config::parse(
            include_str!("../../examples/fig3.toml"),
            Path::new("examples/fig3.toml"),
        )
        .unwrap();
        assert_eq!((c.virtuals.len(), c.reals.len()), (4, 6));
        assert_eq!(
            (c.director.outside.as_str(), c.director.inside.as_str()),
            ("vipd-out", "vipd-in")
        );
    }
    /// A config file in a folder with a sync key beside it; returns the folder (kept alive) and the file.
    fn sync_files(sync: &str, key: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sync.key"), key).unwrap();
        let file = dir.path().join("vipd.toml");
        std::fs::write(&file, format!("{DIRECTOR}{ONE_REAL}{sync}")).unwrap();
        (dir, file)
    }

    /// `[cluster]`: the route table and drain time; the kernel's own tables are refused.
    #[test]
    fn cluster_table() {
        assert_eq!(parse(&with_director(ONE_REAL)).unwrap().cluster, None);
        let c = parse(&with_director(&format!(
            "{ONE_REAL}[cluster]\nroute_table = 100\ndrain_time = \"5s\"\n"
        )))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!((c.route_table, c.drain_time), (100, Duration::from_secs(5)));
        let c = parse(&with_director(&format!(
            "{ONE_REAL}[cluster]\nroute_table = 1000\n"
        )))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.drain_time, DEFAULT_DRAIN_TIME);
        assert_eq!(c.consistent_policies, ["maglev"]);
        let c = parse(&with_director(&format!(
            "{ONE_REAL}[cluster]\nroute_table = 1000\nconsistent_policies = [\"maglev\", \"my-hash\"]\n"
        )))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.consistent_policies, ["maglev", "my-hash"]);
        for (table, needle) in [
            ("254", "main"),
            ("0", "cannot be used"),
            ("-1", "cannot be used"),
        ] {
            let e = parse(&with_director(&format!(
                "{ONE_REAL}[cluster]\nroute_table = {table}\n"
            )))
            .expect_err("refused");
            assert!(
                e.problems.iter().any(|p| p.key == "cluster.route_table"
                    && p.line == 8
                    && p.message.contains(needle)),
                "{e}"
            );
        }
        let e = parse(&with_director(&format!("{ONE_REAL}[cluster]\n"))).expect_err("refused");
        assert!(e.to_string().contains("cluster.route_table"), "{e}");
    }

    /// Without `[sync]` there is no sync; with it, every key is read, the key file relative to the config.
    #[test]
    fn sync_table() {
        assert_eq!(parse(&with_director(ONE_REAL)).unwrap().sync, None);
        let (dir, file) = sync_files(
            "[sync]\nlisten = \"192.0.2.10:8848\"\npeers = [\"192.0.2.11:8848\", \"224.0.0.81:8848\"]\n\
             key_file = \"sync.key\"\nrole = \"active\"\nmax_datagram = 1200\ngarp_repeat = 3\ngarp_interval = \"50ms\"\nresync_timeout = \"2s\"\n",
            &[7; 32],
        );
        let sync = Config::load(&file).unwrap().sync.unwrap();
        assert_eq!(sync.listen, "192.0.2.10:8848".parse().unwrap());
        assert_eq!(
            sync.peers,
            [
                "192.0.2.11:8848".parse().unwrap(),
                "224.0.0.81:8848".parse().unwrap()
            ]
        );
        assert_eq!(sync.key_file, dir.path().join("sync.key"));
        assert_eq!(sync.key, SyncKey(vec![7; 32]));
        assert_eq!((sync.role, sync.max_datagram), (Role::Active, 1200));
        assert_eq!(
            (sync.garp_repeat, sync.garp_interval, sync.resync_timeout),
            (3, Duration::from_millis(50), Duration::from_secs(2))
        );
        assert!(
            !format!("{sync:?}").contains("7, 7"),
            "the key is never printed"
        );
        // Defaults, and IPv6.
        let (_dir, file) = sync_files(
            "[sync]\nlisten = \"[2001:db8::10]:8848\"\npeers = [\"[2001:db8::11]:8848\"]\nkey_file = \"sync.key\"\n",
            &[1; 16],
        );
        let sync = Config::load(&file).unwrap().sync.unwrap();
        assert_eq!(
            (sync.role, sync.max_datagram),
            (Role::Standby, DEFAULT_SYNC_MAX_DATAGRAM)
        );
        assert_eq!(
            (sync.garp_repeat, sync.garp_interval, sync.resync_timeout),
            (
                DEFAULT_GARP_REPEAT,
                DEFAULT_GARP_INTERVAL,
                DEFAULT_RESYNC_TIMEOUT
            )
        );
    }

    /// Every `[sync]` mistake is named with its line and key; a short or missing key file names the file.
    #[test]
    fn sync_problems() {
        let check = |sync: &str, key: &[u8], line: usize, at: &str, needle: &str| {
            let (_dir, file) = sync_files(sync, key);
            let all = Config::load(&file).expect_err("refused").problems;
            assert!(
                all.iter()
                    .any(|p| p.line == line && p.key == at && p.message.contains(needle)),
                "no problem at line {line} key {at} containing {needle:?}; got:\n{}",
                ConfigError {
                    problems: all.clone()
                }
            );
        };
        let good = "listen = \"192.0.2.10:8848\"\npeers = [\"192.0.2.11:8848\"]\nkey_file = \"sync.key\"\n";
        // Lines: 1-3 director, 4-6 real, 7 [sync], 8 listen, 9 peers, 10 key_file, 11 the extra line.
        check(
            &format!("[sync]\n{good}"),
            b"short",
            10,
            "sync.key_file",
            "holds 5 bytes",
        );
        check(
            &format!("[sync]\n{good}"),
            b"short",
            10,
            "sync.key_file",
            "sync.key",
        );
        check(
            "[sync]\nlisten = \"192.0.2.10:8848\"\npeers = [\"192.0.2.11:8848\"]\nkey_file = \"nowhere.key\"\n",
            &[0; 16],
            10,
            "sync.key_file",
            "cannot read",
        );
        check(
            "[sync]\nlisten = \"192.0.2.10:8848\"\npeers = [\"192.0.2.11:8848\"]\n",
            &[0; 16],
            7,
            "sync.key_file",
            "required",
        );
        check(
            "[sync]\nlisten = \"192.0.2.10\"\npeers = [\"192.0.2.11:8848\"]\nkey_file = \"sync.key\"\n",
            &[0; 16],
            8,
            "sync.listen",
            "not an address:port",
        );
        check(
            "[sync]\nlisten = \"192.0.2.10:8848\"\npeers = []\nkey_file = \"sync.key\"\n",
            &[0; 16],
            9,
            "sync.peers",
            "at least one",
        );
        check(
            "[sync]\nlisten = \"192.0.2.10:8848\"\npeers = [\"[2001:db8::1]:8848\"]\nkey_file = \"sync.key\"\n",
            &[0; 16],
            9,
            "sync.peers[0]",
            "but listen is IPv4",
        );
        check(
            "[sync]\nlisten = \"192.0.2.10:8848\"\npeers = [\"192.0.2.10:8848\"]\nkey_file = \"sync.key\"\n",
            &[0; 16],
            9,
            "sync.peers[0]",
            "own listen address",
        );
        check(
            "[sync]\nlisten = \"192.0.2.10:8848\"\nkey_file = \"sync.key\"\n",
            &[0; 16],
            7,
            "sync.peers",
            "required",
        );
        check(
            &format!("[sync]\n{good}role = \"master\"\n"),
            &[0; 16],
            11,
            "sync.role",
            "not a role",
        );
        check(
            &format!("[sync]\n{good}garp_repeat = 0\n"),
            &[0; 16],
            11,
            "sync.garp_repeat",
            "out of range",
        );
        check(
            &format!("[sync]\n{good}resync_timeout = \"soon\"\n"),
            &[0; 16],
            11,
            "sync.resync_timeout",
            "",
        );
        check(
            &format!("[sync]\n{good}max_datagram = 100\n"),
            &[0; 16],
            11,
            "sync.max_datagram",
            "out of range",
        );
        check(
            &format!("[sync]\n{good}colour = 1\n"),
            &[0; 16],
            11,
            "sync.colour",
            "unknown field",
        );
    }
}

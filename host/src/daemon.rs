//! `vipd run`: the live director. Wires the config, the interface checks, the [`Director`] and the capture
//! loop together, and handles signals: `SIGHUP` reloads the config (validated first; on error the running
//! config stays), `SIGUSR1` logs one `vipd stats` line (connections, drops by reason, capture drops), and
//! `SIGTERM` and `SIGINT` stop cleanly, logging the same figures in the final `vipd stopped` line.
//!
//! Threads: the data path (this module's caller's thread) runs [`DataPath::run`] with the director; a signal
//! thread loads and validates a new config off the packet path and hands the result over through a channel
//! that the data path looks at between batches; the [`health`] checker threads send their verdicts through
//! another. Between batches the data path also logs the director's real server state changes. The admin
//! thread ([`crate::admin`]) serves `/metrics` and the admin API on `[director] listen`; its operator commands
//! reach the data path over a third channel.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use strum::VariantArray;

use crate::Interface;
use crate::admin::{self, Admin};
use crate::announce::Routes;
use crate::assemble::{Assembly, Plugins};
use crate::capture::{Action, CaptureConfig, CaptureStats, Control, DataPath, Handler};
use crate::config::{Config, DirectorConfig};
use crate::director::{Director, DropReason, Layer2, StateChange, Verdict};
use crate::health::{self, Checker};
use crate::ifcheck::{self, Offloads};
use crate::policy::ServerState;
use crate::privileges::{self, Capability};
use crate::service::Service;
use crate::shadow::{ShadowSet, Shadows};

/// How `vipd run` was asked to start.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Turn GRO/GSO/TSO/checksum offloads off on both interfaces instead of refusing to start.
    pub fix_offloads: bool,
}

/// Runs the director until `SIGTERM` or `SIGINT`.
pub fn run(options: &RunOptions) -> Result<()> {
    let first = Config::load(&options.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plugins = Plugins::start(&first, None)?;
    if let Some(p) = &plugins {
        // The data path never makes a plugin instance: after a trap, or for a new version, one is made
        // and warmed up on a thread of its own.
        p.host().prepare_off_path()?;
    }
    let loaded = Assembly::new(&options.config, first, plugins.as_ref())?;
    let config = &loaded.config;
    if options.fix_offloads {
        privileges::require(
            Capability::NetAdmin,
            "to turn interface offloads off (--fix-offloads)",
        )?;
    }
    let offloads = if options.fix_offloads {
        Offloads::Disable
    } else {
        Offloads::Refuse
    };
    let outside =
        ifcheck::check(&config.director.outside, offloads).context("outside interface")?;
    let inside = ifcheck::check(&config.director.inside, offloads).context("inside interface")?;
    for sysctl in ifcheck::forwarding_enabled() {
        tracing::warn!(
            "{sysctl}=1 in this namespace: the kernel will forward a second copy of every packet; \
             set it to 0 (sysctl -w {sysctl}=0)"
        );
    }
    let l2 = Layer2 {
        outside_mac: outside.mac,
        inside_mac: inside.mac,
        inside_ip: inside.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    privileges::require(
        Capability::NetRaw,
        &format!(
            "to open packet sockets on {} and {}",
            outside.name, inside.name
        ),
    )?;
    let epoch = Instant::now();
    let mut datapath = DataPath::open(
        (&outside.name, outside.mtu),
        (&inside.name, inside.mtu),
        CaptureConfig {
            send_threads: loaded.config.director.send_threads,
            qdisc_bypass: loaded.config.director.qdisc_bypass,
            ..CaptureConfig::default()
        },
        epoch,
    )?;
    tracing::info!(
        config = %options.config.display(),
        virtual_machines = loaded.bindings.virtuals.len(),
        ports = loaded.bindings.ports.len(),
        real_servers = loaded.bindings.reals.len(),
        max_connections = loaded.config.director.max_connections,
        "vipd serving"
    );
    log_policies(&loaded);
    for warning in loaded.cluster_warnings() {
        tracing::warn!("{warning}");
    }
    let config = loaded.config.clone();
    let mut loaded = loaded;
    let first_shadows = loaded.take_shadows(0);
    let mut director = loaded.director(l2);
    if let crate::config::Offload::Xdp(mode) = config.director.offload {
        for (cap, why) in [
            (
                Capability::Bpf,
                "to load the XDP program (offload = \"xdp\")",
            ),
            (
                Capability::NetAdmin,
                "to attach the XDP program (offload = \"xdp\")",
            ),
        ] {
            privileges::require(cap, why)?;
        }
        let xdp = crate::offload::Xdp::start(
            &crate::offload::Interfaces {
                outside: &outside.name,
                inside: &inside.name,
                outside_mac: outside.mac,
                inside_mac: inside.mac,
            },
            mode,
            config.director.offload_connections,
        )
        .context("offload = \"xdp\" cannot start; set offload = \"none\" to run without it")?;
        tracing::info!(
            mode = xdp.mode().as_str(),
            connections = config.director.offload_connections,
            "offload: established connections translated by XDP ({} mode) on {} and {}",
            xdp.mode().as_str(),
            outside.name,
            inside.name
        );
        director.set_offload(Box::new(xdp));
    }
    // Shadow policies: their own thread, fed by the data path through a bounded queue.
    let (shadows, shadow_tx) = Shadows::start().context("starting the shadow policy thread")?;
    director.set_shadow(shadow_tx);
    shadows.install(ShadowSet {
        generation: director.shadow_generation(),
        ..first_shadows
    });

    // Connection sync: its own thread, fed by the data path through a bounded queue, and feeding it back.
    let sync = match &config.sync {
        Some(sync) => {
            let (view, tx, inbox) =
                crate::sync::thread::start(sync).context("starting connection sync ([sync])")?;
            view.stats
                .cluster
                .store(config.cluster.is_some(), Ordering::Relaxed);
            director.set_sync(tx, inbox, sync.role);
            tracing::info!(
                listen = %sync.listen,
                peers = ?sync.peers,
                role = sync.role.as_str(),
                "connection sync"
            );
            Some(view)
        }
        None => None,
    };

    // Scale-out ([cluster]): the routed virtual addresses announced to BIRD through a kernel table.
    let cluster = match &config.cluster {
        Some(c) => {
            let routes = Routes::start(c.route_table)
                .context("announcing the virtual addresses ([cluster])")?;
            tracing::info!(
                route_table = c.route_table,
                device = crate::announce::DEVICE,
                "cluster: routes through {} in table {} once synced",
                crate::announce::DEVICE,
                c.route_table
            );
            Some(admin::Cluster {
                routes,
                drain_time: c.drain_time,
                wanted: Arc::new(std::sync::Mutex::new(routed(&config))),
                announcing: Arc::new(AtomicBool::new(false)),
                drain_until: Arc::new(std::sync::Mutex::new(None)),
            })
        }
        None => None,
    };

    let sync_stats = sync.as_ref().map(|v| Arc::clone(&v.stats));
    crate::metrics::install();
    let (admin_tx, admin_rx) = mpsc::channel::<admin::Command>();
    admin::spawn(
        config.director.listen,
        Admin {
            snapshot: director.published(),
            capture: Some(datapath.stats()),
            commands: admin_tx,
            waker: Some(datapath.waker()),
            token: config.director.admin_token.clone(),
            plugins: plugins.as_ref().map(|p| Arc::clone(p.dir())),
            shadow: Some(shadows.snapshot()),
            sync,
            cluster: cluster.clone(),
        },
    )?;
    tracing::info!(listen = %config.director.listen, "metrics and admin API");

    // Health check verdicts: checker threads -> channel -> the data path, between batches.
    let (health_tx, health_rx) = mpsc::channel::<health::Report>();
    let notify: health::Notify = {
        let tx = std::sync::Mutex::new(health_tx);
        let waker = datapath.waker();
        Arc::new(move |report| {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(report);
            }
            waker.wake();
        })
    };
    let checker = Checker::start(&config, Arc::clone(&notify))?;
    if !checker.is_empty() {
        tracing::info!(checked = checker.len(), "health checks running");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let serving = Arc::new(AtomicBool::new(false));
    if let Some(c) = &cluster {
        let watch = LinkWatch {
            cluster: c.clone(),
            synced: sync_stats.clone(),
            serving: Arc::clone(&serving),
            stop: Arc::clone(&stop),
            waker: datapath.waker(),
            links: [
                config.director.outside.clone(),
                config.director.inside.clone(),
            ],
        };
        std::thread::Builder::new()
            .name("vipd-links".into())
            .spawn(move || watch.run())?;
    }
    let report = Arc::new(AtomicBool::new(false));
    let capture_stats = datapath.stats();
    let (reload_tx, reload_rx) = mpsc::channel::<Assembly>();
    // Test hook (VIPD_TEST_HOOKS=1): SIGUSR2 stalls the data path, as a bug stuck in a batch would, so the
    // tests can see the systemd watchdog pings stop while the process lives.
    let stall = Arc::new(AtomicBool::new(false));
    let hooks = std::env::var_os("VIPD_TEST_HOOKS").is_some_and(|v| v == "1");
    let mut wanted = vec![SIGHUP, SIGINT, SIGTERM, SIGUSR1];
    if hooks {
        wanted.push(SIGUSR2);
    }
    let mut signals = Signals::new(wanted).context("installing signal handlers")?;
    let signal_handle = signals.handle();
    let waker = datapath.waker();
    let signal_thread = {
        let stop = Arc::clone(&stop);
        let report = Arc::clone(&report);
        let stall = Arc::clone(&stall);
        let path = options.config.clone();
        let started = config.director.clone();
        let mut checker = Some(checker);
        let plugins = plugins;
        let cluster = cluster.clone();
        std::thread::Builder::new().name("vipd-signals".into()).spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => match Assembly::load(&path, plugins.as_ref()) {
                        Ok(loaded) => {
                            crate::metrics::config_reloaded(true);
                            tracing::info!(config = %path.display(), "config reloaded; installing");
                            log_policies(&loaded);
                            warn_start_only(&started, &loaded.config.director);
                            // Old checks stop first; the new ones start after the config is queued, so
                            // the data path installs it before it sees their first verdicts.
                            drop(checker.take());
                            let config = loaded.config.clone();
                            if let Some(c) = &cluster {
                                if let Ok(mut w) = c.wanted.lock() {
                                    *w = routed(&config);
                                }
                                // Announcing already (not before start, during a drain or a link down).
                                if c.draining().is_none() && c.announcing.load(Ordering::Relaxed) {
                                    c.routes.announce(routed(&config));
                                }
                            }
                            if reload_tx.send(loaded).is_err() {
                                break;
                            }
                            waker.wake();
                            match Checker::start(&config, Arc::clone(&notify)) {
                                Ok(c) => checker = Some(c),
                                Err(e) => tracing::error!("health checks not restarted: {e:#}"),
                            }
                        }
                        Err(e) => {
                            crate::metrics::config_reloaded(false);
                            tracing::error!("config reload refused, the running config stays:\n{e:#}")
                        }
                    },
                    SIGUSR1 => report.store(true, Ordering::Relaxed),
                    SIGUSR2 => {
                        tracing::warn!("test hook: stalling the data path");
                        stall.store(true, Ordering::Relaxed);
                    }
                    _ => {
                        tracing::info!(signal, "stopping");
                        // Withdraw first: the routers stop sending flows here before the data path stops.
                        if let Some(c) = &cluster {
                            c.routes.withdraw();
                            tracing::info!("routes withdrawn");
                        }
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                waker.wake();
            }
        })?
    };

    let mut service = Service::from_env();
    let result = datapath.run(&mut director, &mut |director: &mut Director| {
        while stall.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        service.turn(Instant::now());
        if !serving.load(Ordering::Relaxed) {
            serving.store(true, Ordering::Relaxed);
        }
        while let Ok(mut loaded) = reload_rx.try_recv() {
            let set = loaded.take_shadows(0);
            loaded.install(director);
            shadows.install(ShadowSet {
                generation: director.shadow_generation(),
                ..set
            });
        }
        while let Ok(report) = health_rx.try_recv() {
            tracing::info!(
                real = %report.real,
                up = report.up,
                detail = %report.detail,
                "health check verdict"
            );
            if let Err(e) = director.set_check_result(&report.real, report.up, epoch.elapsed()) {
                tracing::debug!("health check verdict ignored: {e}");
            }
        }
        for change in director.drain_events() {
            log_state_change(&change);
            // The plugin host passes these on to plugins as server-state-changed.
        }
        if report.swap(false, Ordering::Relaxed) {
            log_stats(director, &capture_stats, "vipd stats");
        }
        while let Ok(command) = admin_rx.try_recv() {
            admin::apply(director, command, epoch.elapsed());
        }
        let drained = cluster.as_ref().is_some_and(|c| c.draining() == Some(0.0));
        if drained {
            tracing::info!("drained: drain_time over; stopping");
        }
        if stop.load(Ordering::Relaxed) || drained {
            service.stopping();
            Control::Stop
        } else {
            Control::Continue
        }
    });
    signal_handle.close();
    let _ = signal_thread.join();
    log_stats(&director, &capture_stats, "vipd stopped");
    result
}

/// `[cluster]`: when the routes are announced and withdrawn besides start, reload, drain and stop. They are
/// announced once the data path serves and the director is synced (flows the router moves here find their
/// connections), withdrawn while an interface is down or without carrier (and announced again when both
/// are back), and withdrawn for good when an interface goes away, which stops the daemon (its captures are
/// gone with it).
struct LinkWatch {
    cluster: admin::Cluster,
    synced: Option<Arc<crate::sync::SyncStats>>,
    serving: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    waker: crate::capture::Waker,
    links: [String; 2],
}

/// How often [`LinkWatch`] looks.
const LINK_POLL: Duration = Duration::from_millis(100);

impl LinkWatch {
    fn run(self) {
        let mut announced = false;
        loop {
            std::thread::sleep(LINK_POLL);
            if self.stop.load(Ordering::Relaxed) || self.cluster.draining().is_some() {
                return;
            }
            let states = self.links.clone().map(|l| crate::announce::link_state(&l));
            if let Some(gone) = self.links.iter().zip(&states).find(|(_, s)| s.is_none()) {
                tracing::error!(
                    interface = %gone.0,
                    "interface gone: withdrawing the routes and stopping"
                );
                self.cluster.routes.withdraw();
                self.stop.store(true, Ordering::Relaxed);
                self.waker.wake();
                return;
            }
            let links_up = states.iter().all(|s| *s == Some(true));
            let ready = self.serving.load(Ordering::Relaxed)
                && self
                    .synced
                    .as_ref()
                    .is_none_or(|s| s.synced.load(Ordering::Relaxed));
            match (announced, ready && links_up) {
                (false, true) => {
                    let addresses = self
                        .cluster
                        .wanted
                        .lock()
                        .map(|w| w.clone())
                        .unwrap_or_default();
                    tracing::info!(addresses = ?addresses, "serving and synced: announcing the routed virtual addresses");
                    self.cluster.routes.announce(addresses);
                    self.cluster.announcing.store(true, Ordering::Relaxed);
                    announced = true;
                }
                (true, false) => {
                    tracing::warn!(
                        links = ?self.links,
                        "an interface is down or has no carrier: routes withdrawn until both are up"
                    );
                    self.cluster.announcing.store(false, Ordering::Relaxed);
                    self.cluster.routes.withdraw();
                    announced = false;
                }
                _ => {}
            }
        }
    }
}

/// The virtual addresses routed to the director (`announce = "none"`): the ones `[cluster]` announces.
/// Those answered by ARP are on-link for the routers and need no route.
fn routed(config: &Config) -> Vec<std::net::IpAddr> {
    config
        .virtuals
        .iter()
        .filter(|v| v.announce == crate::config::Announce::None)
        .map(|v| v.address)
        .collect()
}

/// Logs which policy serves each virtual port (at start and on each reload).
fn log_policies(assembly: &Assembly) {
    for used in &assembly.policies {
        tracing::info!("{used}");
    }
}

/// Logs each `[director]` key that changed in a reloaded config but only takes effect at the next start.
fn warn_start_only(running: &DirectorConfig, new: &DirectorConfig) {
    for key in start_only_changes(running, new) {
        tracing::warn!(
            key = %format_args!("director.{key}"),
            "changed in the reloaded config; it takes effect at the next start (the running value stays)"
        );
    }
}

/// The `[director]` keys that differ between `running` and `new` and are read only at start.
fn start_only_changes(running: &DirectorConfig, new: &DirectorConfig) -> Vec<&'static str> {
    [
        ("outside", running.outside != new.outside),
        ("inside", running.inside != new.inside),
        ("listen", running.listen != new.listen),
        (
            "max_connections",
            running.max_connections != new.max_connections,
        ),
        ("plugins", running.plugins != new.plugins),
        ("admin_token", running.admin_token != new.admin_token),
        ("plugin_memory", running.plugin_memory != new.plugin_memory),
        (
            "plugin_deadline",
            running.plugin_deadline != new.plugin_deadline,
        ),
        ("send_threads", running.send_threads != new.send_threads),
        ("offload", running.offload != new.offload),
        (
            "offload_connections",
            running.offload_connections != new.offload_connections,
        ),
        ("qdisc_bypass", running.qdisc_bypass != new.qdisc_bypass),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// Logs the director's and the capture's counters on one line (`SIGUSR1`, and at exit); off the packet
/// path. `drops` lists the non-zero drop reasons as `reason:count,...`.
fn log_stats(director: &Director, capture: &CaptureStats, message: &str) {
    let counters = director.counters();
    let mut drops = String::new();
    for &reason in DropReason::VARIANTS {
        let n = counters.dropped(reason);
        if n > 0 {
            if !drops.is_empty() {
                drops.push(',');
            }
            drops.push_str(&format!("{}:{n}", reason.as_str()));
        }
    }
    if drops.is_empty() {
        drops.push('-');
    }
    let get = |iface: Interface,
               f: fn(&crate::capture::PortStats) -> &std::sync::atomic::AtomicU64| {
        f(capture.port(iface)).load(Ordering::Relaxed)
    };
    tracing::info!(
        connections = director.table().len(),
        connections_created = counters.connections_created,
        expired = counters.expired,
        syn_duplicates = counters.syn_duplicates,
        syn_cookies_sent = counters.syn_cookies_sent,
        syn_cookies_accepted = counters.syn_cookies_accepted,
        forwarded_inside = counters.forwarded.inside,
        forwarded_outside = counters.forwarded.outside,
        drops = %drops,
        pcap_drop_outside = get(Interface::Outside, |p| &p.pcap_drop),
        pcap_drop_inside = get(Interface::Inside, |p| &p.pcap_drop),
        pcap_ifdrop_outside = get(Interface::Outside, |p| &p.pcap_ifdrop),
        pcap_ifdrop_inside = get(Interface::Inside, |p| &p.pcap_ifdrop),
        send_errors_outside = get(Interface::Outside, |p| &p.send_errors),
        send_errors_inside = get(Interface::Inside, |p| &p.send_errors),
        send_shed_outside = get(Interface::Outside, |p| &p.send_shed),
        send_shed_inside = get(Interface::Inside, |p| &p.send_shed),
        oversize_outside = get(Interface::Outside, |p| &p.oversize),
        oversize_inside = get(Interface::Inside, |p| &p.oversize),
        "{message}"
    );
}

/// Logs one real server state change with its reason (a failure as a warning).
fn log_state_change(change: &StateChange) {
    if change.to == ServerState::Failed {
        tracing::warn!(
            real = %change.real,
            from = %change.from.as_str(),
            to = %change.to.as_str(),
            reason = %change.reason.as_str(),
            ditched = change.ditched,
            "real server state changed"
        );
    } else {
        tracing::info!(
            real = %change.real,
            from = %change.from.as_str(),
            to = %change.to.as_str(),
            reason = %change.reason.as_str(),
            ditched = change.ditched,
            "real server state changed"
        );
    }
}

impl Handler for Director {
    fn handle(&mut self, from: Interface, frame: &mut [u8], now: Duration) -> Action {
        match Director::handle(self, from, frame, now) {
            Verdict::Forward(to) => Action::Send(to),
            Verdict::Reply(to) => Action::SendReply(to),
            Verdict::ForwardAndReply { forward, reply } => Action::SendBoth { forward, reply },
            Verdict::Drop(_) | Verdict::Consumed => Action::Done,
        }
    }

    fn wakeup(&mut self, behind: bool) {
        Director::wakeup(self, behind)
    }

    fn reply(&self) -> &[u8] {
        Director::reply(self)
    }

    fn tick(&mut self, now: Duration, send: &mut dyn FnMut(Interface, &[u8])) {
        Director::tick(self, now, send)
    }

    fn upkeep(&mut self, now: Duration) -> Option<Duration> {
        Director::upkeep(self, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn director(extra: &str) -> DirectorConfig {
        let text = format!(
            "[director]\noutside = \"eth0\"\ninside = \"eth1\"\n{extra}\n[[real]]\nname = \"a\"\naddress = \"10.0.0.1\"\n"
        );
        Config::parse(&text, std::path::Path::new("test.toml"))
            .unwrap()
            .director
    }

    #[test]
    /// A reload that changes a start-only key is named; one that changes only what a reload applies
    /// (syn_retries) is not.
    fn reload_names_the_start_only_keys_that_changed() {
        let running = director("");
        assert!(start_only_changes(&running, &director("syn_retries = 5")).is_empty());
        assert_eq!(
            start_only_changes(
                &running,
                &director(
                    "send_threads = \"both\"\nqdisc_bypass = false\nlisten = \"127.0.0.1:1\""
                )
            ),
            ["listen", "send_threads", "qdisc_bypass"]
        );
    }
}

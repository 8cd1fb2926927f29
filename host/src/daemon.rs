//! `vipd run`: the live director. Wires the config, the interface checks, the [`Director`] and the capture
//! loop together, and handles signals: `SIGHUP` reloads the config (validated first; on error the running
//! config stays), `SIGTERM` and `SIGINT` stop cleanly.
//!
//! Threads: the data path (this module's caller's thread) runs [`DataPath::run`] with the director; a signal
//! thread loads and validates a new config off the packet path and hands the result over through a channel
//! that the data path looks at between batches. The admin thread ([`crate::admin`]) serves `/metrics` and the
//! admin API on `[director] listen`; its operator commands reach the data path over another channel.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::Interface;
use crate::admin::{self, Admin};
use crate::binding::BindingTable;
use crate::capture::{Action, CaptureConfig, Control, DataPath, Handler};
use crate::config::Config;
use crate::director::{Director, Layer2, Verdict};
use crate::ifcheck::{self, Offloads};
use crate::policy::{RoundRobin, Selector};

/// How `vipd run` was asked to start.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Turn GRO/GSO/TSO/checksum offloads off on both interfaces instead of refusing to start.
    pub fix_offloads: bool,
}

/// A validated config, ready to be installed by the data path.
struct Loaded {
    config: Config,
    bindings: BindingTable,
    selectors: Vec<Box<dyn Selector>>,
}

fn load(path: &Path) -> Result<Loaded> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bindings = BindingTable::from_config(&config);
    let selectors = selectors_for(&bindings);
    Ok(Loaded {
        config,
        bindings,
        selectors,
    })
}

/// One selector per virtual port.
fn selectors_for(bindings: &BindingTable) -> Vec<Box<dyn Selector>> {
    bindings
        .ports
        .iter()
        .map(|_| Box::new(RoundRobin::new()) as Box<dyn Selector>)
        .collect()
}

/// Runs the director until `SIGTERM` or `SIGINT`.
pub fn run(options: &RunOptions) -> Result<()> {
    let loaded = load(&options.config)?;
    let config = &loaded.config;
    let offloads = if options.fix_offloads {
        Offloads::Disable
    } else {
        Offloads::Refuse
    };
    let outside =
        ifcheck::check(&config.director.outside, offloads).context("outside interface")?;
    let inside = ifcheck::check(&config.director.inside, offloads).context("inside interface")?;
    if ifcheck::ip_forward_enabled().unwrap_or(false) {
        tracing::warn!(
            "net.ipv4.ip_forward=1 in this namespace: the kernel will forward a second copy of every packet; \
             set it to 0 (sysctl -w net.ipv4.ip_forward=0)"
        );
    }
    let l2 = Layer2 {
        outside_mac: outside.mac,
        inside_mac: inside.mac,
        inside_ip: inside.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    let epoch = Instant::now();
    let mut datapath = DataPath::open(
        (&outside.name, outside.mtu),
        (&inside.name, inside.mtu),
        CaptureConfig::default(),
        epoch,
    )?;
    let Loaded {
        config,
        bindings,
        selectors,
    } = loaded;
    tracing::info!(
        config = %options.config.display(),
        virtual_machines = bindings.virtuals.len(),
        ports = bindings.ports.len(),
        real_servers = bindings.reals.len(),
        max_connections = config.director.max_connections,
        "vipd serving"
    );
    let mut director = Director::with_selectors(&config, bindings, selectors, l2);

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
            plugins: Arc::new(Vec::new),
        },
    )?;
    tracing::info!(listen = %config.director.listen, "metrics and admin API");

    let stop = Arc::new(AtomicBool::new(false));
    let (reload_tx, reload_rx) = mpsc::channel::<Loaded>();
    let mut signals =
        Signals::new([SIGHUP, SIGINT, SIGTERM]).context("installing signal handlers")?;
    let signal_handle = signals.handle();
    let waker = datapath.waker();
    let signal_thread = {
        let stop = Arc::clone(&stop);
        let path = options.config.clone();
        std::thread::Builder::new().name("vipd-signals".into()).spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => match load(&path) {
                        Ok(loaded) => {
                            crate::metrics::config_reloaded(true);
                            tracing::info!(config = %path.display(), "config reloaded; installing");
                            if reload_tx.send(loaded).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            crate::metrics::config_reloaded(false);
                            tracing::error!("config reload refused, the running config stays:\n{e:#}")
                        }
                    },
                    _ => {
                        tracing::info!(signal, "stopping");
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                waker.wake();
            }
        })?
    };

    let result = datapath.run(&mut director, &mut |director: &mut Director| {
        while let Ok(loaded) = reload_rx.try_recv() {
            director.set_limits(&loaded.config);
            director.install(loaded.bindings, loaded.selectors);
        }
        while let Ok(command) = admin_rx.try_recv() {
            admin::apply(director, command, epoch.elapsed());
        }
        if stop.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    });
    signal_handle.close();
    let _ = signal_thread.join();
    let counters = director.counters();
    tracing::info!(
        connections_created = counters.connections_created,
        forwarded_inside = counters.forwarded[Interface::Inside as usize],
        forwarded_outside = counters.forwarded[Interface::Outside as usize],
        "vipd stopped"
    );
    result
}

impl Handler for Director {
    fn handle(&mut self, from: Interface, frame: &mut [u8], now: Duration) -> Action {
        match Director::handle(self, from, frame, now) {
            Verdict::Forward(to) => Action::Send(to),
            Verdict::Reply(to) => Action::SendReply(to),
            Verdict::Drop(_) | Verdict::Consumed => Action::Done,
        }
    }

    fn reply(&self) -> &[u8] {
        Director::reply(self)
    }

    fn tick(&mut self, now: Duration, send: &mut dyn FnMut(Interface, &[u8])) {
        Director::tick(self, now, send)
    }
}

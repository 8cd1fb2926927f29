//! `vipd replay --policy LABEL=FILE.wasm ...`: the same capture replayed once per policy, each serving every
//! virtual port, and what they did side by side: how each spread the capture's connections over the real
//! servers, how often each pair chose the same server for the same connection, and what a call cost.
//!
//! Each run assembles the director exactly as `vipd run` would from the config, except that every virtual
//! machine and port names the policy under test (with no arguments) and the plugin folder is a private
//! copy of the configured one with the policy's file added as `LABEL.wasm` (binders still come from the
//! configured folder). A run is independent: its own plugin host, director and clock.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::assemble::{Assembly, Plugins};
use crate::config::Config;
use crate::replay::{self, ReplayOptions};

/// One policy of a comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyUnderTest {
    /// Its name in the report (and its plugin name in its run).
    pub label: String,
    pub file: PathBuf,
}

impl std::str::FromStr for PolicyUnderTest {
    type Err = String;

    /// `LABEL=FILE.wasm`; the label is a plugin name (letters, digits, `-`, `_`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (label, file) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected LABEL=FILE.wasm"))?;
        if label.is_empty()
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{label:?}: a label is letters, digits, '-' and '_' (it names the plugin in its run)"
            ));
        }
        Ok(PolicyUnderTest {
            label: label.to_owned(),
            file: PathBuf::from(file),
        })
    }
}

/// What one policy did with the capture.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PolicyRun {
    pub label: String,
    pub file: PathBuf,
    /// Connections it opened, by real server name.
    pub per_real: BTreeMap<String, u64>,
    /// Its `select` calls and their mean duration (fallbacks included).
    pub calls: u64,
    pub mean_call_us: f64,
    /// The real server it chose, by (client, virtual address).
    #[serde(skip)]
    pub placed: HashMap<(SocketAddr, SocketAddr), String>,
}

/// How often two policies chose the same real server for the connections both opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Agreement {
    pub a: String,
    pub b: String,
    pub same: u64,
    pub both: u64,
}

/// The whole comparison.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Comparison {
    pub runs: Vec<PolicyRun>,
    pub agreement: Vec<Agreement>,
}

/// Replays the capture of `options` once per policy of `policies` (see the module documentation).
pub fn compare(
    config_path: &Path,
    policies: &[PolicyUnderTest],
    options: &ReplayOptions,
) -> Result<Comparison> {
    if policies.is_empty() {
        bail!("no policy to compare");
    }
    let mut runs = Vec::with_capacity(policies.len());
    for policy in policies {
        runs.push(
            run_one(config_path, policy, options)
                .with_context(|| format!("policy {} ({})", policy.label, policy.file.display()))?,
        );
    }
    let mut agreement = Vec::new();
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            let (mut same, mut both) = (0, 0);
            for (key, real) in &a.placed {
                if let Some(other) = b.placed.get(key) {
                    both += 1;
                    same += u64::from(real == other);
                }
            }
            agreement.push(Agreement {
                a: a.label.clone(),
                b: b.label.clone(),
                same,
                both,
            });
        }
    }
    Ok(Comparison { runs, agreement })
}

fn run_one(
    config_path: &Path,
    policy: &PolicyUnderTest,
    options: &ReplayOptions,
) -> Result<PolicyRun> {
    let mut config = Config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let folder = tempfile::Builder::new()
        .prefix("vipd-compare-")
        .tempdir()
        .context("a folder for the policy's plugins")?;
    if let Some(configured) = &config.director.plugins {
        for entry in std::fs::read_dir(configured)
            .with_context(|| format!("plugins folder {}", configured.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "wasm") {
                std::fs::copy(
                    &path,
                    folder.path().join(path.file_name().unwrap_or_default()),
                )
                .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    std::fs::copy(
        &policy.file,
        folder.path().join(format!("{}.wasm", policy.label)),
    )
    .with_context(|| format!("{}", policy.file.display()))?;
    for vm in &mut config.virtuals {
        vm.policy = policy.label.clone();
        vm.policy_args.clear();
        for port in &mut vm.ports {
            port.policy = None;
            port.policy_args = None;
        }
    }
    let plugins = Plugins::start(&config, Some(folder.path()))?;
    let stats = plugins
        .as_ref()
        .and_then(|p| p.dir().get(&policy.label))
        .map(|h| std::sync::Arc::clone(h.stats()))
        .with_context(|| format!("{} did not load as a plugin", policy.file.display()))?;
    let assembly = Assembly::new(config_path, config, plugins.as_ref())?;
    let replay_options = ReplayOptions {
        write_outside: None,
        write_inside: None,
        ..options.clone()
    };
    let mut run = PolicyRun {
        label: policy.label.clone(),
        file: policy.file.clone(),
        ..PolicyRun::default()
    };
    replay::replay(assembly, &replay_options, |e| {
        if let Some(o) = &e.opened {
            *run.per_real.entry(o.real_name.clone()).or_default() += 1;
            run.placed
                .insert((o.client, o.virtual_addr), o.real_name.clone());
        }
    })?;
    run.calls = <crate::plugin::CallResult as strum::VariantArray>::VARIANTS
        .iter()
        .map(|&r| stats.calls(r))
        .sum();
    if run.calls > 0 {
        run.mean_call_us = stats.duration_sum_seconds() * 1e6 / run.calls as f64;
    }
    Ok(run)
}

impl std::fmt::Display for Comparison {
    /// The table `vipd replay --policy` prints: connections per real server, calls and their mean cost,
    /// then the agreement of each pair.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reals: std::collections::BTreeSet<&String> =
            self.runs.iter().flat_map(|r| r.per_real.keys()).collect();
        write!(f, "{:<20} {:>8} {:>10}", "policy", "calls", "us/call")?;
        for real in &reals {
            write!(f, " {real:>10}")?;
        }
        writeln!(f)?;
        for run in &self.runs {
            write!(
                f,
                "{:<20} {:>8} {:>10.2}",
                run.label, run.calls, run.mean_call_us
            )?;
            for real in &reals {
                write!(f, " {:>10}", run.per_real.get(*real).copied().unwrap_or(0))?;
            }
            writeln!(f)?;
        }
        for a in &self.agreement {
            let pct = if a.both == 0 {
                0.0
            } else {
                100.0 * a.same as f64 / a.both as f64
            };
            writeln!(
                f,
                "{} and {} chose the same server for {} of {} connections ({pct:.1} %)",
                a.a, a.b, a.same, a.both
            )?;
        }
        Ok(())
    }
}

//! [`PluginDir`]: the plugins folder, watched with notify. A new or changed `NAME.wasm` is compiled and
//! validated on the watcher's thread once its size and modification time have held still for [`SETTLE`]
//! (a file being copied in is not loaded half-written), then published to its [`PluginHandle`] with one
//! atomic store; selectors pick it up at their next call. A file that fails to compile or validate, or
//! drops a world its previous version had, leaves the previous version serving: logged and counted, and
//! retried at its next change. A deleted file keeps its last good version, with a warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};

use super::{PluginEntry, PluginHandle, PluginHost, plugin_name};

/// How long a file's size and modification time must stay the same before it is loaded.
pub const SETTLE: Duration = Duration::from_millis(200);

/// The plugins folder and the plugins found in it.
pub struct PluginDir {
    dir: PathBuf,
    plugins: Arc<Mutex<HashMap<String, PluginHandle>>>,
    watcher: Option<notify::RecommendedWatcher>,
    worker: Option<JoinHandle<()>>,
}

type Signature = (u64, Option<SystemTime>);

impl PluginDir {
    pub(crate) fn watch(host: PluginHost, dir: &Path) -> Result<PluginDir> {
        let plugins: Arc<Mutex<HashMap<String, PluginHandle>>> = Arc::default();
        let (tx, rx) = channel();
        let mut watcher = notify::recommended_watcher(tx)
            .with_context(|| format!("{}: starting the plugin folder watcher", dir.display()))?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("{}: watching the plugin folder", dir.display()))?;
        // Load what is there now, after the watch began so no change falls between the two.
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("{}: reading the plugin folder", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if is_plugin_file(&path) {
                load(&host, &plugins, &path);
            }
        }
        let worker = {
            let plugins = plugins.clone();
            std::thread::Builder::new()
                .name("vipd-plugin-dir".into())
                .spawn(move || run(host, plugins, rx))
                .context("starting the plugin folder thread")?
        };
        Ok(PluginDir {
            dir: dir.to_path_buf(),
            plugins,
            watcher: Some(watcher),
            worker: Some(worker),
        })
    }

    /// The folder watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The plugin `name` (from `NAME.wasm`), if a file of that name was seen, loaded or not.
    pub fn get(&self, name: &str) -> Option<PluginHandle> {
        self.plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// All plugins seen, sorted by name.
    pub fn plugins(&self) -> Vec<PluginHandle> {
        let mut v: Vec<_> = self
            .plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    /// What `/status` and `/metrics` list: every plugin seen, sorted by name. A file that never loaded is
    /// listed too (version `none`), so its refusals show.
    pub fn entries(&self) -> Vec<PluginEntry> {
        self.plugins()
            .into_iter()
            .map(|handle| {
                let loaded = handle.current();
                PluginEntry {
                    name: handle.name().to_string(),
                    version: loaded
                        .as_ref()
                        .map_or_else(|| "none".to_string(), |l| l.version().to_string()),
                    file: loaded.as_ref().map_or_else(
                        || {
                            self.dir
                                .join(format!("{}.wasm", handle.name()))
                                .display()
                                .to_string()
                        },
                        |l| l.path().display().to_string(),
                    ),
                    modified: loaded
                        .as_ref()
                        .and_then(|l| l.modified())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs()),
                    stats: Arc::clone(handle.stats()),
                }
            })
            .collect()
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        // Dropping the watcher drops the channel's sender, which ends the worker.
        self.watcher.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
}

fn signature(path: &Path) -> std::io::Result<Signature> {
    let m = std::fs::metadata(path)?;
    Ok((m.len(), m.modified().ok()))
}

/// A changed file waiting to hold still.
struct Pending {
    seen: Option<Signature>,
    since: Instant,
}

fn run(
    host: PluginHost,
    plugins: Arc<Mutex<HashMap<String, PluginHandle>>>,
    rx: Receiver<notify::Result<notify::Event>>,
) {
    let mut pending: HashMap<PathBuf, Pending> = HashMap::new();
    // Files refused as they are now: one change often comes as several events (rename, then attributes),
    // and an unchanged file is refused (and counted) once, not once per event.
    let mut refused: HashMap<PathBuf, Signature> = HashMap::new();
    loop {
        match rx.recv_timeout(SETTLE / 4) {
            Ok(Ok(event)) => {
                for path in event.paths {
                    if is_plugin_file(&path) {
                        pending.insert(
                            path,
                            Pending {
                                seen: None,
                                since: Instant::now(),
                            },
                        );
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!("plugin folder watch error: {e}"),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        pending.retain(|path, p| match signature(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let name = plugin_name(path).unwrap_or_default();
                if plugins
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&name)
                {
                    tracing::warn!(
                        plugin = name,
                        file = %path.display(),
                        "plugin file deleted; its last good version stays loaded"
                    );
                }
                false
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), "plugin file unreadable: {e}");
                false
            }
            Ok(sig) if p.seen != Some(sig) => {
                p.seen = Some(sig);
                p.since = now;
                true
            }
            Ok(sig) if now.duration_since(p.since) >= SETTLE => {
                let name = plugin_name(path).unwrap_or_default();
                let loaded = plugins
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&name)
                    .and_then(|h| h.current())
                    .is_some_and(|v| v.0.signature == sig && v.path() == path);
                if !loaded && refused.get(path) != Some(&sig) {
                    if load(&host, &plugins, path) {
                        refused.remove(path);
                    } else {
                        refused.insert(path.clone(), sig);
                    }
                }
                false
            }
            Ok(_) => true,
        });
    }
}

/// Compiles `path` and publishes it to its handle, or logs and counts why not; true when published.
fn load(host: &PluginHost, plugins: &Mutex<HashMap<String, PluginHandle>>, path: &Path) -> bool {
    let Ok(name) = plugin_name(path) else {
        return false;
    };
    let handle = plugins
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.clone())
        .or_insert_with(|| PluginHandle::empty(&name))
        .clone();
    tracing::info!(plugin = name, file = %path.display(), "compiling plugin");
    handle.set_compiling(true);
    let result = host.load_file(path).and_then(|new| {
        if let Some(old) = handle.current() {
            for w in old.worlds() {
                if !new.worlds().contains(&w) {
                    anyhow::bail!(
                        "{}: the previous version is a {} plugin and this one is not",
                        path.display(),
                        w.as_str()
                    );
                }
            }
        }
        Ok(new)
    });
    handle.set_compiling(false);
    match result {
        Ok(new) => {
            handle.publish(new.clone());
            tracing::info!(
                plugin = name,
                file = %path.display(),
                version = new.version(),
                "plugin loaded"
            );
            handle.stats().record_reload(true);
            true
        }
        Err(e) => {
            handle.stats().record_reload(false);
            if handle.current().is_some() {
                tracing::error!(
                    plugin = name,
                    "plugin refused, previous version keeps serving: {e:#}"
                );
            } else {
                tracing::error!(plugin = name, "plugin refused: {e:#}");
            }
            false
        }
    }
}

//! Running plugin modules with wasmtime: compiled once; every call runs in an instance in its initial state
//! (a fresh instance, or a reused one reset completely: see [`crate::reuse`]) so no request's data is visible
//! to another's, bounded by an epoch deadline and a memory cap. A plugin that traps, runs out of time or
//! memory, or returns garbage fails that call only.

use crate::reuse::Initial;
use gatehouse_engine::{ModuleSource, PluginCall, PluginRef};
use gatehouse_plugin_abi::{self as abi, Hook, Manifest};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use wasmtime::{
    Config, Engine, Global, Instance, InstancePre, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder,
    TypedFunc, Val,
};

/// How often the epoch advances; plugin deadlines are counted in these ticks.
const TICK: Duration = Duration::from_millis(2);

/// The largest memory one plugin instance may have (`server.plugin_memory_bytes` may lower it).
pub const MAX_PLUGIN_MEMORY: u64 = 256 << 20;

/// Plugin instances alive at once (calls in flight and reset instances kept for reuse).
const POOL_SLOTS: u32 = 256;

/// Reset instances kept for reuse, over all plugins of all loaded configurations (the rest of the pool stays
/// for calls in flight).
const MAX_PARKED: usize = POOL_SLOTS as usize / 4;

/// Reset instances kept now.
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// Bytes of each plugin memory kept resident between calls (reset in place rather than discarded): with
/// `PAGEMAP_SCAN` only the dirtied pages of this window are reset, so it can be large; without it the whole
/// window is memset after every call, so it stays small.
fn keep_resident() -> usize {
    if pagemap_scan_available() { 4 << 20 } else { 64 << 10 }
}

/// Linux 6.7 or later (the `PAGEMAP_SCAN` ioctl).
fn pagemap_scan_available() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(major), Some(minor)) if (major, minor) >= (6, 7))
}

/// Why a module was refused at load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The module file could not be read.
    #[error("plugin `{name}`: cannot read `{path}`: {message}")]
    Read {
        /// Plugin name.
        name: String,
        /// Module path.
        path: String,
        /// Reader's error.
        message: String,
    },
    /// The module's sha256 differs from the pin.
    #[error("plugin `{name}`: sha256 is {actual}, but the configuration pins {expected}")]
    Pin {
        /// Plugin name.
        name: String,
        /// The pin.
        expected: String,
        /// The module's digest.
        actual: String,
    },
    /// The module is not a valid ABI v1 plugin.
    #[error("plugin `{name}`: {message}")]
    Invalid {
        /// Plugin name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// A compiled module and, when its instances can be reset, their initial state.
type Compiled = (Module, Option<Arc<Initial>>);

/// A hook export: `(cfg_ptr, cfg_len, in_ptr, in_len) -> packed region`.
type HookFunc = TypedFunc<(i32, i32, i32, i32), i64>;

/// A process-wide wasmtime engine with an epoch ticker and a cache of compiled modules by sha256.
pub struct Runtime {
    engine: Engine,
    modules: Mutex<HashMap<String, Compiled>>,
}

impl Runtime {
    /// The shared runtime.
    pub fn global() -> Result<&'static Runtime, String> {
        static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
        RUNTIME.get_or_init(Runtime::new).as_ref().map_err(Clone::clone)
    }

    fn new() -> Result<Runtime, String> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Instances come from a pool of pre-reserved slots whose memory is reset copy-on-write after each call,
        // so a fresh instance per call stays cheap while no call sees another's data.
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_core_instances(POOL_SLOTS)
            .total_memories(POOL_SLOTS)
            .total_tables(POOL_SLOTS)
            .max_memory_size(MAX_PLUGIN_MEMORY as usize)
            .linear_memory_keep_resident(keep_resident())
            .table_keep_resident(4 << 10)
            // Linux >= 6.7: reset only the pages a call dirtied (memset back to the image), keeping them resident,
            // instead of madvise + a page fault per page on the next call.
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| e.to_string())?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("gatehouse-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Runtime { engine, modules: Mutex::new(HashMap::new()) })
    }

    /// The compiled module and, when its instances can be reset, their initial state.
    fn compile(&self, sha: &str, bytes: &[u8]) -> Result<Compiled, String> {
        if let Some(m) = self.modules.lock().map_err(|e| e.to_string())?.get(sha) {
            return Ok(m.clone());
        }
        let prepared = crate::reuse::prepare(bytes);
        let module = Module::new(&self.engine, &prepared.bytes).map_err(|e| format!("not a valid module: {e}"))?;
        let initial = prepared.initial.filter(|_| crate::reuse::dirty::available()).map(Arc::new);
        let compiled = (module, initial);
        self.modules.lock().map_err(|e| e.to_string())?.insert(sha.to_owned(), compiled.clone());
        Ok(compiled)
    }
}

/// Per-call state: only the memory limiter.
struct CallState {
    limits: StoreLimits,
}

/// A loaded plugin, ready to instantiate.
pub struct Plugin {
    /// Its name in the configuration.
    pub name: String,
    /// Lowercase hex sha256 of the module.
    pub sha256: String,
    /// What the plugin says about itself.
    pub manifest: Manifest,
    pre: InstancePre<CallState>,
    reuse: Option<Reuse>,
}

/// Instances of a plugin kept for reuse, and the state they are reset to (see [`crate::reuse`]).
struct Reuse {
    initial: Arc<Initial>,
    /// Reset instances ready for a call, one list per thread slot ([`thread_slot`]): an instance goes back to
    /// the thread that used it, so its pages stay in that core's caches instead of moving between cores.
    parked: Box<[Mutex<Vec<Warm>>]>,
}

/// Lists of parked instances per plugin.
const THREAD_SLOTS: usize = 8;

/// This thread's list of parked instances: threads are numbered as they first call a plugin.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % THREAD_SLOTS;
    }
    SLOT.with(|s| *s)
}

impl Reuse {
    fn new(initial: Arc<Initial>) -> Reuse {
        Reuse { initial, parked: (0..THREAD_SLOTS).map(|_| Mutex::new(Vec::new())).collect() }
    }
}

/// An instance with its exports looked up.
struct Warm {
    store: Store<CallState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    hooks: Vec<(Hook, HookFunc)>,
    globals: Vec<Global>,
    /// The private pages of its memory (those written since it was mapped) at the last scan, if there was
    /// one: the reset copies these back without scanning again when the call took no page fault (see
    /// [`crate::reuse::dirty::thread_faults`]).
    written: Option<Vec<std::ops::Range<usize>>>,
    /// Whether its memory is kept from huge pages (see [`crate::reuse::dirty::no_huge_pages`]).
    trackable: bool,
    /// Whether the last call ran without a page fault on its thread since the call before it ended.
    quiet: bool,
    /// The thread that made the last call and its fault count when that call ended.
    faults_at: Option<(usize, u64)>,
    /// Resets so far; every [`VERIFY_EVERY`]th one scans anyway and checks the list.
    resets: u32,
}

/// Whether resets may rely on page faults to learn that no new page was written (turned off for good, with
/// a log line, if a periodic scan ever finds a written page the list lacked).
static FAULT_TRACKING: AtomicBool = AtomicBool::new(true);

/// How often a reset that could skip the scan scans anyway, to check that the list of written pages is whole.
const VERIFY_EVERY: u32 = 256;

thread_local! {
    /// This thread's resets: (without a scan, with one).
    static RESETS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// This thread, as a number no other thread of the process has had (an address could be reused by a later
/// thread, whose fault count might then match the count another thread left).
fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    thread_local! {
        static ME: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ME.with(|me| *me)
}

/// How many instance resets this thread has done without scanning the memory's pages, and with a scan.
pub fn reset_counts() -> (u64, u64) {
    RESETS.with(std::cell::Cell::get)
}

impl Drop for Reuse {
    fn drop(&mut self) {
        let n: usize = self.parked.iter_mut().map(|p| p.get_mut().map_or(0, |p| p.len())).sum();
        PARKED.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The plugins of one configuration.
pub struct Plugins {
    by_name: HashMap<String, Arc<Plugin>>,
    timeout: Duration,
    memory: usize,
}

impl Plugins {
    /// Loads every plugin `refs` names; `timeout` and `memory` bound each call.
    pub fn load<'a>(
        refs: impl IntoIterator<Item = &'a PluginRef>,
        timeout: Duration,
        memory: u64,
    ) -> Result<Plugins, LoadError> {
        let runtime = Runtime::global().map_err(|message| LoadError::Invalid { name: "runtime".into(), message })?;
        if memory > MAX_PLUGIN_MEMORY {
            return Err(LoadError::Invalid {
                name: "runtime".into(),
                message: format!("plugin_memory_bytes may be at most {MAX_PLUGIN_MEMORY}"),
            });
        }
        let memory = usize::try_from(memory).unwrap_or(usize::MAX);
        let mut by_name = HashMap::new();
        for r in refs {
            let bytes: Vec<u8> = match &r.module {
                ModuleSource::Builtin(b) => gatehouse_plugin_artifacts::builtin(b)
                    .ok_or_else(|| LoadError::Invalid { name: r.name.clone(), message: format!("no built-in `{b}`") })?
                    .to_vec(),
                ModuleSource::Path(p) => std::fs::read(p).map_err(|e| LoadError::Read {
                    name: r.name.clone(),
                    path: p.clone(),
                    message: e.to_string(),
                })?,
            };
            let sha256 = hex(&sha2::Sha256::digest(&bytes));
            if let Some(expected) = &r.sha256
                && *expected != sha256
            {
                return Err(LoadError::Pin { name: r.name.clone(), expected: expected.clone(), actual: sha256 });
            }
            let invalid = |message: String| LoadError::Invalid { name: r.name.clone(), message };
            let (module, initial) = runtime.compile(&sha256, &bytes).map_err(invalid)?;
            if let Some(import) = module.imports().next() {
                return Err(invalid(format!(
                    "imports `{}::{}`; a plugin must import nothing",
                    import.module(),
                    import.name()
                )));
            }
            let linker: Linker<CallState> = Linker::new(&runtime.engine);
            let pre = linker.instantiate_pre(&module).map_err(|e| invalid(e.to_string()))?;
            let mut plugin = Plugin {
                name: r.name.clone(),
                sha256,
                manifest: Manifest {
                    name: String::new(),
                    version: String::new(),
                    kind: String::new(),
                    hooks: vec![],
                    config: serde_json::Value::Null,
                },
                pre,
                reuse: None,
            };
            plugin.manifest = plugin.read_manifest(memory).map_err(invalid)?;
            plugin.reuse = initial.map(Reuse::new);
            if let Some(hook) = r.hooks.iter().find(|h| !plugin.manifest.hooks.contains(h)) {
                return Err(invalid(format!(
                    "the configuration uses it for `{}`, which its manifest does not list (it implements: {})",
                    hook.name(),
                    plugin.manifest.hooks.iter().map(|h| h.name()).collect::<Vec<_>>().join(", ")
                )));
            }
            by_name.insert(r.name.clone(), Arc::new(plugin));
        }
        Ok(Plugins { by_name, timeout, memory })
    }

    /// The same plugins with a fresh instance for every call instead of a reset one (to measure one against
    /// the other; both give every call the state of a fresh instance).
    pub fn fresh_instances(mut self) -> Plugins {
        for plugin in self.by_name.values_mut() {
            if let Some(p) = Arc::get_mut(plugin) {
                p.reuse = None;
            }
        }
        self
    }

    /// The plugin named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.by_name.get(name)
    }

    /// All loaded plugins.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.by_name.values()
    }

    /// Runs a call the engine asked for, in a fresh instance.
    pub fn call(&self, call: &PluginCall) -> Result<Vec<u8>, String> {
        let plugin = self.by_name.get(&call.plugin).ok_or("the plugin is not loaded")?;
        if !plugin.manifest.hooks.contains(&call.hook) {
            return Err(format!("it does not implement `{}`", call.hook.name()));
        }
        plugin.invoke(call.hook, &call.config, &call.input, self.timeout, self.memory)
    }
}

impl Plugin {
    fn store(&self, timeout: Duration, memory: usize) -> Store<CallState> {
        let limits = StoreLimitsBuilder::new().memory_size(memory).instances(1).memories(1).tables(4).build();
        let mut store = Store::new(self.pre.module().engine(), CallState { limits });
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(ticks(timeout));
        store
    }

    /// Whether calls reuse reset instances (see [`crate::reuse`]) rather than instantiate afresh.
    pub fn reuses_instances(&self) -> bool {
        self.reuse.is_some()
    }

    fn read_manifest(&self, memory: usize) -> Result<Manifest, String> {
        let mut store = self.store(Duration::from_secs(1), memory);
        let instance = self.pre.instantiate(&mut store).map_err(|e| e.to_string())?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, abi::exports::ABI_VERSION)
            .map_err(|_| format!("does not export `{}`", abi::exports::ABI_VERSION))?
            .call(&mut store, ())
            .map_err(|e| e.to_string())?;
        if version != abi::ABI_VERSION as i32 {
            return Err(format!("was built for ABI version {version}; this host speaks {}", abi::ABI_VERSION));
        }
        let packed = instance
            .get_typed_func::<(), i64>(&mut store, abi::exports::MANIFEST)
            .map_err(|_| format!("does not export `{}`", abi::exports::MANIFEST))?
            .call(&mut store, ())
            .map_err(|e| e.to_string())?;
        let bytes = read_region(&instance, &mut store, packed)?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| format!("bad manifest: {e}"))?;
        for hook in &manifest.hooks {
            if instance.get_func(&mut store, &hook.export_name()).is_none() {
                return Err(format!(
                    "its manifest lists `{}` but it does not export `{}`",
                    hook.name(),
                    hook.export_name()
                ));
            }
        }
        Ok(manifest)
    }

    fn invoke(
        &self,
        hook: Hook,
        config: &[u8],
        input: &[u8],
        timeout: Duration,
        memory: usize,
    ) -> Result<Vec<u8>, String> {
        let Some(reuse) = &self.reuse else {
            let mut warm = self.warm(&[], memory, timeout, false)?;
            return warm.call(hook, config, input);
        };
        let slot = reuse.parked.get(thread_slot()).ok_or("no instance list for this thread")?;
        let parked = slot.lock().ok().and_then(|mut p| p.pop());
        let mut warm = match parked {
            Some(mut w) => {
                PARKED.fetch_sub(1, Ordering::Relaxed);
                w.store.set_epoch_deadline(ticks(timeout));
                w
            }
            None => self.warm(&reuse.initial.globals, memory, timeout, true)?,
        };
        let out = warm.call(hook, config, input)?;
        // Only an instance that returned normally and is back in its initial state is kept.
        if warm.reset(&reuse.initial) {
            if PARKED.fetch_add(1, Ordering::Relaxed) < MAX_PARKED
                && let Ok(mut parked) = slot.lock()
            {
                parked.push(warm);
            } else {
                PARKED.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(out)
    }

    /// A fresh instance with its exports looked up (the mutable globals named in `globals`); `reset`: it will
    /// be reset after its calls, so they track page faults.
    fn warm(&self, globals: &[(String, Val)], memory: usize, timeout: Duration, reset: bool) -> Result<Warm, String> {
        let mut store = self.store(timeout, memory);
        let instance = self.pre.instantiate(&mut store).map_err(describe)?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, abi::exports::ALLOC)
            .map_err(|_| "it does not export an allocator".to_owned())?;
        let mut hooks = Vec::with_capacity(self.manifest.hooks.len());
        for hook in &self.manifest.hooks {
            let func = instance
                .get_typed_func::<(i32, i32, i32, i32), i64>(&mut store, &hook.export_name())
                .map_err(|_| format!("it does not export `{}`", hook.export_name()))?;
            hooks.push((*hook, func));
        }
        let memory = memory_of(&instance, &mut store)?;
        let globals = globals
            .iter()
            .map(|(name, _)| instance.get_global(&mut store, name).ok_or_else(|| format!("no export `{name}`")))
            .collect::<Result<Vec<_>, _>>()?;
        // Without huge pages a write to a page not yet written always faults; otherwise every reset scans.
        let trackable = reset && crate::reuse::dirty::no_huge_pages(memory.data(&store));
        Ok(Warm {
            store,
            memory,
            alloc,
            hooks,
            globals,
            written: None,
            trackable,
            quiet: false,
            faults_at: None,
            resets: 0,
        })
    }
}

fn ticks(timeout: Duration) -> u64 {
    (timeout.as_micros() / TICK.as_micros()).max(1) as u64 + 1
}

impl Warm {
    fn call(&mut self, hook: Hook, config: &[u8], input: &[u8]) -> Result<Vec<u8>, String> {
        // The faults counted since the end of this instance's last call, if that was on this thread: only the
        // thread that calls an instance touches its memory, so any fault that made one of its pages writable
        // since then is in the count (the others are the host's own, and only cost a scan).
        let since = self.faults_at.take().filter(|(thread, _)| *thread == this_thread());
        self.quiet = false;
        let (cp, cl) = self.write_region(config)?;
        let (ip, il) = self.write_region(input)?;
        // Borrowed, not cloned (a clone takes a reference on the function's registered type).
        let Some((_, func)) = self.hooks.iter().find(|(h, _)| *h == hook) else {
            return Err(format!("it does not export `{}`", hook.export_name()));
        };
        let packed = func.call(&mut self.store, (cp, cl, ip, il)).map_err(describe)?;
        let out = region(self.memory.data(&self.store), packed)?;
        if self.trackable {
            let now = crate::reuse::dirty::thread_faults();
            self.quiet = matches!((since, now), (Some((_, a)), Some(b)) if a == b);
            self.faults_at = now.map(|n| (this_thread(), n));
        }
        Ok(out)
    }

    fn write_region(&mut self, bytes: &[u8]) -> Result<(i32, i32), String> {
        let len = i32::try_from(bytes.len()).map_err(|_| "argument too large".to_owned())?;
        let ptr = self.alloc.call(&mut self.store, len).map_err(describe)?;
        self.memory
            .write(&mut self.store, ptr as u32 as usize, bytes)
            .map_err(|_| "its allocator returned a bad region".to_owned())?;
        Ok((ptr, len))
    }

    /// Puts the instance back in its initial state; false if that cannot be done (the instance must then be
    /// dropped): memory grew, or the kernel could not say which pages were written.
    fn reset(&mut self, initial: &Initial) -> bool {
        let data = self.memory.data(&self.store);
        if data.len() != initial.memory.len() {
            return false;
        }
        self.resets = self.resets.wrapping_add(1);
        let known =
            self.written.take().filter(|_| self.trackable && self.quiet && FAULT_TRACKING.load(Ordering::Relaxed));
        let written = match known {
            Some(known) if !self.resets.is_multiple_of(VERIFY_EVERY) => {
                RESETS.with(|c| c.set((c.get().0 + 1, c.get().1)));
                known
            }
            known => {
                let mut found = Vec::with_capacity(known.as_ref().map_or(4, Vec::len));
                if !crate::reuse::dirty::for_each(data, &mut |r| found.push(r)) {
                    return false;
                }
                if known.is_some_and(|known| !crate::reuse::covered(&found, &known)) {
                    FAULT_TRACKING.store(false, Ordering::Relaxed);
                    crate::log(format_args!(
                        "plugin reset: a scan found written pages that no page fault announced; every reset scans from now on"
                    ));
                }
                RESETS.with(|c| c.set((c.get().0, c.get().1 + 1)));
                found
            }
        };
        let data = self.memory.data_mut(&mut self.store);
        for r in &written {
            match (data.get_mut(r.clone()), initial.memory.get(r.clone())) {
                (Some(to), Some(from)) => to.copy_from_slice(from),
                _ => return false,
            }
        }
        self.written = Some(written);
        for (g, (_, v)) in self.globals.iter().zip(&initial.globals) {
            if g.set(&mut self.store, *v).is_err() {
                return false;
            }
        }
        true
    }
}

fn memory_of(instance: &Instance, store: &mut Store<CallState>) -> Result<Memory, String> {
    instance.get_memory(&mut *store, abi::exports::MEMORY).ok_or_else(|| "it does not export its memory".to_owned())
}

fn read_region(instance: &Instance, store: &mut Store<CallState>, packed: i64) -> Result<Vec<u8>, String> {
    let mem = memory_of(instance, store)?;
    region(mem.data(&*store), packed)
}

/// A copy of the packed region `packed` of the guest's memory `data`.
fn region(data: &[u8], packed: i64) -> Result<Vec<u8>, String> {
    let (ptr, len) = abi::unpack(packed);
    data.get(ptr as usize..(ptr as usize).saturating_add(len as usize))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "it returned a region outside its memory".to_owned())
}

/// A failure's description, safe for callers: what kind of failure, not the guest's backtrace.
fn describe(e: wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => "it exceeded its time budget".into(),
            wasmtime::Trap::OutOfFuel => "it ran out of fuel".into(),
            other => format!("it trapped ({other})"),
        };
    }
    let text = e.to_string();
    if text.contains("memory") || text.contains("limit") {
        format!("it exceeded its memory budget ({text})")
    } else {
        format!("it failed: {text}")
    }
}

pub use gatehouse_engine::audit::hex;

//! Reusing a plugin instance across calls, reset to its initial state in between, so a call costs what the
//! guest does plus a reset of the pages it wrote, not a whole instantiation.
//!
//! The state of a core WASM instance of a module that imports nothing is: its memory (contents and size), its
//! globals, its tables (contents and size) and which passive data / element segments were dropped. A reused
//! instance is **indistinguishable from a fresh one** when all of that is back at its initial value, so a
//! module is reused only if the host can put every piece back:
//! - **memory**: one memory, 32-bit, not shared. After a call its size must still be the initial size (a call
//!   that grew memory discards the instance: memory cannot shrink), and every page the call changed is copied
//!   back from the initial image: zeros with the active data segments (constant offsets) written in, as
//!   instantiation makes it. A module with a start function is not reused (it could change memory first).
//!   Changed pages are found by the kernel (`PAGEMAP_SCAN`, Linux 6.7+): a page that differs from the image
//!   was written, so it is present (or swapped out) and private; pages still mapped to the module's image or
//!   the zero page, and pages never touched, hold their initial contents. Without the ioctl there is no reuse.
//!   The scan is skipped when the thread that calls an instance took no page fault since its last call ended
//!   ([`dirty::thread_faults`]): a page still holding its initial contents is absent or mapped read-only, so a
//!   write to it faults; with no fault the written pages are those of the last scan, copied back as they
//!   are. The instance's memory is kept from huge pages, whose background collapse would make pages writable
//!   without a fault, and every 256th such reset scans anyway and checks the list (a page missing from it
//!   turns the shortcut off for the process).
//! - **globals**: the module is rewritten at load to export every mutable global (`__gatehouse_global_N`); the
//!   host restores each to its initial value (a numeric constant; other globals: no reuse).
//! - **tables and segments**: the module must contain none of the instructions that change them
//!   (`table.set/grow/fill/copy/init`, `elem.drop`, `memory.init`, `data.drop`); then tables hold exactly what
//!   the active element segments put there at instantiation, and segment state never changes.
//!
//! A call that traps, runs out of time or fails in the host discards its instance; so does one whose reset
//! cannot be completed. The first call of every instance is on a fresh instantiation (see `runtime`).

use wasmparser::{Operator, Parser, Payload};
use wasmtime::Val;

/// Prefix of the exports the rewrite adds for mutable globals.
pub const GLOBAL_EXPORT: &str = "__gatehouse_global_";

/// What the analysis found: the module to compile (rewritten to export its mutable globals) and, when its
/// instances can be reused, the state to reset them to.
pub struct Prepared {
    /// The module bytes to compile.
    pub bytes: Vec<u8>,
    /// The initial state; `None` = a fresh instance per call.
    pub initial: Option<Initial>,
}

/// The state of an instance right after instantiation, read from the module (no instance is needed, so no
/// page of any instance is touched to learn it).
#[derive(Clone, Debug)]
pub struct Initial {
    /// The memory: the initial number of pages, zeroed, with the active data segments written in.
    pub memory: Box<[u8]>,
    /// Each mutable global: the export the rewrite added, and its initial value (a number).
    pub globals: Vec<(String, Val)>,
}

/// Analyses `wasm` (already known to be a plugin module: it is validated when compiled) and rewrites it to
/// export its mutable globals when it can be reset. A module this cannot read is returned unchanged, without
/// reuse: the compiler then gives the real error.
pub fn prepare(wasm: &[u8]) -> Prepared {
    let unchanged = || Prepared { bytes: wasm.to_vec(), initial: None };
    let Ok(Some((memory, mutable))) = analyse(wasm) else { return unchanged() };
    let indexes: Vec<u32> = mutable.iter().map(|(i, _)| *i).collect();
    let Some((bytes, names)) = add_global_exports(wasm, &indexes) else { return unchanged() };
    let globals = names.into_iter().zip(mutable.into_iter().map(|(_, v)| v)).collect();
    Prepared { bytes, initial: Some(Initial { memory: memory.into(), globals }) }
}

/// The initial memory and the mutable globals (index, initial value), when instances can be reset.
type Analysis = Option<(Vec<u8>, Vec<(u32, Val)>)>;

/// The initial memory and the mutable globals of the module if its instances can be reset, else `None`.
fn analyse(wasm: &[u8]) -> wasmparser::Result<Analysis> {
    let mut mutable = Vec::new();
    let mut globals = 0u32;
    let mut memory: Option<Vec<u8>> = None;
    let mut memories = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            // Imports would bring outside state; a start function would change memory before any call.
            Payload::ImportSection(r) if r.count() > 0 => return Ok(None),
            Payload::StartSection { .. } => return Ok(None),
            Payload::MemorySection(r) => {
                for m in r {
                    let m = m?;
                    memories += 1;
                    if m.memory64 || m.shared || m.initial > 1 << 12 {
                        return Ok(None);
                    }
                    memory = Some(vec![0; (m.initial as usize) << 16]);
                }
            }
            Payload::GlobalSection(r) => {
                for g in r {
                    let g = g?;
                    if g.ty.mutable {
                        let Some(value) = constant(&g.init_expr)? else { return Ok(None) };
                        if g.ty.shared {
                            return Ok(None);
                        }
                        mutable.push((globals, value));
                    }
                    globals += 1;
                }
            }
            Payload::DataSection(r) => {
                for d in r {
                    let d = d?;
                    if let wasmparser::DataKind::Active { memory_index, offset_expr } = d.kind {
                        let (Some(mem), 0, Some(Val::I32(offset))) =
                            (memory.as_mut(), memory_index, constant(&offset_expr)?)
                        else {
                            return Ok(None);
                        };
                        let start = offset as u32 as usize;
                        let Some(to) = mem.get_mut(start..start.saturating_add(d.data.len())) else {
                            return Ok(None);
                        };
                        to.copy_from_slice(d.data);
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader()?;
                while !ops.eof() {
                    if changes_tables_or_segments(&ops.read()?) {
                        return Ok(None);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(memory.filter(|_| memories == 1).map(|m| (m, mutable)))
}

/// The value of a constant expression made of one numeric constant, else `None`.
fn constant(expr: &wasmparser::ConstExpr<'_>) -> wasmparser::Result<Option<Val>> {
    let mut ops = expr.get_operators_reader();
    let value = match ops.read()? {
        Operator::I32Const { value } => Val::I32(value),
        Operator::I64Const { value } => Val::I64(value),
        Operator::F32Const { value } => Val::F32(value.bits()),
        Operator::F64Const { value } => Val::F64(value.bits()),
        Operator::V128Const { value } => Val::V128(u128::from_le_bytes(*value.bytes()).into()),
        _ => return Ok(None),
    };
    Ok(matches!(ops.read()?, Operator::End).then_some(value))
}

fn changes_tables_or_segments(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::TableSet { .. }
            | Operator::TableGrow { .. }
            | Operator::TableFill { .. }
            | Operator::TableCopy { .. }
            | Operator::TableInit { .. }
            | Operator::ElemDrop { .. }
            | Operator::MemoryInit { .. }
            | Operator::DataDrop { .. }
    )
}

/// The module with one more export per mutable global (names [`GLOBAL_EXPORT`]`N`), and those names. `None`
/// if the module has no export section to extend or a name is taken.
fn add_global_exports(wasm: &[u8], mutable: &[u32]) -> Option<(Vec<u8>, Vec<String>)> {
    let names: Vec<String> = mutable.iter().map(|i| format!("{GLOBAL_EXPORT}{i}")).collect();
    let mut out = Vec::with_capacity(wasm.len() + 32 * names.len());
    out.extend_from_slice(wasm.get(..8)?);
    let mut pos = 8;
    let mut extended = false;
    while pos < wasm.len() {
        let id = *wasm.get(pos)?;
        let (size, len_bytes) = read_leb(wasm.get(pos + 1..)?)?;
        let start = pos + 1 + len_bytes;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        let content = wasm.get(start..end)?;
        if id == 7 {
            let (count, count_bytes) = read_leb(content)?;
            let existing = content.get(count_bytes..)?;
            if names.iter().any(|n| contains_name(existing, n)) {
                return None;
            }
            let mut body = Vec::new();
            write_leb(&mut body, count + names.len() as u64);
            body.extend_from_slice(existing);
            for (name, index) in names.iter().zip(mutable) {
                write_leb(&mut body, name.len() as u64);
                body.extend_from_slice(name.as_bytes());
                body.push(0x03); // global
                write_leb(&mut body, u64::from(*index));
            }
            out.push(7);
            write_leb(&mut out, body.len() as u64);
            out.extend_from_slice(&body);
            extended = true;
        } else {
            out.extend_from_slice(wasm.get(pos..end)?);
        }
        pos = end;
    }
    extended.then_some((out, names))
}

/// Whether an export named `name` may already exist (a byte search of the section: a false positive only
/// costs reuse).
fn contains_name(section: &[u8], name: &str) -> bool {
    section.windows(name.len()).any(|w| w == name.as_bytes())
}

fn read_leb(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn write_leb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Finds the pages of a memory that may differ from their initial contents, with the kernel's `PAGEMAP_SCAN`.
#[cfg(target_os = "linux")]
pub mod dirty {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::sync::OnceLock;

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct PageRegion {
        start: u64,
        end: u64,
        categories: u64,
    }

    #[repr(C)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }

    impl PmScanArg {
        fn new(start: u64, end: u64, regions: &mut [PageRegion]) -> PmScanArg {
            PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: 0,
                start,
                end,
                walk_end: 0,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                max_pages: 0,
                // Not the zero page and not a page of a file (the module's image): those were only read.
                category_inverted: PAGE_IS_PFNZERO | PAGE_IS_FILE,
                category_mask: PAGE_IS_WRITTEN | PAGE_IS_PFNZERO | PAGE_IS_FILE,
                // A written page may have been swapped out since.
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: 0,
            }
        }
    }

    const PAGE_IS_WRITTEN: u64 = 1 << 1;
    const PAGE_IS_FILE: u64 = 1 << 2;
    const PAGE_IS_PRESENT: u64 = 1 << 3;
    const PAGE_IS_SWAPPED: u64 = 1 << 4;
    const PAGE_IS_PFNZERO: u64 = 1 << 5;
    /// `_IOWR('f', 16, struct pm_scan_arg)`.
    const PAGEMAP_SCAN: u64 = (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | (0x66 << 8) | 16;

    /// This process's page map, if the kernel has `PAGEMAP_SCAN`.
    fn pagemap() -> Option<&'static File> {
        static PAGEMAP: OnceLock<Option<File>> = OnceLock::new();
        PAGEMAP
            .get_or_init(|| {
                let file = File::open("/proc/self/pagemap").ok()?;
                // An empty range: succeeds where the ioctl exists.
                let mut arg = PmScanArg::new(0, 0, &mut []);
                // SAFETY: an empty range, no regions to write; the kernel only checks the arguments.
                let rc = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) };
                (rc == 0).then_some(file)
            })
            .as_ref()
    }

    /// Whether dirty pages can be found here.
    pub fn available() -> bool {
        pagemap().is_some()
    }

    /// Page faults this thread has taken so far (minor and major), or `None` if the kernel does not say.
    ///
    /// A page of an instance's memory that still holds its initial contents is not present, or mapped
    /// read-only (the zero page, the module's copy-on-write image): a write to it faults, on the thread that
    /// writes, and leaves it private and writable. So when no fault happened on the thread while it wrote an
    /// instance's arguments, ran the call and read its result, the pages the call can have changed are among
    /// the private pages already known from the last scan, and the reset needs no scan.
    pub fn thread_faults() -> Option<u64> {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
        // SAFETY: getrusage writes one `rusage` into the pointer it is given, which points to one.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: getrusage succeeded, so it filled the struct in.
        let usage = unsafe { usage.assume_init() };
        let count = |n: libc::c_long| u64::try_from(n).ok();
        Some(count(usage.ru_minflt)?.wrapping_add(count(usage.ru_majflt)?))
    }

    /// Keeps the kernel from backing `memory` with huge pages. khugepaged collapses small pages into a
    /// huge page in the background, copying them: pages that were not present or read-only would become
    /// private and writable without a fault on any thread of ours, which [`thread_faults`] relies on.
    /// Returns false if the kernel refused.
    pub fn no_huge_pages(memory: &[u8]) -> bool {
        let start = memory.as_ptr() as usize;
        if memory.is_empty() || !start.is_multiple_of(4096) {
            return false;
        }
        // SAFETY: MADV_NOHUGEPAGE only sets a flag on the mappings of a range this process maps (a wasm
        // memory); it changes no contents and no protection.
        unsafe { libc::madvise(start as *mut libc::c_void, memory.len(), libc::MADV_NOHUGEPAGE) == 0 }
    }

    /// Calls `each(offset, len)` for every run of pages of `memory` that may have been written since it was
    /// mapped: present or swapped, private, not the zero page. Returns false if the scan failed (the caller
    /// must then assume every page is dirty).
    pub fn for_each(memory: &[u8], each: &mut dyn FnMut(std::ops::Range<usize>)) -> bool {
        match pagemap() {
            Some(file) => scan(file, memory, each),
            None => false,
        }
    }

    fn scan(file: &File, memory: &[u8], each: &mut dyn FnMut(std::ops::Range<usize>)) -> bool {
        let base = memory.as_ptr() as u64;
        let end = base + memory.len() as u64;
        let mut regions = [PageRegion::default(); 32];
        let mut start = base;
        while start < end {
            let mut arg = PmScanArg::new(start, end, &mut regions);
            // SAFETY: PAGEMAP_SCAN reads the page tables of [start, end), a range inside `memory`, which this
            // process maps; it writes at most `vec_len` regions into `regions`, which outlives the call, and
            // `walk_end` into `arg`. It changes no mapping (no write-protect flags are passed).
            let n = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) };
            let Ok(n) = usize::try_from(n) else { return false };
            for r in regions.iter().take(n) {
                let (Some(from), Some(to)) = (r.start.checked_sub(base), r.end.checked_sub(base)) else {
                    return false;
                };
                each(from as usize..(to as usize).min(memory.len()));
            }
            if arg.walk_end <= start || arg.walk_end > end {
                return false;
            }
            start = arg.walk_end;
        }
        true
    }
}

/// Without `PAGEMAP_SCAN`: no reuse.
#[cfg(not(target_os = "linux"))]
pub mod dirty {
    /// Whether dirty pages can be found here.
    pub fn available() -> bool {
        false
    }

    /// Never succeeds here.
    pub fn for_each(_memory: &[u8], _each: &mut dyn FnMut(std::ops::Range<usize>)) -> bool {
        false
    }

    /// Not known here.
    pub fn thread_faults() -> Option<u64> {
        None
    }

    /// Never succeeds here.
    pub fn no_huge_pages(_memory: &[u8]) -> bool {
        false
    }
}

/// Whether every byte of the ranges `found` lies in the ranges `known` (both sorted, each without overlaps).
pub(crate) fn covered(found: &[std::ops::Range<usize>], known: &[std::ops::Range<usize>]) -> bool {
    let mut k = known.iter().peekable();
    for r in found {
        let mut at = r.start;
        while at < r.end {
            // Skip the known ranges that end at or before `at`; the next one must start at or before it.
            while k.peek().is_some_and(|kr| kr.end <= at) {
                k.next();
            }
            match k.peek() {
                Some(kr) if kr.start <= at => at = kr.end,
                _ => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::covered;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn covered_needs_every_byte_inside_the_known_ranges() {
        let known = [4096..12288, 20480..24576];
        assert!(covered(&[], &known));
        assert!(covered(&[4096..8192, 8192..12288, 20480..24576], &known));
        assert!(covered(&[4096..12288], &[4096..8192, 8192..12288]), "adjacent known ranges cover a run");
        assert!(!covered(&[0..4096], &known));
        assert!(!covered(&[8192..16384], &known), "runs past the end of a known range");
        assert!(!covered(&[12288..16384], &known), "between two known ranges");
        assert!(!covered(&[20480..28672], &known));
        assert!(!covered(&[4096..8192], &[]));
    }
}

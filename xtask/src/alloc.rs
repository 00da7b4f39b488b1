//! The global allocator: mimalloc, wrapped to count live heap bytes and their peak (for the benchmark's
//! peak-memory column). Two relaxed atomic operations per allocation; nothing else changes.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

use mimalloc::MiMalloc;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

pub struct Counting;

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to mimalloc; the counters do not touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { MiMalloc.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grow(new_size);
        }
        p
    }
}

/// `mi_option_purge_delay` in `mi_option_t` (the same index in mimalloc 2 and 3; libmimalloc-sys names no
/// constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped instead of returning it to the OS a while after it is freed (1 s: the default
/// of mimalloc 3, which libmimalloc-sys builds). A training step allocates and frees activation buffers of
/// tens of MB; purged pages come back as page faults and kernel zeroing on the next step, measured at
/// 20–30 % of an MNIST step. The process keeps its peak heap mapped instead. Call first thing in `main`.
pub fn keep_freed_memory() {
    // SAFETY: sets an allocator option; mimalloc reads it on its next purge decision (thread-safe).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// The current purge delay in milliseconds (`-1`: never purge).
pub fn purge_delay() -> i64 {
    // SAFETY: reads an allocator option.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

/// Bytes live on the heap now.
pub fn current() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Restarts peak tracking from the current level and returns that level.
pub fn reset_peak() -> usize {
    let now = current();
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// The highest live heap since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_we_set() {
        // The option index is taken from mimalloc.h. mimalloc reads `MIMALLOC_PURGE_DELAY` into exactly this
        // option, so where the variable is set (`cargo test` sets it to -1 through .cargo/config.toml) the
        // index must read it back; unset, it must read the built mimalloc 3's default of 1000 ms (2's was 10;
        // the neighbouring options' defaults are 1 and 0). Either way a wrong index fails here.
        let expected = match std::env::var("MIMALLOC_PURGE_DELAY") {
            Ok(v) => v
                .trim()
                .parse::<i64>()
                .expect("MIMALLOC_PURGE_DELAY is a number"),
            Err(_) => 1000,
        };
        assert_eq!(super::purge_delay(), expected);
        super::keep_freed_memory();
        assert_eq!(super::purge_delay(), -1);
    }
}

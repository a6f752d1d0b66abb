//! The memory allocator of a plugin built for `wasm32-unknown-unknown`.
//!
//! The host runs every hook call in a fresh instance and drops it afterwards, so nothing a
//! plugin allocates needs to outlive the call, and giving memory back is pointless. The
//! arena hands out the linear memory from the end of the static data (`__heap_base`) on,
//! one block after the other: an allocation is an alignment and an addition. Only the
//! last block is given back (a temporary freed at once, a vector shrunk) or grown in place
//! (a vector pushed to); anything else freed stays where it is until the instance goes.
//! The initial memory (4 MiB, `.cargo/config.toml`) is used before any `memory.grow`, so a
//! call that stays within it never changes the host's page protections.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;

const PAGE: usize = 64 * 1024;

/// A bump allocator over the instance's linear memory. One thread only: a component
/// instance has no threads.
pub struct Arena {
    /// The first free byte; 0 before the first allocation.
    next: Cell<usize>,
    /// The end of the linear memory.
    end: Cell<usize>,
}

// SAFETY: a WebAssembly instance without the threads proposal runs one thread.
unsafe impl Sync for Arena {}

unsafe extern "C" {
    /// Where the linker put the end of the static data and the stack.
    static __heap_base: u8;
}

impl Arena {
    /// An arena that starts at its first allocation.
    pub const fn new() -> Self {
        Arena {
            next: Cell::new(0),
            end: Cell::new(0),
        }
    }

    /// Makes sure the memory reaches `to`, growing it if need be.
    fn reach(&self, to: usize) -> bool {
        if to <= self.end.get() {
            return true;
        }
        let pages = (to - self.end.get()).div_ceil(PAGE);
        if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
            return false;
        }
        self.end.set(memory_end());
        true
    }
}

/// The end of the linear memory (4 GiB, the most a 32-bit memory has, is `usize::MAX`).
fn memory_end() -> usize {
    core::arch::wasm32::memory_size(0).saturating_mul(PAGE)
}

impl Default for Arena {
    fn default() -> Self {
        Arena::new()
    }
}

unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut next = self.next.get();
        if next == 0 {
            // Only the symbol's address is taken, never its value.
            next = core::ptr::addr_of!(__heap_base) as usize;
            self.end.set(memory_end());
        }
        // Where the block starts and ends; `None` past the end of a 32-bit address space.
        let block = next
            .checked_next_multiple_of(layout.align())
            .and_then(|start| Some((start, start.checked_add(layout.size())?)));
        match block {
            Some((start, end)) if self.reach(end) => {
                self.next.set(end);
                start as *mut u8
            }
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ptr as usize + layout.size() == self.next.get() {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let start = ptr as usize;
        if start + layout.size() == self.next.get() {
            // The last block grows or shrinks where it is.
            return match start.checked_add(new_size) {
                Some(end) if self.reach(end) => {
                    self.next.set(end);
                    ptr
                }
                _ => core::ptr::null_mut(),
            };
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: the caller's layout with the new size is valid (GlobalAlloc::realloc).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and at least `layout.size()` long; the new one
            // lies after the old one.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size()) };
        }
        new
    }
}

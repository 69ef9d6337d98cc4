//! Copy buffers, reused per worker thread.
//!
//! A copying burst needs a buffer only while it moves data. Allocating (and zeroing) 32 KiB
//! for every small request would cost more than the request itself, so each worker thread
//! keeps a short free list: a burst borrows one and the guard puts it back when the burst
//! ends, however it ends. Worker runtimes are single-threaded, so the list needs no lock;
//! the list is bounded, so a burst of concurrency does not pin memory for ever.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Size of one copy buffer: large enough that one read drains a typical small exchange,
/// and a full read is a sign of bulk data (see `copy.rs`).
pub const COPY_BUF: usize = 32 * 1024;

/// Free buffers kept per thread (at most 32 × 32 KiB = 1 MiB per worker).
const MAX_FREE: usize = 32;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer on loan from the current thread's free list.
pub struct Buffer {
    buf: Option<Box<[u8]>>,
}

/// Borrows a buffer of [`COPY_BUF`] bytes: a free one of this thread, or a new one.
pub fn take() -> Buffer {
    let reused = FREE.try_with(|free| free.borrow_mut().pop()).ok().flatten();
    Buffer {
        buf: Some(reused.unwrap_or_else(|| vec![0u8; COPY_BUF].into_boxed_slice())),
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or(&[])
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        // During thread teardown the list may be gone already; the buffer is then just freed.
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < MAX_FREE {
                free.push(buf);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_the_free_list_is_bounded() {
        let first = take();
        let ptr = first.as_ptr();
        assert_eq!(first.len(), COPY_BUF);
        drop(first);
        let again = take();
        assert_eq!(again.as_ptr(), ptr, "the freed buffer is handed out again");
        drop(again);
        let many: Vec<Buffer> = (0..MAX_FREE + 10).map(|_| take()).collect();
        drop(many);
        let kept = FREE.with(|f| f.borrow().len());
        assert_eq!(kept, MAX_FREE);
    }
}

//! Read buffers shared by all the sessions of a thread, so that an idle
//! session holds none.
//!
//! Every read of every pump on a thread lands in the same chunk, one after
//! the other; each read is split off as a `Bytes` (no copy), which keeps its
//! chunk alive only while it is in flight. A chunk is freed once the thread
//! has moved on to a fresh one and the last of its slices is dropped. A read
//! that finds nothing (Pending) uses no room at all, so a thousand idle
//! sessions cost nothing here, where each used to keep two 16 KiB buffers.

use std::cell::RefCell;
use std::io;
use std::task::Poll;

use bytes::{Bytes, BytesMut};

/// The most one read takes (the size of the per-session buffers this replaces).
const MAX_READ: usize = 16 * 1024;
/// A fresh chunk: room for several reads, zeroed once.
const CHUNK: usize = 64 * 1024;
/// Below this much room the chunk is left to its slices and a fresh one taken.
const MIN_ROOM: usize = 2 * 1024;

thread_local! {
    static SHARED: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Runs `read` on room in this thread's shared chunk; what it read comes back as `Bytes`.
///
/// `read` gets at most [`MAX_READ`] bytes of initialised room. Whatever it
/// returns other than `Ready(Ok(n))` leaves the chunk as it was.
pub fn read_shared(
    read: impl FnOnce(&mut [u8]) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<Bytes>> {
    // Taken out for the read, so a read that reads again (it should not) gets
    // a chunk of its own rather than a double borrow.
    let mut chunk = SHARED.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if chunk.len() < MIN_ROOM {
        chunk = BytesMut::zeroed(CHUNK);
    }
    let room = chunk.len().min(MAX_READ);
    let poll = read(&mut chunk[..room]);
    let poll = poll.map(|r| r.map(|n| chunk.split_to(n.min(room)).freeze()));
    SHARED.with(|s| *s.borrow_mut() = chunk);
    poll
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(data: &'static [u8]) -> impl FnOnce(&mut [u8]) -> Poll<io::Result<usize>> {
        move |room: &mut [u8]| {
            room[..data.len()].copy_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
    }

    #[test]
    fn reads_follow_each_other_in_one_chunk_without_copying() {
        let Poll::Ready(Ok(a)) = read_shared(fill(b"hello")) else {
            panic!("read")
        };
        let Poll::Ready(Ok(b)) = read_shared(fill(b"world")) else {
            panic!("read")
        };
        assert_eq!((&a[..], &b[..]), (&b"hello"[..], &b"world"[..]));
        // Adjacent slices of the same allocation.
        assert_eq!(a.as_ptr() as usize + a.len(), b.as_ptr() as usize);
    }

    #[test]
    fn a_read_that_finds_nothing_uses_no_room() {
        let Poll::Ready(Ok(a)) = read_shared(fill(b"x")) else {
            panic!("read")
        };
        assert!(read_shared(|_| Poll::Pending).is_pending());
        let Poll::Ready(Err(_)) = read_shared(|_| Poll::Ready(Err(io::ErrorKind::Other.into())))
        else {
            panic!("error")
        };
        let Poll::Ready(Ok(b)) = read_shared(fill(b"y")) else {
            panic!("read")
        };
        assert_eq!(a.as_ptr() as usize + 1, b.as_ptr() as usize);
    }

    #[test]
    fn one_read_takes_at_most_sixteen_kib_and_a_full_chunk_is_replaced() {
        let mut seen = Vec::new();
        for _ in 0..8 {
            let Poll::Ready(Ok(b)) = read_shared(|room| {
                let n = room.len();
                Poll::Ready(Ok(n))
            }) else {
                panic!("read")
            };
            assert!(b.len() <= MAX_READ && b.len() >= MIN_ROOM);
            seen.push(b);
        }
        let total: usize = seen.iter().map(|b| b.len()).sum();
        assert_eq!(total, 8 * MAX_READ);
    }
}

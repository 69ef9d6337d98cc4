//! One direction of a connection as a hand-written state machine: read from the source,
//! deliver everything to the destination, pass the FIN on at the end.
//!
//! It is polled, not awaited: waiting uses the sockets' own waker slots
//! (`poll_read_ready` / `poll_write_ready`) instead of readiness futures, so an idle
//! connection's task stays a few hundred bytes, and each wake-up does only the syscalls that
//! move data. Readiness polls spend tokio's cooperative budget, so a bulk transfer yields
//! to the other tasks of its worker.
//!
//! Whether data goes through a pipe (`splice(2)`) or a buffer is decided per direction from
//! what it carries: it starts by copying (a small request or reply costs two syscalls through
//! a buffer and three through a pipe, plus the pipe's own cost), switches to splicing once a
//! read fills the whole buffer, and goes back to copying after a splice burst that moved less
//! than a buffer. A burst borrows its pipe or buffer and gives it back as soon as the source
//! would block, so an idle connection holds neither. A bulk burst that finds no pipe (the
//! pool is at its bound or backing off after a refusal) copies to its end and asks again
//! only in the next burst.

use std::io::{self, Read as _};
use std::os::fd::AsFd;
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::buffers::{self, Buffer};
use super::copy::{ForwardError, Op, Side};
use super::handoff::{DirectionState, FrozenDirection};
use crate::sys::{Pipe, PipePool, PooledPipe};

/// A splice burst that moves less than this goes back to copying: one buffered read would
/// have carried it with fewer, cheaper syscalls.
const SPLICE_WORTH: u64 = buffers::COPY_BUF as u64;

/// What a pump may use: the pipe pool, and whether splicing is allowed at all.
#[derive(Clone, Copy)]
pub struct Means<'p> {
    pub pipes: &'p PipePool,
    pub may_splice: bool,
}

/// The state of one direction.
pub struct Pump<'p> {
    src_side: Side,
    dst_side: Side,
    /// The direction carries bulk data: bursts splice when a pipe can be had.
    bulk: bool,
    pipe: Option<PooledPipe<'p>>,
    buf: Option<Buffer>,
    /// Bytes of `buf` read and not yet delivered: `buf[start..end]`.
    start: usize,
    end: usize,
    /// Bytes the current splice burst moved.
    burst: u64,
    /// The pool had no pipe for this burst; it copies to its end.
    no_pipe: bool,
    /// The source ended; the FIN is passed on once everything is delivered.
    eof: bool,
    done: bool,
    /// Bytes delivered to the destination.
    pub moved: u64,
    /// Set whenever bytes move; the connection's idle clock reads and clears it.
    pub touched: bool,
}

impl<'p> Pump<'p> {
    pub fn new(src_side: Side, dst_side: Side) -> Pump<'p> {
        Pump {
            src_side,
            dst_side,
            bulk: false,
            pipe: None,
            buf: None,
            start: 0,
            end: 0,
            burst: 0,
            no_pipe: false,
            eof: false,
            done: false,
            moved: 0,
            touched: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the source has ended (its FIN came), delivered on or not.
    pub fn saw_eof(&self) -> bool {
        self.eof
    }

    /// Bytes read from the source and not yet delivered.
    pub fn held(&self) -> usize {
        match &self.pipe {
            Some(pipe) => pipe.held(),
            None => self.end - self.start,
        }
    }

    /// Moves data until the source would block (`Pending`), the direction is finished
    /// (`Ready(Ok)`), or either side fails. `other_done`: the opposite direction has ended,
    /// so both sockets close as soon as this one ends.
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        means: Means<'p>,
        other_done: bool,
    ) -> Poll<Result<(), ForwardError>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.poll_deliver_held(cx, dst))?;
            if self.eof {
                self.done = true;
                self.end_burst();
                // When the other direction has ended too, the connection closes right away,
                // and close() sends the FIN itself: both receive queues are empty (each
                // source was read to its end), so it is a graceful close, not a reset.
                if other_done {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(self.pass_fin(dst));
            }
            match src.poll_read_ready(cx) {
                Poll::Pending => {
                    // Nothing held and nothing to read: the burst is over.
                    self.end_burst();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.src_err(e))),
                Poll::Ready(Ok(())) => {}
            }
            if self.bulk && means.may_splice && self.pipe.is_none() && !self.no_pipe {
                match means.pipes.take() {
                    Some(pipe) => {
                        self.buf = None;
                        self.pipe = Some(pipe);
                    }
                    // Asked once per burst: the pool said no (at its bound, or the kernel
                    // refused lately), and asking again on every read would only cost.
                    None => self.no_pipe = true,
                }
            }
            self.fill(src, means)?;
        }
    }

    /// Moves to `dst` everything this direction holds (in its pipe or buffer); `Pending`
    /// while `dst` has no room.
    fn poll_deliver_held(
        &mut self,
        cx: &mut Context<'_>,
        dst: &TcpStream,
    ) -> Poll<Result<(), ForwardError>> {
        while self.held() > 0 {
            ready!(dst.poll_write_ready(cx)).map_err(|e| self.dst_err(Op::Write, e))?;
            self.deliver(dst)?;
        }
        Poll::Ready(Ok(()))
    }

    /// After the connection failed (see `abort.rs`): moves to `dst` what this direction
    /// holds and what `src` still has queued, without waiting for `src` to send more, and
    /// never passes the FIN on. A source that was reset gives its queued bytes first, then
    /// the error or end of stream; one that is still up (the failure was elsewhere) says it
    /// would block. `Pending` only while `dst` has no room.
    pub fn poll_salvage(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
    ) -> Poll<Result<(), ForwardError>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.poll_deliver_held(cx, dst))?;
            if self.eof {
                self.done = true;
                self.end_burst();
                return Poll::Ready(Ok(()));
            }
            // Straight to the socket, not through tokio's readiness: the readiness of a reset
            // socket may not have been seen yet, and this read must not wait for it.
            let read = match &mut self.pipe {
                Some(pipe) => pipe.fill_from(src.as_fd()),
                None => {
                    let buf = self.buf.get_or_insert_with(buffers::take);
                    (&*socket2::SockRef::from(src)).read(buf)
                }
            };
            match read {
                Ok(n) if n > 0 => {
                    if self.pipe.is_none() {
                        (self.start, self.end) = (0, n);
                    }
                    self.touched = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // End of stream, would block, or the error itself: nothing more to salvage.
                Ok(_) | Err(_) => self.eof = true,
            }
        }
    }

    /// One read from the source into the pipe or the buffer.
    fn fill(&mut self, src: &TcpStream, means: Means<'p>) -> Result<(), ForwardError> {
        if let Some(pipe) = &mut self.pipe {
            // The pipe is empty here, so WouldBlock means the source is drained, and try_io
            // clearing the readiness is right.
            match src.try_io(Interest::READABLE, || pipe.fill_from(src.as_fd())) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.burst += n as u64;
                    self.touched = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.src_err(e)),
            }
            return Ok(());
        }
        let buf = self.buf.get_or_insert_with(buffers::take);
        match read_once(src, buf) {
            Ok(Read::Eof) => self.eof = true,
            Ok(Read::Empty) => {}
            Ok(Read::Data { n, drained }) => {
                (self.start, self.end) = (0, n);
                self.touched = true;
                if !drained && n == buf.len() && means.may_splice {
                    self.bulk = true;
                }
            }
            Err(e) => return Err(self.src_err(e)),
        }
        Ok(())
    }

    /// One write of held bytes to the destination.
    fn deliver(&mut self, dst: &TcpStream) -> Result<(), ForwardError> {
        let written = match (&mut self.pipe, &self.buf) {
            (Some(pipe), _) => dst.try_io(Interest::WRITABLE, || pipe.drain_into(dst.as_fd())),
            (None, Some(buf)) => dst.try_write(&buf[self.start..self.end]),
            (None, None) => Ok(0),
        };
        match written {
            Ok(w) => {
                if self.pipe.is_none() {
                    self.start += w;
                }
                self.moved += w as u64;
                self.touched = true;
                Ok(())
            }
            // Readiness was cleared; the next poll_write_ready waits for room.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(self.dst_err(Op::Write, e)),
        }
    }

    /// A direction resumed from a frozen state (a binary upgrade, or a handover that
    /// failed): the pipe that holds its undelivered bytes joins `pipes`, and it delivers
    /// them before reading more.
    pub fn thaw(
        src_side: Side,
        dst_side: Side,
        frozen: FrozenDirection,
        pipes: &'p PipePool,
    ) -> Pump<'p> {
        let mut pump = Pump::new(src_side, dst_side);
        let DirectionState {
            moved,
            eof,
            done,
            bulk,
        } = frozen.state;
        (pump.moved, pump.eof, pump.done, pump.bulk) = (moved, eof, done, bulk);
        pump.pipe = frozen.pipe.map(|pipe| pipes.adopt(pipe));
        pump
    }

    /// The bytes a buffer holds, written into a fresh pipe so that they can be handed over
    /// as a descriptor; `None` when the buffer holds nothing (or there is no buffer). The
    /// pump is left as it was: freezing fails whole or not at all.
    pub fn buffered_pipe(&self) -> io::Result<Option<Pipe>> {
        let held = match &self.buf {
            Some(buf) if self.end > self.start => &buf[self.start..self.end],
            _ => return Ok(None),
        };
        let mut pipe =
            Pipe::new(crate::sys::pipe::MIN_USEFUL_CAPACITY).map_err(io::Error::other)?;
        pipe.fill_from_bytes(held)?;
        Ok(Some(pipe))
    }

    /// Freezes the direction: what it holds leaves in `fresh` (from [`Pump::buffered_pipe`])
    /// or in the pipe it was splicing through; the pump is empty afterwards.
    pub fn freeze(&mut self, fresh: Option<Pipe>) -> FrozenDirection {
        let spliced = self.pipe.take().and_then(|p| match p.held() {
            0 => None,
            _ => p.detach(),
        });
        self.buf = None;
        (self.start, self.end) = (0, 0);
        FrozenDirection {
            pipe: spliced.or(fresh),
            state: DirectionState {
                moved: self.moved,
                eof: self.eof,
                done: self.done,
                bulk: self.bulk,
            },
        }
    }

    /// Gives the pipe and buffer back; a splice burst that moved little ends the bulk mode.
    fn end_burst(&mut self) {
        self.no_pipe = false;
        if self.pipe.take().is_some() {
            self.bulk = self.burst >= SPLICE_WORTH;
            self.burst = 0;
        }
        self.buf = None;
        (self.start, self.end) = (0, 0);
    }

    /// Every byte is delivered: pass the FIN on. The peer may already be gone (ENOTCONN),
    /// which is not this direction's failure.
    fn pass_fin(&self, dst: &TcpStream) -> Result<(), ForwardError> {
        match socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(self.dst_err(Op::Shutdown, e)),
        }
    }

    fn src_err(&self, source: io::Error) -> ForwardError {
        ForwardError::Io {
            side: self.src_side,
            op: Op::Read,
            source,
        }
    }

    fn dst_err(&self, op: Op, source: io::Error) -> ForwardError {
        ForwardError::Io {
            side: self.dst_side,
            op,
            source,
        }
    }
}

/// What one read into a buffer found.
pub(super) enum Read {
    /// End of stream.
    Eof,
    /// Nothing read: the source would block (readiness cleared) or the read was interrupted
    /// (readiness kept, so the next poll reads again).
    Empty,
    /// `n` bytes. `drained`: they did not fill the buffer, and a stream socket returns less
    /// than asked only when its queue is empty, so readiness was cleared with the read —
    /// saving the read that would only say EAGAIN.
    Data { n: usize, drained: bool },
}

/// Reads once into `buf`, clearing the source's readiness when the read proves it drained.
pub(super) fn read_once(src: &TcpStream, buf: &mut [u8]) -> io::Result<Read> {
    let mut short = None;
    let result = src.try_io(Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(src)).read(buf)?;
        if n > 0 && n < buf.len() {
            short = Some(n);
            // Reported as WouldBlock so that tokio clears the readiness it saw. Data that
            // arrives later raises a new edge, and readiness with it.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (result, short) {
        (_, Some(n)) => Ok(Read::Data { n, drained: true }),
        (Ok(0), None) => Ok(Read::Eof),
        (Ok(n), None) => Ok(Read::Data { n, drained: false }),
        (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => Ok(Read::Empty),
        (Err(e), None) if e.kind() == io::ErrorKind::Interrupted => Ok(Read::Empty),
        (Err(e), None) => Err(e),
    }
}

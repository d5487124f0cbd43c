//! Reading a few bytes of each step's output back without a blocking wait per step: a ring of
//! mappable staging buffers. A step is submitted with a copy of its result into the next slot and
//! the slot's mapping is started at once; the host reads the slot later (usually while the next
//! steps run), waiting only if the GPU has not finished that step yet.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use super::pipeline::encode_pass;
use super::{Context, Dispatch, GpuBuffer};
use crate::error::{Error, Result};

const IDLE: u8 = 0;
const PENDING: u8 = 1;
const MAPPED: u8 = 2;
const FAILED: u8 = 3;

struct RingSlot {
    buf: wgpu::Buffer,
    state: Arc<AtomicU8>,
    submission: Option<wgpu::SubmissionIndex>,
    ticket: u64,
}

/// `slots` staging buffers of `bytes` each. Tickets must be read in order, at most `slots`
/// outstanding at once.
pub struct ReadRing {
    slots: Vec<RingSlot>,
    bytes: u64,
    next: u64,
}

/// A step whose bytes will come back through a [`ReadRing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

impl Context {
    /// A ring of `slots` mappable buffers of `bytes` (a multiple of 4) each.
    pub fn read_ring(&self, slots: usize, bytes: u64) -> Result<ReadRing> {
        if slots == 0 || bytes == 0 || !bytes.is_multiple_of(4) {
            return Err(Error::shape("read_ring", format!("{slots} slots of {bytes} bytes")));
        }
        let slots = (0..slots)
            .map(|_| RingSlot {
                buf: self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("read ring"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                state: Arc::new(AtomicU8::new(IDLE)),
                submission: None,
                ticket: 0,
            })
            .collect();
        Ok(ReadRing { slots, bytes, next: 0 })
    }

    /// Encode `dispatches` into one pass, copy the ring's `bytes` of `src` at byte `offset` into the
    /// next slot, submit, and start mapping the slot. Fails if that slot's last ticket was not read.
    pub fn submit_and_read(
        &self,
        ring: &mut ReadRing,
        dispatches: &[&Dispatch],
        src: &GpuBuffer,
        offset: u64,
    ) -> Result<Ticket> {
        let n = ring.slots.len() as u64;
        let bytes = ring.bytes;
        let slot = &mut ring.slots[(ring.next % n) as usize];
        if slot.state.load(Ordering::Acquire) != IDLE {
            return Err(Error::Device("read ring full: read the older tickets first".into()));
        }
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        encode_pass(&mut enc, dispatches, None);
        enc.copy_buffer_to_buffer(&src.buffer, offset, &slot.buf, 0, bytes);
        let submission = self.queue.submit([enc.finish()]);
        slot.state.store(PENDING, Ordering::Release);
        let state = slot.state.clone();
        slot.buf.map_async(wgpu::MapMode::Read, .., move |r| {
            state.store(if r.is_ok() { MAPPED } else { FAILED }, Ordering::Release);
        });
        slot.submission = Some(submission);
        slot.ticket = ring.next;
        ring.next += 1;
        self.check()?;
        Ok(Ticket(slot.ticket))
    }

    /// Whether `t`'s bytes have arrived (polls the device without blocking).
    pub fn ticket_ready(&self, ring: &ReadRing, t: Ticket) -> Result<bool> {
        self.device.poll(wgpu::PollType::Poll).map_err(|e| Error::Device(format!("poll: {e}")))?;
        Ok(ring.slot(t)?.state.load(Ordering::Acquire) != PENDING)
    }

    /// The bytes of ticket `t`, waiting for its submission if they have not arrived; the flag says
    /// whether the host had to block.
    pub fn read_ticket(&self, ring: &mut ReadRing, t: Ticket) -> Result<(Vec<u8>, bool)> {
        let waited = !self.ticket_ready(ring, t)?;
        let slot = ring.slot_mut(t)?;
        if waited {
            let submission_index = slot.submission.clone();
            self.device
                .poll(wgpu::PollType::Wait { submission_index, timeout: None })
                .map_err(|e| Error::Device(format!("poll: {e}")))?;
        }
        // The submission is done, but its map callback may be running on another thread that
        // polled the same device (tests share one): wait for it, briefly.
        let t0 = std::time::Instant::now();
        while slot.state.load(Ordering::Acquire) == PENDING && t0.elapsed() < std::time::Duration::from_secs(10) {
            self.device.poll(wgpu::PollType::Poll).map_err(|e| Error::Device(format!("poll: {e}")))?;
            std::thread::yield_now();
        }
        self.check()?;
        match slot.state.load(Ordering::Acquire) {
            MAPPED => {}
            FAILED => return Err(Error::Device("read ring: mapping failed".into())),
            _ => return Err(Error::Device("read ring: the step did not complete".into())),
        }
        let data = slot.buf.get_mapped_range(..).map_err(|e| Error::Device(format!("get_mapped_range: {e}")))?.to_vec();
        slot.buf.unmap();
        slot.state.store(IDLE, Ordering::Release);
        Ok((data, waited))
    }

    /// Drop every outstanding ticket (after a stop: the speculative steps' results are not needed).
    pub fn drain_ring(&self, ring: &mut ReadRing) -> Result<()> {
        let pending: Vec<Ticket> =
            ring.slots.iter().filter(|s| s.state.load(Ordering::Acquire) != IDLE).map(|s| Ticket(s.ticket)).collect();
        for t in pending {
            self.read_ticket(ring, t)?;
        }
        Ok(())
    }
}

impl ReadRing {
    fn slot(&self, t: Ticket) -> Result<&RingSlot> {
        let s = &self.slots[(t.0 % self.slots.len() as u64) as usize];
        if s.ticket != t.0 {
            return Err(Error::Device(format!("read ring: ticket {} was overwritten", t.0)));
        }
        Ok(s)
    }
    fn slot_mut(&mut self, t: Ticket) -> Result<&mut RingSlot> {
        let n = self.slots.len() as u64;
        let s = &mut self.slots[(t.0 % n) as usize];
        if s.ticket != t.0 {
            return Err(Error::Device(format!("read ring: ticket {} was overwritten", t.0)));
        }
        Ok(s)
    }
}

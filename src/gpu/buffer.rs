//! Storage buffers: creation within the adapter's limits, upload, readback. (Activation buffers are
//! planned and reused by the graph executor's `Arena`.)

use std::sync::Arc;

use super::Context;
use crate::error::{Error, Result};

/// A storage buffer on the device. Cheap to clone (shared handle).
#[derive(Clone, Debug)]
pub struct GpuBuffer {
    pub(crate) buffer: Arc<wgpu::Buffer>,
    /// Size in bytes (a multiple of 4).
    pub size: u64,
}

impl PartialEq for GpuBuffer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
    }
}

/// A byte range of a buffer, as bound to one shader slot.
#[derive(Clone, Debug)]
pub struct BufSlice {
    pub buf: GpuBuffer,
    pub offset: u64,
    pub size: u64,
}

impl GpuBuffer {
    pub fn slice(&self, offset: u64, size: u64) -> BufSlice {
        BufSlice { buf: self.clone(), offset, size }
    }
    pub fn whole(&self) -> BufSlice {
        BufSlice { buf: self.clone(), offset: 0, size: self.size }
    }
}

impl From<&GpuBuffer> for BufSlice {
    fn from(b: &GpuBuffer) -> BufSlice {
        b.whole()
    }
}

fn round4(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

impl Context {
    /// A zero-initialised storage buffer of `bytes` (rounded up to 4). Fails with
    /// `AllocationTooLarge` beyond the adapter's buffer size limit instead of panicking.
    pub fn buffer(&self, label: &str, bytes: u64) -> Result<GpuBuffer> {
        let size = round4(bytes.max(4));
        if size > self.limits.max_buffer_size {
            return Err(Error::AllocationTooLarge {
                what: label.to_string(),
                bytes: size,
                limit: self.limits.max_buffer_size,
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::AllocationTooLarge {
                what: format!("{label} ({e})"),
                bytes: size,
                limit: self.limits.max_buffer_size,
            });
        }
        Ok(GpuBuffer { buffer: Arc::new(buffer), size })
    }

    /// A storage buffer holding `data` (padded with zeros to a multiple of 4 bytes).
    pub fn upload(&self, label: &str, data: &[u8]) -> Result<GpuBuffer> {
        let buf = self.buffer(label, data.len() as u64)?;
        self.write(&buf, 0, data);
        Ok(buf)
    }

    /// Write bytes at `offset` (the tail is zero-padded to 4 bytes).
    pub fn write(&self, buf: &GpuBuffer, offset: u64, data: &[u8]) {
        if data.len().is_multiple_of(4) {
            self.queue.write_buffer(&buf.buffer, offset, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(round4(data.len() as u64) as usize, 0);
            self.queue.write_buffer(&buf.buffer, offset, &padded);
        }
    }

    pub fn upload_f32(&self, label: &str, data: &[f32]) -> Result<GpuBuffer> {
        self.upload(label, bytemuck::cast_slice(data))
    }

    pub fn upload_u32(&self, label: &str, data: &[u32]) -> Result<GpuBuffer> {
        self.upload(label, bytemuck::cast_slice(data))
    }

    /// Fill a buffer with one 32-bit pattern (tests poison outputs with NaN before a run).
    pub fn fill_u32(&self, buf: &GpuBuffer, value: u32) {
        let data = vec![value; (buf.size / 4) as usize];
        self.queue.write_buffer(&buf.buffer, 0, bytemuck::cast_slice(&data));
    }

    /// Copy `bytes` from the start of `src` into `dst` at `dst_offset` (queued, in order).
    pub fn copy(&self, src: &GpuBuffer, src_offset: u64, dst: &GpuBuffer, dst_offset: u64, bytes: u64) {
        self.copy_regions(&[(src, src_offset, dst, dst_offset, bytes)]);
    }

    /// Copy several regions `(src, src_offset, dst, dst_offset, bytes)` in one submission (queued,
    /// in order with earlier work).
    pub fn copy_regions(&self, regions: &[(&GpuBuffer, u64, &GpuBuffer, u64, u64)]) {
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("copy") });
        for &(src, so, dst, d, bytes) in regions {
            enc.copy_buffer_to_buffer(&src.buffer, so, &dst.buffer, d, bytes);
        }
        self.queue.submit([enc.finish()]);
    }

    /// Read back `bytes` bytes from `offset` (waits for all queued work).
    pub fn read_bytes(&self, buf: &GpuBuffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let size = round4(bytes);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        enc.copy_buffer_to_buffer(&buf.buffer, offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.sync()?;
        rx.recv()
            .map_err(|_| Error::Device("readback callback dropped".into()))?
            .map_err(|e| Error::Device(format!("map_async: {e}")))?;
        let data = staging.get_mapped_range(..).map_err(|e| Error::Device(format!("get_mapped_range: {e}")))?.to_vec();
        staging.unmap();
        Ok(data[..bytes as usize].to_vec())
    }

    pub fn read_f32(&self, buf: &GpuBuffer, offset_elems: usize, n: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(buf, offset_elems as u64 * 4, n as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    pub fn read_u32(&self, buf: &GpuBuffer, offset_elems: usize, n: usize) -> Result<Vec<u32>> {
        let bytes = self.read_bytes(buf, offset_elems as u64 * 4, n as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

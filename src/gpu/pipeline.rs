//! Kernels, the pipeline cache keyed by (shader, entry point, defines, tiers), explicit bind-group
//! layouts, and dispatch recording: a list of `Dispatch`es is encoded into one compute pass and
//! submitted once. A recorded list can be replayed; only its parameter buffers are rewritten.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{BufSlice, Context};
use crate::error::{Error, Result};

/// What a shader binding slot holds. Slot 0 is always the uniform parameter block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    Read,
    ReadWrite,
}

/// One entry point of one shader file with its defines and storage slots (bindings 1..).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub shader: &'static str,
    pub entry: &'static str,
    pub defines: Vec<(String, String)>,
    pub slots: Vec<Slot>,
}

impl Kernel {
    pub fn new(shader: &'static str, entry: &'static str, slots: &[Slot]) -> Kernel {
        Kernel { shader, entry, defines: Vec::new(), slots: slots.to_vec() }
    }
    /// Add a define; an empty value is a flag for `#ifdef`.
    pub fn define(mut self, name: &str, value: impl ToString) -> Kernel {
        self.defines.push((name.to_string(), value.to_string()));
        self
    }
    pub fn flag(self, name: &str) -> Kernel {
        self.define(name, "")
    }
    pub fn flag_if(self, on: bool, name: &str) -> Kernel {
        if on {
            self.flag(name)
        } else {
            self
        }
    }
    /// The defines a context adds for its capability tiers.
    pub fn with_caps(&self, caps: &super::Caps) -> Vec<(String, String)> {
        let mut d = self.defines.clone();
        if caps.subgroups {
            d.push(("SUBGROUPS".into(), String::new()));
        }
        d
    }
    /// The WGSL text this kernel compiles to under the given tiers.
    pub fn wgsl(&self, caps: &super::Caps) -> Result<String> {
        super::shader::preprocess(self.shader, &self.with_caps(caps))
    }
}

pub(crate) struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<Kernel, Arc<Pipeline>>>,
}

/// One recorded dispatch: pipeline, bindings, its own parameter block, workgroup counts.
pub struct Dispatch {
    pipeline: Arc<Pipeline>,
    bind_group: wgpu::BindGroup,
    params: wgpu::Buffer,
    pub workgroups: [u32; 3],
    pub label: &'static str,
    /// The shader file (stem) the pipeline was built from, e.g. `matmul_coop`.
    pub shader: &'static str,
}

/// Workgroup counts for `n` groups, folded into y when `n` exceeds the per-dimension limit.
/// Shaders recover the linear index as `wid.x + wid.y * nwg.x`.
pub fn grid(ctx: &Context, n: u32) -> [u32; 3] {
    let max = ctx.limits.workgroups_per_dim.max(1);
    if n <= max {
        [n.max(1), 1, 1]
    } else {
        let y = n.div_ceil(max);
        [n.div_ceil(y), y, 1]
    }
}

impl Context {
    fn pipeline(&self, k: &Kernel) -> Result<Arc<Pipeline>> {
        if let Some(p) = self.pipelines.map.lock().ok().and_then(|m| m.get(k).cloned()) {
            return Ok(p);
        }
        let code = k.wgsl(&self.caps)?;
        let label = format!("{}::{}", k.shader, k.entry);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(code.into()),
        });
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, s) in k.slots.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: *s == Slot::Read },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(k.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { shader: label, msg: e.to_string() });
        }
        let p = Arc::new(Pipeline { pipeline, layout });
        if let Ok(mut m) = self.pipelines.map.lock() {
            m.insert(k.clone(), p.clone());
        }
        Ok(p)
    }

    /// Record one dispatch of `k` with `params` (a plain-old-data block, padded to 16 bytes)
    /// and `bufs` bound to slots 1.. in order. Checks every binding against the adapter limits.
    pub fn dispatch(&self, k: &Kernel, params: &[u8], bufs: &[BufSlice], workgroups: [u32; 3]) -> Result<Dispatch> {
        if bufs.len() != k.slots.len() {
            return Err(Error::shape(k.entry, format!("{} buffers for {} slots", bufs.len(), k.slots.len())));
        }
        for (i, b) in bufs.iter().enumerate() {
            if b.size > self.limits.max_binding {
                return Err(Error::LimitTooSmall {
                    what: format!("storage binding {} of {}::{}", i + 1, k.shader, k.entry),
                    requested: b.size,
                    available: self.limits.max_binding,
                });
            }
            if b.offset % self.limits.storage_offset_alignment as u64 != 0 || b.offset + b.size > b.buf.size {
                return Err(Error::shape(
                    k.entry,
                    format!(
                        "binding {} range {}+{} of a {}-byte buffer (alignment {})",
                        i + 1,
                        b.offset,
                        b.size,
                        b.buf.size,
                        self.limits.storage_offset_alignment
                    ),
                ));
            }
        }
        let pipeline = self.pipeline(k)?;
        let mut block = params.to_vec();
        block.resize(params.len().div_ceil(16).max(1) * 16, 0);
        let pbuf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(k.entry),
            size: block.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&pbuf, 0, &block);
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: pbuf.as_entire_binding() }];
        for (i, b) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &b.buf.buffer,
                    offset: b.offset,
                    size: std::num::NonZeroU64::new(b.size),
                }),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(k.entry),
            layout: &pipeline.layout,
            entries: &entries,
        });
        Ok(Dispatch { pipeline, bind_group, params: pbuf, workgroups, label: k.entry, shader: k.shader })
    }

    /// Rewrite a recorded dispatch's parameter block (same size as when it was recorded).
    pub fn set_params(&self, d: &Dispatch, params: &[u8]) {
        let mut block = params.to_vec();
        block.resize(d.params.size() as usize, 0);
        self.queue.write_buffer(&d.params, 0, &block);
    }

    /// Encode `dispatches` into one compute pass and submit (no wait, no readback).
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        encode_pass(&mut enc, dispatches, None);
        self.queue.submit([enc.finish()]);
        self.check()
    }

    /// Run `dispatches` with each in its own timed pass, wait, and return each one's GPU time in
    /// seconds (profiling: separate passes add barriers, so the sum exceeds one pass's time).
    /// `None` without the timestamp tier.
    pub fn run_profiled(&self, dispatches: &[&Dispatch]) -> Result<Option<Vec<f64>>> {
        if !self.caps.timestamps || dispatches.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(dispatches.len());
        for part in dispatches.chunks(1024) {
            let n = part.len() as u32;
            let qs = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * n,
            });
            let bytes = 16 * n as u64;
            let buffer = |usage| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("profile"),
                    size: bytes,
                    usage,
                    mapped_at_creation: false,
                })
            };
            let resolved = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
            let staging = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
            let mut enc =
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("profile") });
            for (i, d) in part.iter().enumerate() {
                encode_pass(&mut enc, &[d], Some((&qs, 2 * i as u32)));
            }
            enc.resolve_query_set(&qs, 0..2 * n, &resolved, 0);
            enc.copy_buffer_to_buffer(&resolved, 0, &staging, 0, bytes);
            self.queue.submit([enc.finish()]);
            let (tx, rx) = std::sync::mpsc::channel();
            staging.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            self.sync()?;
            rx.recv()
                .map_err(|_| Error::Device("profile readback dropped".into()))?
                .map_err(|e| Error::Device(format!("map_async: {e}")))?;
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(
                &staging.get_mapped_range(..).map_err(|e| Error::Device(format!("get_mapped_range: {e}")))?,
            );
            let period = self.queue.get_timestamp_period() as f64 * 1e-9;
            out.extend(ticks.chunks_exact(2).map(|t| t[1].saturating_sub(t[0]) as f64 * period));
        }
        Ok(Some(out))
    }

    /// Run `dispatches` as one compute pass, wait, and return the GPU time between the pass's
    /// start and end timestamps in seconds (benchmarks: excludes the CPU's encoding, which a
    /// wall clock would count for short kernels). `None` without the timestamp tier.
    pub fn run_timed(&self, dispatches: &[&Dispatch]) -> Result<Option<f64>> {
        if !self.caps.timestamps {
            self.run(dispatches)?;
            self.sync()?;
            return Ok(None);
        }
        let qs = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timer"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let buffer = |usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timer"),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolved = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let staging = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("timed") });
        {
            let writes = wgpu::ComputePassTimestampWrites {
                query_set: &qs,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            };
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timed"),
                timestamp_writes: Some(writes),
            });
            for d in dispatches {
                pass.set_pipeline(&d.pipeline.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                let [x, y, z] = d.workgroups;
                pass.dispatch_workgroups(x, y, z);
            }
        }
        enc.resolve_query_set(&qs, 0..2, &resolved, 0);
        enc.copy_buffer_to_buffer(&resolved, 0, &staging, 0, 16);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.sync()?;
        rx.recv()
            .map_err(|_| Error::Device("timer callback dropped".into()))?
            .map_err(|e| Error::Device(format!("map_async: {e}")))?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(
            &staging.get_mapped_range(..).map_err(|e| Error::Device(format!("get_mapped_range: {e}")))?,
        );
        staging.unmap();
        let period_ns = self.queue.get_timestamp_period() as f64;
        Ok(Some(ticks[1].saturating_sub(ticks[0]) as f64 * period_ns * 1e-9))
    }

    /// Record and run one dispatch (convenience for single ops and tests).
    pub fn run_one(&self, k: &Kernel, params: &[u8], bufs: &[BufSlice], workgroups: [u32; 3]) -> Result<()> {
        let d = self.dispatch(k, params, bufs, workgroups)?;
        self.run(&[&d])
    }
}

/// Encode `dispatches` into one compute pass of `enc`; with `timed = (queries, i)` the pass writes
/// timestamps i and i + 1 at its start and end.
pub(crate) fn encode_pass(
    enc: &mut wgpu::CommandEncoder,
    dispatches: &[&Dispatch],
    timed: Option<(&wgpu::QuerySet, u32)>,
) {
    let timestamp_writes = timed.map(|(query_set, i)| wgpu::ComputePassTimestampWrites {
        query_set,
        beginning_of_pass_write_index: Some(i),
        end_of_pass_write_index: Some(i + 1),
    });
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes });
    for d in dispatches {
        pass.set_pipeline(&d.pipeline.pipeline);
        pass.set_bind_group(0, &d.bind_group, &[]);
        let [x, y, z] = d.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

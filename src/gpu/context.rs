//! Adapter choice, device creation with the adapter's real limits, capability tiers, and error
//! capture (wgpu's default handler panics; ours records the message and returns it as an `Error`).

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// How to pick and configure the GPU. `Default` = auto backend (or `WGPU_BACKEND`), first adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// `vulkan`, `metal`, `dx12`, `gl` or `auto`; `None` reads `WGPU_BACKEND`.
    pub backend: Option<String>,
    /// Adapter by index (as listed by `zhinao devices`) or by a substring of its name.
    pub device: Option<String>,
    /// Force the f16 tier off (also `ZHINAO_NO_F16=1`).
    pub no_f16: bool,
    /// Force the subgroup tier off (also `ZHINAO_NO_SUBGROUPS=1`).
    pub no_subgroups: bool,
    /// Pretend the adapter binds at most this many bytes per storage binding (tests of the
    /// split-tensor path; also `ZHINAO_MAX_BINDING`).
    pub max_binding: Option<u64>,
    /// Cooperative-matrix (tensor-core) kernels: `None` reads `ZHINAO_COOP` (`1`/`exact` or `fast`;
    /// unset or `0`: off). They are used only where the adapter lists the configuration they need,
    /// and `ZHINAO_NO_COOP=1` forces them off whatever is asked here.
    pub coop: Option<CoopMode>,
    /// Test hook: run the cooperative-matrix kernels with their intrinsics emulated in plain WGSL
    /// (any adapter with shader-f16, e.g. lavapipe), so their tiling, conversions and epilogues are
    /// checked where no tensor cores exist. Also `ZHINAO_COOP_EMULATE=1`. Never faster.
    pub coop_emulate: bool,
    /// Request WebGPU's default compute limits where the adapter offers more: 256 invocations per
    /// workgroup (256 × 256 × 64), 256-byte storage and uniform offset alignment, 8 storage buffers
    /// per stage, 16 KiB of workgroup storage (also `ZHINAO_WEBGPU_LIMITS=1`). The device enforces
    /// them, so kernel selection and binding splits are checked here as on SwiftShader or a browser.
    pub webgpu_limits: bool,
}

/// Whether and how the cooperative-matrix (tensor-core) kernels run. They multiply f16 tiles into
/// f32 accumulators; see ARCHITECTURE.md, "Numerics".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CoopMode {
    /// SIMT kernels only.
    #[default]
    Off,
    /// Activations (and int4 weights, and attention's q and p) enter as two f16 halves, hi + lo, so
    /// results track the f32 kernels (about 2^-22 relative per input) at two to three times the MMAs.
    Exact,
    /// One f16 per activation: rounding of 2^-11 relative per input, the fastest variant.
    Fast,
}

impl CoopMode {
    fn from_env(v: &str) -> Option<CoopMode> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "0" | "off" | "no" | "false" => Some(CoopMode::Off),
            "1" | "on" | "yes" | "true" | "exact" => Some(CoopMode::Exact),
            "fast" => Some(CoopMode::Fast),
            _ => None,
        }
    }
}

/// The cooperative-matrix shape every coop kernel is written for: 16×16×16, f16 A and B, f32 C,
/// subgroup scope (the only scope wgpu 30 reports).
pub const COOP_M: u32 = 16;

/// Capability tiers decided at start. Every kernel that uses one has a path without it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
    /// Subgroup size range reported by the adapter (0 when unknown).
    pub subgroup_min: u32,
    pub subgroup_max: u32,
    /// Cooperative-matrix kernels in use (`Off` unless asked for and the adapter lists a 16×16×16
    /// f16×f16→f32 configuration with a fixed subgroup size; in `info.caps`: `Exact` when listed).
    pub coop: CoopMode,
    /// The coop kernels run emulated in plain WGSL (`GpuOptions::coop_emulate`; tests only).
    pub coop_emulated: bool,
    /// Subgroup size the coop kernels are compiled for (a workgroup is a whole number of subgroups).
    pub coop_sg: u32,
}

impl Caps {
    /// The cooperative-matrix path is on: a 16×16×16 f16×f16→f32 configuration is listed and
    /// enabled (or emulated), and the engine was asked to use it.
    pub fn coop_f16(&self) -> bool {
        self.coop != CoopMode::Off
    }
}

/// The limits this engine plans against: what the device actually granted.
#[derive(Clone, Copy, Debug)]
pub struct GpuLimits {
    pub max_buffer_size: u64,
    /// Largest range one storage binding may cover (possibly lowered by `max_binding`).
    pub max_binding: u64,
    pub storage_buffers_per_stage: u32,
    pub workgroup_storage: u32,
    pub invocations_per_workgroup: u32,
    pub workgroups_per_dim: u32,
    pub storage_offset_alignment: u32,
}

/// A description of one adapter, as `zhinao devices` prints it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub limits: GpuLimits,
    pub caps: Caps,
    pub features: String,
    /// The adapter's cooperative-matrix configurations, as `MxNxK ab->cr` (empty: none).
    pub coop_configs: Vec<String>,
}

impl AdapterSummary {
    /// The backend, and for Metal and DX12 the native device it drives: the Metal device (wgpu reports
    /// `MTLDevice.name` as the adapter name, with no driver string) and the DXGI adapter (WARP, the
    /// software rasterizer, is "Microsoft Basic Render Driver").
    pub fn backend_label(&self) -> String {
        match self.backend.as_str() {
            "Metal" => format!("Metal (Metal device \"{}\")", self.name),
            "Dx12" if self.name.contains("Microsoft Basic Render Driver") => {
                format!("Dx12 (DXGI adapter \"{}\": WARP software rasterizer)", self.name)
            }
            "Dx12" => format!("Dx12 (DXGI adapter \"{}\")", self.name),
            b => b.to_string(),
        }
    }

    /// The driver name and version, or a note that the backend reports none (Metal does not).
    pub fn driver_label(&self) -> &str {
        if self.driver.is_empty() {
            "(not reported by the backend)"
        } else {
            &self.driver
        }
    }
}

/// The GPU: one device and queue plus the pipeline cache. Shared by reference (`Arc<Context>`).
/// It keeps the instance and adapter it came from, so a front end can draw on the same device
/// (see `gpu::ui`, feature `app`).
pub struct Context {
    /// Read only by `gpu::ui` (feature `app`), which hands them to the UI renderer.
    #[cfg_attr(not(feature = "app"), allow(dead_code))]
    pub(crate) instance: wgpu::Instance,
    #[cfg_attr(not(feature = "app"), allow(dead_code))]
    pub(crate) adapter: wgpu::Adapter,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub info: AdapterSummary,
    pub caps: Caps,
    pub limits: GpuLimits,
    pub(crate) pipelines: super::pipeline::PipelineCache,
    errors: Arc<Mutex<ErrorSink>>,
    lost: Arc<Mutex<Option<String>>>,
}

/// Device errors the uncaptured-error handler recorded, split by the thread that raised them
/// (wgpu reports an error synchronously on the thread of the failing call). A front end that
/// draws on the engine's device marks its UI thread (`gpu::ui`): errors raised there (drawing,
/// surface reconfiguration) are the UI's, kept apart so they never fail an engine call.
#[derive(Default)]
struct ErrorSink {
    engine: Vec<String>,
    ui: Vec<String>,
    ui_threads: Vec<std::thread::ThreadId>,
}

/// UI errors kept at most (the oldest are dropped).
const MAX_UI_ERRORS: usize = 32;

fn env_flag(name: &str) -> bool {
    std::env::var(name).map(|v| !v.is_empty() && v != "0").unwrap_or(false)
}

fn parse_backends(name: &str) -> Result<wgpu::Backends> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => wgpu::Backends::VULKAN,
        "metal" | "mtl" => wgpu::Backends::METAL,
        "dx12" | "d3d12" => wgpu::Backends::DX12,
        "gl" | "gles" | "opengl" => wgpu::Backends::GL,
        "auto" | "all" | "primary" => wgpu::Backends::all(),
        other => return Err(Error::Input(format!("unknown backend '{other}' (vulkan, metal, dx12, gl, auto)"))),
    })
}

/// A windowing system's display connection, which a wgpu instance that presents to windows on it
/// may need (Wayland with GL does; X11, Metal, DX12 and Vulkan work without). winit's
/// `OwnedDisplayHandle` is one.
pub trait DisplayHandle: wgpu::rwh::HasDisplayHandle + std::fmt::Debug + Send + Sync + 'static {}
impl<T: wgpu::rwh::HasDisplayHandle + std::fmt::Debug + Send + Sync + 'static> DisplayHandle for T {}

fn instance(backend: Option<&str>) -> Result<wgpu::Instance> {
    instance_with(backend, None)
}

fn instance_with(backend: Option<&str>, display: Option<Box<dyn DisplayHandle>>) -> Result<wgpu::Instance> {
    let mut desc = match display {
        Some(d) => wgpu::InstanceDescriptor::new_with_display_handle_from_env(Box::new(DisplayBox(d))),
        None => wgpu::InstanceDescriptor::new_without_display_handle_from_env(),
    };
    if let Some(b) = backend {
        desc.backends = parse_backends(b)?;
    }
    Ok(wgpu::Instance::new(desc))
}

fn summarize(index: usize, adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let l = adapter.limits();
    let f = adapter.features();
    let limits = GpuLimits {
        max_buffer_size: l.max_buffer_size,
        max_binding: l.max_storage_buffer_binding_size.min(l.max_buffer_size),
        storage_buffers_per_stage: l.max_storage_buffers_per_shader_stage,
        workgroup_storage: l.max_compute_workgroup_storage_size,
        invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        workgroups_per_dim: l.max_compute_workgroups_per_dimension,
        storage_offset_alignment: l.min_storage_buffer_offset_alignment,
    };
    let coop = adapter.cooperative_matrix_properties();
    let has_coop = coop_listed(
        f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
        &coop,
        info.subgroup_min_size,
        info.subgroup_max_size,
    );
    let caps = Caps {
        shader_f16: f.contains(wgpu::Features::SHADER_F16),
        subgroups: f.contains(wgpu::Features::SUBGROUP),
        timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
        subgroup_min: info.subgroup_min_size,
        subgroup_max: info.subgroup_max_size,
        coop: if has_coop && f.contains(wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP) {
            CoopMode::Exact
        } else {
            CoopMode::Off
        },
        coop_emulated: false,
        coop_sg: info.subgroup_max_size,
    };
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        limits,
        caps,
        features: format!("{f:?}"),
        coop_configs: coop.iter().map(describe_coop).collect(),
    }
}

fn scalar_name(t: wgpu::CooperativeScalarType) -> &'static str {
    match t {
        wgpu::CooperativeScalarType::F32 => "f32",
        wgpu::CooperativeScalarType::F16 => "f16",
        wgpu::CooperativeScalarType::I32 => "i32",
        wgpu::CooperativeScalarType::U32 => "u32",
    }
}

fn describe_coop(p: &wgpu::CooperativeMatrixProperties) -> String {
    format!(
        "{}x{}x{} {}->{}{}",
        p.m_size,
        p.n_size,
        p.k_size,
        scalar_name(p.ab_type),
        scalar_name(p.cr_type),
        if p.saturating_accumulation { " (saturating)" } else { "" }
    )
}

/// The coop kernels need the feature, a listed 16×16×16 f16×f16→f32 configuration (wgpu does not
/// check a shader's shape against this list: using an unlisted one is undefined behaviour), and a
/// fixed subgroup size (a workgroup is laid out as a whole number of subgroups).
fn coop_listed(feature: bool, props: &[wgpu::CooperativeMatrixProperties], sg_min: u32, sg_max: u32) -> bool {
    let want = |p: &&wgpu::CooperativeMatrixProperties| {
        p.m_size == COOP_M
            && p.n_size == COOP_M
            && p.k_size == COOP_M
            && p.ab_type == wgpu::CooperativeScalarType::F16
            && p.cr_type == wgpu::CooperativeScalarType::F32
            && !p.saturating_accumulation
    };
    feature && props.iter().any(|p| want(&p)) && sg_min == sg_max && (1..=128).contains(&sg_max)
}

/// `l` lowered to WebGPU's default compute limits where it is higher (alignments raised to them).
fn webgpu_like(l: wgpu::Limits) -> wgpu::Limits {
    let d = wgpu::Limits::default();
    wgpu::Limits {
        max_compute_invocations_per_workgroup: l
            .max_compute_invocations_per_workgroup
            .min(d.max_compute_invocations_per_workgroup),
        max_compute_workgroup_size_x: l.max_compute_workgroup_size_x.min(d.max_compute_workgroup_size_x),
        max_compute_workgroup_size_y: l.max_compute_workgroup_size_y.min(d.max_compute_workgroup_size_y),
        max_compute_workgroup_size_z: l.max_compute_workgroup_size_z.min(d.max_compute_workgroup_size_z),
        max_compute_workgroup_storage_size: l
            .max_compute_workgroup_storage_size
            .min(d.max_compute_workgroup_storage_size),
        max_storage_buffers_per_shader_stage: l
            .max_storage_buffers_per_shader_stage
            .min(d.max_storage_buffers_per_shader_stage),
        min_storage_buffer_offset_alignment: l
            .min_storage_buffer_offset_alignment
            .max(d.min_storage_buffer_offset_alignment),
        min_uniform_buffer_offset_alignment: l
            .min_uniform_buffer_offset_alignment
            .max(d.min_uniform_buffer_offset_alignment),
        ..l
    }
}

/// Every adapter the chosen backends expose, in enumeration order.
pub fn list_adapters(backend: Option<&str>) -> Result<Vec<AdapterSummary>> {
    let inst = instance(backend)?;
    let adapters = pollster::block_on(inst.enumerate_adapters(inst_backends(backend)?));
    Ok(adapters.iter().enumerate().map(|(i, a)| summarize(i, a)).collect())
}

fn inst_backends(backend: Option<&str>) -> Result<wgpu::Backends> {
    match backend {
        Some(b) => parse_backends(b),
        None => Ok(wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())),
    }
}

/// Forwards to the boxed handle (wgpu wants its own boxed trait object).
#[derive(Debug)]
struct DisplayBox(Box<dyn DisplayHandle>);

impl wgpu::rwh::HasDisplayHandle for DisplayBox {
    fn display_handle(&self) -> std::result::Result<wgpu::rwh::DisplayHandle<'_>, wgpu::rwh::HandleError> {
        self.0.display_handle()
    }
}

impl Context {
    /// Pick an adapter, request its real limits and the features of the enabled tiers.
    pub fn new(opts: &GpuOptions) -> Result<Arc<Context>> {
        Self::create(opts, None)
    }

    /// Like [`Context::new`], with the instance tied to a windowing system's display, for a front
    /// end that draws its windows on the engine's device (the desktop app).
    pub fn with_display(opts: &GpuOptions, display: Box<dyn DisplayHandle>) -> Result<Arc<Context>> {
        Self::create(opts, Some(display))
    }

    fn create(opts: &GpuOptions, display: Option<Box<dyn DisplayHandle>>) -> Result<Arc<Context>> {
        let backend = opts.backend.clone().filter(|b| b != "auto");
        let inst = instance_with(backend.as_deref(), display)?;
        let adapters = pollster::block_on(inst.enumerate_adapters(inst_backends(backend.as_deref())?));
        let wanted = backend.clone().or_else(|| std::env::var("WGPU_BACKEND").ok());
        let suffix = wanted.as_deref().map(|b| format!(" for backend '{b}'")).unwrap_or_default();
        if adapters.is_empty() {
            return Err(Error::NoAdapter(format!(
                "{suffix} (on Linux install a Vulkan driver, e.g. Debian's mesa-vulkan-drivers)"
            )));
        }
        let index = match opts.device.as_deref().or(std::env::var("ZHINAO_DEVICE").ok().as_deref()) {
            None => {
                // Prefer a discrete GPU, then integrated, then anything (CPU/software last).
                let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
                    wgpu::DeviceType::DiscreteGpu => 0,
                    wgpu::DeviceType::IntegratedGpu => 1,
                    wgpu::DeviceType::VirtualGpu => 2,
                    wgpu::DeviceType::Other => 3,
                    wgpu::DeviceType::Cpu => 4,
                };
                let backend_rank = |a: &wgpu::Adapter| (a.get_info().backend == wgpu::Backend::Gl) as u32;
                (0..adapters.len()).min_by_key(|&i| (backend_rank(&adapters[i]), rank(&adapters[i]))).unwrap_or(0)
            }
            Some(sel) => match sel.parse::<usize>() {
                Ok(i) if i < adapters.len() => i,
                Ok(i) => {
                    return Err(Error::NoAdapter(format!(
                        ": adapter index {i} requested, {} available (see `zhinao devices`)",
                        adapters.len()
                    )))
                }
                Err(_) => adapters
                    .iter()
                    .position(|a| a.get_info().name.to_lowercase().contains(&sel.to_lowercase()))
                    .ok_or_else(|| Error::NoAdapter(format!(" named like '{sel}' (see `zhinao devices`)")))?,
            },
        };
        let adapter = adapters[index].clone();
        let adapter = &adapter;
        let mut info = summarize(index, adapter);
        let mut caps = info.caps;
        if opts.no_f16 || env_flag("ZHINAO_NO_F16") {
            caps.shader_f16 = false;
        }
        if opts.no_subgroups || env_flag("ZHINAO_NO_SUBGROUPS") {
            caps.subgroups = false;
        }
        let asked = match opts.coop {
            Some(m) => m,
            None => match std::env::var("ZHINAO_COOP") {
                Ok(v) => CoopMode::from_env(&v)
                    .ok_or_else(|| Error::Input(format!("ZHINAO_COOP={v}: expected 1, exact, fast or 0")))?,
                Err(_) => CoopMode::Off,
            },
        };
        let emulate = opts.coop_emulate || env_flag("ZHINAO_COOP_EMULATE");
        caps.coop = CoopMode::Off;
        if !env_flag("ZHINAO_NO_COOP") && asked != CoopMode::Off {
            if emulate && caps.shader_f16 {
                // Emulated intrinsics need only f16 in workgroup memory; the "subgroup" is a fixed
                // block of 32 invocations, as on NVIDIA.
                caps.coop = asked;
                caps.coop_emulated = true;
                caps.coop_sg = 32;
            } else if !emulate && info.caps.coop_f16() && caps.shader_f16 && caps.subgroups {
                caps.coop = asked;
            }
        }
        let required_limits = if opts.webgpu_limits || env_flag("ZHINAO_WEBGPU_LIMITS") {
            webgpu_like(adapter.limits())
        } else {
            adapter.limits()
        };
        // Kernels bind at most 8 storage buffers; workgroup scratch at most 16 KiB.
        let need_storage = 8;
        if info.limits.storage_buffers_per_stage < need_storage {
            return Err(Error::LimitTooSmall {
                what: "storage buffers per shader stage".into(),
                requested: need_storage as u64,
                available: info.limits.storage_buffers_per_stage as u64,
            });
        }
        if info.limits.workgroup_storage < 16384 {
            return Err(Error::LimitTooSmall {
                what: "workgroup storage bytes".into(),
                requested: 16384,
                available: info.limits.workgroup_storage as u64,
            });
        }
        let mut features = wgpu::Features::empty();
        if caps.shader_f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        if caps.subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        if caps.timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let native_coop = caps.coop_f16() && !caps.coop_emulated;
        let experimental = if native_coop {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            // SAFETY: wgpu marks cooperative matrices experimental: a shader whose matrix shape the
            // adapter does not list is undefined behaviour. The coop kernels use only the
            // 16×16×16 f16×f16→f32 shape, and `coop_listed` required the adapter to list it.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("zhinao"),
            required_features: features,
            required_limits,
            experimental_features: experimental,
            ..Default::default()
        }))
        .map_err(|e| Error::Device(format!("request_device on '{}': {e}", info.name)))?;

        let errors = Arc::new(Mutex::new(ErrorSink::default()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            // The description alone is often just "Validation Error": keep the causes too.
            let mut msg = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                msg.push_str(": ");
                msg.push_str(&c.to_string());
                cause = c.source();
            }
            if let Ok(mut sink) = sink.lock() {
                if sink.ui_threads.contains(&std::thread::current().id()) {
                    if sink.ui.len() >= MAX_UI_ERRORS {
                        sink.ui.remove(0);
                    }
                    sink.ui.push(msg);
                } else {
                    sink.engine.push(msg);
                }
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_sink.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });

        let granted = device.limits();
        let mut limits = info.limits;
        limits.max_buffer_size = granted.max_buffer_size;
        limits.max_binding = granted.max_storage_buffer_binding_size.min(granted.max_buffer_size);
        limits.storage_buffers_per_stage = granted.max_storage_buffers_per_shader_stage;
        limits.workgroup_storage = granted.max_compute_workgroup_storage_size;
        limits.invocations_per_workgroup = granted.max_compute_invocations_per_workgroup;
        limits.storage_offset_alignment = granted.min_storage_buffer_offset_alignment;
        let forced = opts.max_binding.or_else(|| std::env::var("ZHINAO_MAX_BINDING").ok().and_then(|v| v.parse().ok()));
        if let Some(m) = forced {
            limits.max_binding = limits.max_binding.min(m.max(256));
        }
        // `info.caps` keeps what the adapter offers; `caps` is what this context enables.
        info.limits = limits;
        Ok(Arc::new(Context {
            instance: inst,
            adapter: adapter.clone(),
            device,
            queue,
            caps,
            limits,
            info,
            pipelines: Default::default(),
            errors,
            lost,
        }))
    }

    /// One line naming the adapter and tiers, for logs and reports.
    pub fn describe(&self) -> String {
        let coop = match (self.caps.coop, self.caps.coop_emulated) {
            (CoopMode::Off, _) => "off".to_string(),
            (m, true) => format!("{m:?} (emulated)").to_lowercase(),
            (m, false) => format!("{m:?}").to_lowercase(),
        };
        format!(
            "{} ({}, {}, {}) f16={} subgroups={} [{}..{}] timestamps={} coop={} max_binding={} MiB",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.caps.shader_f16,
            self.caps.subgroups,
            self.caps.subgroup_min,
            self.caps.subgroup_max,
            self.caps.timestamps,
            coop,
            self.limits.max_binding >> 20
        )
    }

    /// Wait for the queue and turn any recorded device error into an `Error`.
    pub fn sync(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Device(format!("poll: {e}")))?;
        self.check()
    }

    /// Report errors captured since the last check (validation, out of memory, device lost).
    pub fn check(&self) -> Result<()> {
        if let Some(msg) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::DeviceLost(msg));
        }
        let mut sink = self.errors.lock().map_err(|_| Error::Device("error sink poisoned".into()))?;
        let errs = &mut sink.engine;
        if !errs.is_empty() {
            let msg = errs.join("; ");
            errs.clear();
            return Err(Error::Device(msg));
        }
        Ok(())
    }

    /// Mark the calling thread as a UI thread: device errors raised by calls on it are the UI's
    /// ([`Context::take_ui_errors`]), not the engine's. The engine must run on other threads.
    pub fn mark_ui_thread(&self) {
        if let Ok(mut sink) = self.errors.lock() {
            let id = std::thread::current().id();
            if !sink.ui_threads.contains(&id) {
                sink.ui_threads.push(id);
            }
        }
    }

    /// Device errors raised on UI threads since the last call (for the front end's log).
    pub fn take_ui_errors(&self) -> Vec<String> {
        self.errors.lock().map(|mut s| std::mem::take(&mut s.ui)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(backend: &str, name: &str, driver: &str) -> AdapterSummary {
        AdapterSummary {
            index: 0,
            name: name.to_string(),
            backend: backend.to_string(),
            device_type: "IntegratedGpu".to_string(),
            driver: driver.to_string(),
            limits: GpuLimits {
                max_buffer_size: 1 << 30,
                max_binding: 1 << 27,
                storage_buffers_per_stage: 8,
                workgroup_storage: 32768,
                invocations_per_workgroup: 256,
                workgroups_per_dim: 65535,
                storage_offset_alignment: 256,
            },
            caps: Caps { shader_f16: true, subgroups: true, subgroup_min: 4, subgroup_max: 64, ..Default::default() },
            features: String::new(),
            coop_configs: Vec::new(),
        }
    }

    /// WebGPU-like limits lower what exceeds WebGPU's defaults and keep what is already below.
    #[test]
    fn webgpu_like_clamps_to_the_defaults() {
        let big = wgpu::Limits {
            max_compute_invocations_per_workgroup: 1024,
            max_compute_workgroup_size_x: 1024,
            min_storage_buffer_offset_alignment: 16,
            max_storage_buffer_binding_size: 1 << 30,
            ..wgpu::Limits::default()
        };
        let l = webgpu_like(big.clone());
        assert_eq!(l.max_compute_invocations_per_workgroup, 256);
        assert_eq!(l.max_compute_workgroup_size_x, 256);
        assert_eq!(l.min_storage_buffer_offset_alignment, 256);
        assert_eq!(l.max_storage_buffer_binding_size, 1 << 30, "binding sizes are left alone");
        let small = wgpu::Limits { max_compute_invocations_per_workgroup: 128, ..big };
        assert_eq!(webgpu_like(small).max_compute_invocations_per_workgroup, 128);
    }

    /// `zhinao devices` names the Metal device and the DXGI adapter (what wgpu puts in AdapterInfo).
    #[test]
    fn backend_label_names_the_native_device() {
        let m = summary("Metal", "Apple M1 Pro", "");
        assert_eq!(m.backend_label(), "Metal (Metal device \"Apple M1 Pro\")");
        assert_eq!(m.driver_label(), "(not reported by the backend)");
        let w = summary("Dx12", "Microsoft Basic Render Driver", "");
        assert!(w.backend_label().contains("WARP software rasterizer"), "{}", w.backend_label());
        assert_eq!(summary("Dx12", "NVIDIA RTX", "x").backend_label(), "Dx12 (DXGI adapter \"NVIDIA RTX\")");
        let v = summary("Vulkan", "llvmpipe", "llvmpipe Mesa 22.3.6");
        assert_eq!((v.backend_label().as_str(), v.driver_label()), ("Vulkan", "llvmpipe Mesa 22.3.6"));
    }
}

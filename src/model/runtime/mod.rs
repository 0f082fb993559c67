//! The one module that names tract: loading an ONNX file into an optimised plan, and running it.
//!
//! Everything outside speaks [`IoSpec`] and [`HostTensor`]; swapping the engine means rewriting this
//! file alone. Loading happens once, before a model is served (tract's optimiser can cost more than a
//! run, so it never happens on a request path). A plan is immutable and shared by all worker threads;
//! each run spawns its own state.

use std::path::Path;
use std::sync::Arc;

use inferd_proto::DType;
use std::time::{Duration, Instant};

use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, IntoTensor, TDim, TValue,
    TVec, Tensor, TypedFact, TypedModel, TypedSimplePlan,
};
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::multithread;

use super::{DimSpec, IoSpec};
use crate::tensor::HostTensor;
pub use single_row::Race;
use single_row::SingleRow;

mod depthwise;
mod quantize;
mod quantize_linear;
mod select;
mod single_row;
mod traps;
mod weights;
mod zero_points;

/// Why a build without the `intra-op-threads` cargo feature refuses `threads` above 1 (in
/// `serving.toml`, and here if a caller asks anyway).
pub const NO_INTRA_OP_THREADS: &str =
    "this inferd was built without intra-op threads (cargo feature `intra-op-threads`)";

/// A loaded, optimised model, ready to run on any thread.
#[derive(Debug, Clone)]
pub struct Runtime {
    plan: Arc<TypedSimplePlan>,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
    weight_bytes: u64,
    repairs: Vec<String>,
    /// tract's intra-op pool for this model (`threads` > 1 in its `serving.toml`); `None`: every
    /// execution stays on the worker thread that runs it.
    executor: Option<multithread::Executor>,
    /// A plan for requests of one row, for a batching model where it pays ([`single_row`]).
    single: Option<SingleRow>,
}

/// A run that failed inside the engine (the request was valid for the model's declared facts).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

/// A model typed and decluttered but not yet optimised for this CPU: the form the prepared-model
/// cache stores (as NNEF), because optimised plans hold CPU-specific kernels and cannot be serialised.
/// A clone shares the constant tensors (`Arc`s) with the original.
#[derive(Debug, Clone)]
pub struct Prepared {
    model: TypedModel,
    /// Output names, taken from the ONNX graph (NNEF renames outputs it cannot spell).
    outputs: Vec<String>,
    /// What the import changed in the graph to avoid a known tract miscomputation (see `traps`).
    repairs: Vec<String>,
    /// Read back from the cache: the graph was decluttered before it was written, so optimising it
    /// skips tract's declutter passes (which would cost more on the read-back graph than on the
    /// ONNX import: 48 against 21 ms for ppocr-cls; outputs are identical either way).
    from_cache: bool,
}

/// Where the time of one ONNX import went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportPhases {
    /// Protobuf decoding into tract's inference graph.
    pub parse: Duration,
    /// Shape and type analysis into a typed graph.
    pub typing: Duration,
    /// Engine-independent simplification.
    pub declutter: Duration,
}

/// The engine and its version, part of the prepared-cache key: a cache written by another tract is
/// never read.
pub const ENGINE: &str = concat!("tract-", "0.23.9");

/// tract's NNEF framework with its own and the ONNX operator sets. Built once per process: building it
/// parses NNEF's standard library and registers every operator (milliseconds, more than reading a
/// small model).
fn nnef() -> &'static tract_nnef::framework::Nnef {
    use tract_onnx_opl::WithOnnx;
    static NNEF: std::sync::OnceLock<tract_nnef::framework::Nnef> = std::sync::OnceLock::new();
    NNEF.get_or_init(|| tract_nnef::nnef().with_tract_resource().with_onnx())
}

impl Prepared {
    /// Imports an ONNX file's bytes. `facts`, if given (from a manifest), replaces the input facts the
    /// file declares; it must name every input. Without it, dimensions the file leaves unnamed become
    /// fresh symbols (`<input>_<axis>`), resolved per request.
    ///
    /// # Errors
    /// A message for the operator: unparsable file, unsupported operator or dtype, a manifest that
    /// contradicts the graph.
    pub fn from_onnx(
        bytes: &[u8],
        facts: Option<&[IoSpec]>,
    ) -> Result<(Prepared, ImportPhases), String> {
        let started = Instant::now();
        // torch-dynamo exports name symbolic dimensions in value_info in ways that clash with the facts
        // we set; ignoring value_info is what tract recommends and costs nothing for other exporters.
        let onnx = tract_onnx::onnx().with_ignore_value_info(true);
        let mut proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| format!("{e:#}"))?;
        let mut repairs = match proto.graph.as_mut() {
            Some(graph) => {
                let mut repairs = traps::repair(graph)?;
                repairs.extend(zero_points::to_scalars(graph));
                repairs
            }
            None => Vec::new(),
        };
        let mut model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| format!("{e:#}"))?;
        let parse = started.elapsed();
        let started = Instant::now();
        let input_count = model.input_outlets().map_err(|e| format!("{e:#}"))?.len();
        for ix in 0..input_count {
            let outlet = model.input_outlets().map_err(|e| format!("{e:#}"))?[ix];
            let name = model.node(outlet.node).name.clone();
            let spec = match facts {
                Some(facts) => facts
                    .iter()
                    .find(|f| f.name == name)
                    .cloned()
                    .ok_or_else(|| format!("the manifest does not describe input {name:?}"))?,
                None => declared_input(
                    &model.input_fact(ix).map_err(|e| format!("{e:#}"))?.clone(),
                    &name,
                )?,
            };
            let dims: TVec<TDim> = spec
                .shape
                .iter()
                .map(|d| match d {
                    DimSpec::Fixed(n) => usize::try_from(*n)
                        .map(TDim::from)
                        .map_err(|_| "dimension overflows".to_string()),
                    DimSpec::Symbol(s) => Ok(TDim::Sym(model.symbols.sym(s))),
                })
                .collect::<Result<_, _>>()?;
            let fact = TypedFact::dt_shape(to_tract(spec.dtype), dims);
            model
                .set_input_fact(ix, InferenceFact::from(fact))
                .map_err(|e| format!("{e:#}"))?;
        }
        if let Some(facts) = facts {
            if facts.len() != input_count {
                return Err(format!(
                    "the manifest describes {} inputs, the model has {input_count}",
                    facts.len()
                ));
            }
        }
        let typed = model.into_typed().map_err(|e| format!("{e:#}"))?;
        let typing = started.elapsed();
        let started = Instant::now();
        let model = typed.into_decluttered().map_err(|e| format!("{e:#}"))?;
        let (model, folded) = weights::fold_integer_casts(model).map_err(|e| format!("{e:#}"))?;
        let model = quantize::swap_in(model).map_err(|e| format!("{e:#}"))?;
        let (model, depthwise) =
            depthwise::on_float_depthwise(model).map_err(|e| format!("{e:#}"))?;
        repairs.extend(folded);
        repairs.extend(depthwise);
        let declutter = started.elapsed();
        let outputs = output_names(&model)?;
        Ok((
            Prepared {
                model,
                outputs,
                repairs,
                from_cache: false,
            },
            ImportPhases {
                parse,
                typing,
                declutter,
            },
        ))
    }

    /// Reads the cached form written by [`Prepared::to_nnef`]; `outputs` and `repairs` are the ones
    /// it was written with.
    ///
    /// # Errors
    /// A message if the archive is not a model this engine can read (a damaged cache entry).
    pub fn from_nnef(
        bytes: &[u8],
        outputs: Vec<String>,
        repairs: Vec<String>,
    ) -> Result<Prepared, String> {
        let model = nnef()
            .model_for_read(&mut &bytes[..])
            .map_err(|e| format!("{e:#}"))?;
        let count = model.output_outlets().map_err(|e| format!("{e:#}"))?.len();
        if count != outputs.len() {
            return Err(format!(
                "the cached model has {count} outputs, its index names {}",
                outputs.len()
            ));
        }
        Ok(Prepared {
            model,
            outputs,
            repairs,
            from_cache: true,
        })
    }

    /// Serialises the model as an NNEF tar archive (tract's own operators included).
    ///
    /// # Errors
    /// A message if an operator has no NNEF form; the model is then served without a cache entry.
    pub fn to_nnef(&self) -> Result<Vec<u8>, String> {
        nnef()
            .write_to_tar(&self.model, Vec::new())
            .map_err(|e| format!("{e:#}"))
    }

    /// The output names, in order.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// What the import repaired (see [`Runtime::repairs`]).
    pub fn repairs(&self) -> &[String] {
        &self.repairs
    }

    /// Optimises for this CPU and builds the plan workers run.
    ///
    /// # Errors
    /// A message if tract cannot optimise or plan the graph.
    pub fn into_runtime(self) -> Result<Runtime, String> {
        let weight_bytes = weight_bytes(&self.model);
        let typed = optimized(self.model, self.from_cache)?;
        let mut inputs = Vec::new();
        for (ix, outlet) in typed
            .input_outlets()
            .map_err(|e| format!("{e:#}"))?
            .iter()
            .enumerate()
        {
            let fact = typed.input_fact(ix).map_err(|e| format!("{e:#}"))?;
            inputs.push(spec_of(&typed.node(outlet.node).name, fact)?);
        }
        let mut outputs = Vec::with_capacity(self.outputs.len());
        for (ix, name) in self.outputs.iter().enumerate() {
            let fact = typed.output_fact(ix).map_err(|e| format!("{e:#}"))?;
            outputs.push(spec_of(name, fact)?);
        }
        let plan = typed.into_runnable().map_err(|e| format!("{e:#}"))?;
        Ok(Runtime {
            plan,
            inputs,
            outputs,
            weight_bytes,
            repairs: self.repairs,
            executor: None,
            single: None,
        })
    }
}

/// Optimises a decluttered graph for this CPU (codegen alone for one read from the cache, which was
/// decluttered before it was written; declutter and codegen otherwise), with inferd's own operator
/// swaps.
fn optimized(model: TypedModel, from_cache: bool) -> Result<TypedModel, String> {
    let typed = if from_cache {
        let mut typed = model;
        typed.optimize().map_err(|e| format!("{e:#}"))?;
        typed
    } else {
        model.into_optimized().map_err(|e| format!("{e:#}"))?
    };
    let typed = quantize_linear::swap_in(typed).map_err(|e| format!("{e:#}"))?;
    select::swap_in(typed).map_err(|e| format!("{e:#}"))
}

/// Bytes of the model's constant tensors (its weights) before optimisation: what the memory budget
/// counts. Optimisation repacks them for the kernels, at about the same size.
fn weight_bytes(model: &TypedModel) -> u64 {
    model
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<tract_onnx::tract_core::ops::konst::Const>())
        .map(|c| c.val())
        .filter(|t| t.is_plain())
        .map(|t| (t.len() * t.datum_type().size_of()) as u64)
        .sum()
}

fn output_names(model: &TypedModel) -> Result<Vec<String>, String> {
    Ok(model
        .output_outlets()
        .map_err(|e| format!("{e:#}"))?
        .iter()
        .map(|outlet| {
            model
                .outlet_label(*outlet)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(outlet.node).name.clone())
        })
        .collect())
}

/// Time spent in one node of the optimised plan, summed over profiled runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTime {
    /// The operator, as tract names it once optimised (`OptMatMul`, `LookupTable`, …).
    pub op: String,
    /// The node's name in the plan (derived from the ONNX node names).
    pub node: String,
    /// Total over all runs.
    pub total: Duration,
}

impl Runtime {
    /// Loads and optimises `model.onnx` without a cache (tests, tools).
    ///
    /// # Errors
    /// As [`Prepared::from_onnx`] and [`Prepared::into_runtime`], or an unreadable file.
    pub fn load(path: &Path, facts: Option<&[IoSpec]>) -> Result<Runtime, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Prepared::from_onnx(&bytes, facts)?.0.into_runtime()
    }

    /// What loading changed in the graph so that tract computes it right, one line each (empty for
    /// almost every model); logged when the version loads.
    pub fn repairs(&self) -> &[String] {
        &self.repairs
    }

    /// Bytes of the model's weights (see the memory budget), once per plan: a single-row plan holds
    /// its own optimised copy.
    pub fn weight_bytes(&self) -> u64 {
        if self.single.is_some() {
            self.weight_bytes.saturating_mul(2)
        } else {
            self.weight_bytes
        }
    }

    /// Declared inputs, in the model's order.
    pub fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }

    /// Gives each execution `threads` threads (tract's intra-op pool, private to this model), running
    /// `nice` steps below the process like the inference workers ([`crate::priority`]); 1 keeps
    /// executions on the calling thread.
    ///
    /// # Errors
    /// If the pool's threads cannot be started.
    pub fn set_threads(&mut self, threads: usize, nice: i32) -> Result<(), String> {
        if threads <= 1 {
            self.executor = None;
            return Ok(());
        }
        #[cfg(feature = "intra-op-threads")]
        {
            // Built here rather than by tract (`Executor::multithread_with_name`) to start the
            // threads through the spawner: a pool built on the idle-priority watch thread would
            // otherwise inherit its priority.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("inferd-intra-op-{i}"))
                .spawn_handler(move |thread| {
                    let name = thread.name().unwrap_or("inferd-intra-op").to_owned();
                    crate::priority::spawn_inference(name, nice, move || thread.run()).map(drop)
                })
                .build()
                .map_err(|e| format!("cannot start {threads} intra-op threads: {e}"))?;
            self.executor = Some(multithread::Executor::MultiThread(std::sync::Arc::new(
                pool,
            )));
            Ok(())
        }
        #[cfg(not(feature = "intra-op-threads"))]
        {
            let _ = nice;
            Err(format!("threads = {threads}: {NO_INTRA_OP_THREADS}"))
        }
    }

    /// Threads one execution may use.
    pub fn threads(&self) -> usize {
        match &self.executor {
            #[cfg(feature = "intra-op-threads")]
            Some(multithread::Executor::MultiThread(pool)) => pool.current_num_threads(),
            _ => 1,
        }
    }

    /// Declared outputs, in the model's order.
    pub fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }

    /// Gives requests of one row a plan of their own, with the batch `symbol` bound to 1
    /// ([`single_row`]), built from `prepared` (the graph this runtime was optimised from). With
    /// `keep` unset the plan is kept only if, raced against the batch plan on `probe` (the warm-up
    /// inputs), it is at least 1.25× faster; `Some(true)` keeps it regardless. Returns the race, if
    /// one was run, and whether the plan is now used.
    ///
    /// # Errors
    /// A message if the plan cannot be built or a race run fails.
    pub fn plan_single_rows(
        &mut self,
        prepared: Prepared,
        symbol: &str,
        probe: &[HostTensor],
        keep: Option<bool>,
    ) -> Result<(Option<Race>, bool), String> {
        let single = SingleRow::build(prepared, symbol)?;
        let race = if single.fits(probe) {
            Some(single.race(&self.plan, probe).map_err(|e| e.0)?)
        } else {
            None
        };
        let kept = keep.unwrap_or_else(|| race.is_some_and(|r| r.pays()));
        self.single = kept.then_some(single);
        Ok((race, kept))
    }

    /// The plan that runs `inputs`: the single-row plan if there is one and they fit it.
    fn plan_for(&self, inputs: &[HostTensor]) -> &Arc<TypedSimplePlan> {
        match &self.single {
            Some(single) if single.fits(inputs) => &single.plan,
            _ => &self.plan,
        }
    }

    /// Whether requests of one row run a plan of their own ([`Runtime::plan_single_rows`]).
    pub fn has_single_row_plan(&self) -> bool {
        self.single.is_some()
    }

    /// Runs the model. `inputs` must already be validated and in the model's input order
    /// (see `validate`): dtypes match and byte lengths match shapes.
    ///
    /// # Errors
    /// [`RunError`] if tract fails (e.g. a shape the graph cannot take despite matching the facts).
    pub fn run(&self, inputs: Vec<HostTensor>) -> Result<Vec<HostTensor>, RunError> {
        self.run_pausing(inputs, None)
    }

    /// Runs the model as [`Runtime::run`] does, calling `pause` before each operator of the plan:
    /// the points where a long execution may give its CPU away (the scheduler's time slice). tract
    /// evaluates operators one after another on the calling thread, so between two of them
    /// nothing of the run is in flight; intra-op threads, where configured, work within one
    /// operator and are idle there too.
    ///
    /// # Errors
    /// As [`Runtime::run`].
    pub fn run_pausing(
        &self,
        inputs: Vec<HostTensor>,
        pause: Option<&mut dyn FnMut()>,
    ) -> Result<Vec<HostTensor>, RunError> {
        let plan = self.plan_for(&inputs);
        let values = to_values(inputs)?;
        let go = || match pause {
            None => plan.run(values),
            Some(pause) => {
                plan.spawn()?
                    .run_plan_with_eval(values, |session, op_state, node, input| {
                        pause();
                        tract_onnx::tract_core::plan::eval(session, op_state, node, input)
                    })
            }
        };
        let results = match &self.executor {
            Some(pool) => multithread::multithread_tract_scope(pool.clone(), go),
            None => go(),
        }
        .map_err(|e| RunError(format!("{e:#}")))?;
        results
            .into_iter()
            .zip(&self.outputs)
            .map(|(value, spec)| {
                let mut tensor = value.into_tensor();
                if tensor.datum_type() == DatumType::TDim {
                    // tract computes some integer outputs (an ArgMax label) symbolically; they are
                    // plain integers by the time they are outputs.
                    tensor = tensor
                        .cast_to_dt(DatumType::I64)
                        .map_err(|e| RunError(format!("{e:#}")))?
                        .into_owned();
                }
                let dtype = from_tract(tensor.datum_type()).ok_or_else(|| {
                    RunError(format!("output {:?} has unsupported dtype", spec.name))
                })?;
                Ok(HostTensor {
                    name: spec.name.clone(),
                    dtype,
                    shape: tensor.shape().iter().map(|&d| d as u64).collect(),
                    data: tensor.as_bytes().to_vec(),
                })
            })
            .collect()
    }

    /// Runs the model `runs` times on `inputs`, timing every node of the plan (tract's own
    /// evaluation hook): where a model's time goes, for `benches/int8.rs`. Timing each node costs a
    /// little per node, so the sum exceeds a plain run's time on models with many tiny nodes.
    ///
    /// # Errors
    /// As [`Runtime::run`].
    pub fn profile(&self, inputs: &[HostTensor], runs: u32) -> Result<Vec<NodeTime>, RunError> {
        let err = |e: tract_onnx::prelude::TractError| RunError(format!("{e:#}"));
        let mut totals: Vec<Option<NodeTime>> = Vec::new();
        let mut state = self.plan_for(inputs).spawn().map_err(err)?;
        for _ in 0..runs {
            let values = to_values(inputs.to_vec())?;
            state
                .run_plan_with_eval(values, |session, op_state, node, input| {
                    let started = Instant::now();
                    let out = tract_onnx::tract_core::plan::eval(session, op_state, node, input);
                    let spent = started.elapsed();
                    if totals.len() <= node.id {
                        totals.resize(node.id + 1, None);
                    }
                    let slot = totals[node.id].get_or_insert_with(|| NodeTime {
                        op: node.op().name().to_string(),
                        node: node.name.clone(),
                        total: Duration::ZERO,
                    });
                    slot.total += spent;
                    out
                })
                .map_err(err)?;
        }
        Ok(totals.into_iter().flatten().collect())
    }
}

fn to_values(inputs: Vec<HostTensor>) -> Result<TVec<TValue>, RunError> {
    let mut values: TVec<TValue> = TVec::with_capacity(inputs.len());
    for input in inputs {
        let shape: Vec<usize> = input
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| RunError("dimension overflows".into())))
            .collect::<Result<_, _>>()?;
        let mut tensor = Tensor::zero_dt(to_tract(input.dtype), &shape)
            .map_err(|e| RunError(format!("{e:#}")))?;
        let bytes = tensor.as_bytes_mut();
        if bytes.len() != input.data.len() {
            return Err(RunError(format!(
                "input {:?}: byte length mismatch",
                input.name
            )));
        }
        bytes.copy_from_slice(&input.data);
        values.push(tensor.into());
    }
    Ok(values)
}

/// The facts an ONNX file declares for one input, with unnamed dimensions replaced by fresh symbols.
fn declared_input(fact: &InferenceFact, name: &str) -> Result<IoSpec, String> {
    let dt = fact
        .datum_type
        .concretize()
        .ok_or_else(|| format!("input {name:?} declares no dtype; add a model.toml"))?;
    let dtype =
        from_tract(dt).ok_or_else(|| format!("input {name:?} has unsupported dtype {dt:?}"))?;
    if fact.shape.is_open() {
        return Err(format!("input {name:?} declares no rank; add a model.toml"));
    }
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let shape = fact
        .shape
        .dims()
        .enumerate()
        .map(|(axis, d)| match d.concretize() {
            Some(TDim::Val(n)) if n >= 0 => DimSpec::Fixed(n as u64),
            Some(TDim::Sym(s)) => DimSpec::Symbol(s.to_string()),
            _ => DimSpec::Symbol(format!("{safe}_{axis}")),
        })
        .collect();
    Ok(IoSpec {
        name: name.to_owned(),
        dtype,
        shape,
    })
}

fn spec_of(name: &str, fact: &TypedFact) -> Result<IoSpec, String> {
    // Symbolic integers (TDim) are served as i64, converted in `run`.
    let dt = if fact.datum_type == DatumType::TDim {
        DatumType::I64
    } else {
        fact.datum_type
    };
    let dtype = from_tract(dt).ok_or_else(|| {
        format!(
            "{name:?} has dtype {:?}, which the protocol cannot carry",
            fact.datum_type
        )
    })?;
    let shape = fact
        .shape
        .iter()
        .map(|d| match d.to_i64() {
            Ok(n) if n >= 0 => DimSpec::Fixed(n as u64),
            _ => DimSpec::Symbol(d.to_string()),
        })
        .collect();
    Ok(IoSpec {
        name: name.to_owned(),
        dtype,
        shape,
    })
}

fn to_tract(dtype: DType) -> DatumType {
    match dtype {
        DType::F32 => DatumType::F32,
        DType::F16 => DatumType::F16,
        DType::F64 => DatumType::F64,
        DType::I8 => DatumType::I8,
        DType::I16 => DatumType::I16,
        DType::I32 => DatumType::I32,
        DType::I64 => DatumType::I64,
        DType::U8 => DatumType::U8,
        DType::U16 => DatumType::U16,
        DType::U32 => DatumType::U32,
        DType::U64 => DatumType::U64,
        DType::Bool => DatumType::Bool,
    }
}

fn from_tract(dt: DatumType) -> Option<DType> {
    DType::ALL.into_iter().find(|d| to_tract(*d) == dt)
}

/// Which SIMD level tract-linalg found on this CPU and the matrix-multiply kernels it may pick from,
/// e.g. `aarch64 neon: arm64simd_mmm_f32_16x4_a53, ...` or `x86_64 fma: avx2_mmm_i32_8x8, ...`.
/// Logged at start-up, so an operator (and the cross tests) can see that an ARM gateway runs NEON
/// kernels rather than the generic ones.
pub fn kernels() -> String {
    use tract_onnx::prelude::tract_linalg::{isa, mmm_routines};
    let native = isa::native();
    let names: Vec<String> = mmm_routines::runnable_for(&native)
        .iter()
        .map(|k| k.name().to_owned())
        .filter(|n| !n.starts_with("generic"))
        .collect();
    let arch = native
        .arch()
        .map_or_else(|| "unknown".to_owned(), |a| format!("{a:?}").to_lowercase());
    format!("{arch} {}: {}", native.nickname(), names.join(", "))
}

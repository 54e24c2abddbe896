//! `madeit._madeit`: the Python extension module of madeit.
//!
//! A thin layer on the facade crate `madeit`: every method, default, check and error message
//! comes from the Rust crates. A merger is configured by name plus keyword hyper-parameters
//! through [`madeit::eval::checkpoints::merge_config`] (the path `madeit merge` takes with a
//! TOML file), checkpoints given as paths are read and validated by
//! [`madeit::eval::checkpoints::Checkpoint::read`], and fine-tuned models are absorbed by
//! [`madeit::eval::checkpoints::absorb_checkpoint`], so Python and the command line raise
//! the same messages. Heavy work (reading checkpoints, absorbing, merging, saving) runs with
//! the GIL released.
//!
//! The pure-Python package `madeit` (folder `python/madeit`) wraps this module: it converts
//! torch tensors and NumPy arrays of any float dtype to contiguous `float32` arrays (the
//! only array type this module takes) and back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use madeit::eval::checkpoints::{
    Checkpoint, absorb_checkpoint, error_chain, merge_config, task_name,
};
use madeit::eval::metrics::AccuracyMatrix;
use madeit::eval::orders::task_order;
use madeit::eval::registry::{self, MethodKind};
use madeit::merge::made_it::store;
use madeit::merge::{
    ContinualMerger, MadeItMerger, MergeError, MergedModel, MergerState, MethodConfig, StepReport,
    TaskId,
};
use madeit::params::{DType, ParamDict, Tensor};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

pyo3::create_exception!(
    _madeit,
    MadeitError,
    PyValueError,
    "An error of madeit: a bad method, keyword, value, checkpoint or state. The message is \
     the one the `madeit` command line prints."
);

/// Metadata key of the merger's state metadata in a saved state (as in `madeit run`'s
/// checkpoints).
const MERGER_KEY: &str = "madeit.merger";
/// Metadata key of the pretrained checkpoint's path in a saved state, when it was given as
/// a path.
const PRETRAINED_KEY: &str = "madeit.pretrained";
/// What the pretrained model is called in errors.
const PRETRAINED: &str = "the pretrained model";
/// What a fine-tuned model is called in errors.
const FINETUNED: &str = "the fine-tuned model";

/// A Python exception carrying the error chain, as the command line prints it.
fn py_err(e: &(dyn std::error::Error + 'static)) -> PyErr {
    MadeitError::new_err(error_chain(e))
}

/// A Python value (`None`, bool, int, float, str, list/tuple, dict with str keys) as JSON.
fn to_json(value: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    if value.is_none() {
        return Ok(serde_json::Value::Null);
    }
    if value.is_instance_of::<PyBool>() {
        return Ok(serde_json::Value::Bool(value.extract()?));
    }
    if value.is_instance_of::<PyInt>() {
        if let Ok(i) = value.extract::<i64>() {
            return Ok(i.into());
        }
        return Ok(serde_json::Value::from(value.extract::<u64>()?));
    }
    if value.is_instance_of::<PyFloat>() {
        let f: f64 = value.extract()?;
        return serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| MadeitError::new_err(format!("{f} is not a finite number")));
    }
    if value.is_instance_of::<PyString>() {
        return Ok(serde_json::Value::String(value.extract::<String>()?));
    }
    if let Ok(l) = value.cast::<PyList>() {
        return l.iter().map(|v| to_json(&v)).collect();
    }
    if let Ok(t) = value.cast::<PyTuple>() {
        return t.iter().map(|v| to_json(&v)).collect();
    }
    if let Ok(d) = value.cast::<PyDict>() {
        return Ok(serde_json::Value::Object(to_json_map(d)?));
    }
    Err(PyTypeError::new_err(format!(
        "cannot use a value of type {} as a hyper-parameter",
        value.get_type().name()?
    )))
}

/// A Python dict with str keys as a JSON object.
fn to_json_map(d: &Bound<'_, PyDict>) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    let mut map = serde_json::Map::new();
    for (k, v) in d.iter() {
        let key: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("hyper-parameter names must be strings"))?;
        map.insert(key, to_json(&v)?);
    }
    Ok(map)
}

/// A JSON value as a Python object (through the `json` module, so that nesting is kept).
fn from_json<'py>(py: Python<'py>, value: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| MadeitError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// Parses a dtype name (`"F32"`, `"F16"`, `"BF16"`).
fn parse_dtype(name: &str) -> PyResult<DType> {
    match name {
        "F32" => Ok(DType::F32),
        "F16" => Ok(DType::F16),
        "BF16" => Ok(DType::BF16),
        other => Err(MadeitError::new_err(format!(
            "unsupported dtype `{other}` (F32, F16 or BF16)"
        ))),
    }
}

/// A dict of contiguous `float32` arrays (plus an optional dict of storage dtype names) as a
/// [`ParamDict`]. The data is copied once (a `ParamDict` owns its tensors).
fn to_params(
    arrays: &Bound<'_, PyDict>,
    dtypes: Option<&Bound<'_, PyDict>>,
) -> PyResult<ParamDict> {
    let mut params = ParamDict::new();
    for (k, v) in arrays.iter() {
        let name: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("state dict keys must be strings"))?;
        let array: PyReadonlyArrayDyn<'_, f32> = v.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "tensor `{name}`: expected a float32 numpy array, got {}",
                v.get_type()
                    .name()
                    .map_or_else(|_| "?".to_owned(), |n| n.to_string())
            ))
        })?;
        let shape = array.shape().to_vec();
        let data = match array.as_slice() {
            Ok(s) => s.to_vec(),
            Err(_) => array.as_array().iter().copied().collect(),
        };
        let mut tensor = Tensor::new(shape, data).map_err(|e| py_err(&e.in_tensor(&name)))?;
        if let Some(d) = dtypes.and_then(|d| d.get_item(&name).ok().flatten()) {
            tensor = tensor.with_dtype(parse_dtype(&d.extract::<String>()?)?);
        }
        params.insert(name, tensor);
    }
    Ok(params)
}

/// A [`ParamDict`] as `(dict of float32 arrays, dict of dtype names)`; the values are rounded
/// to their storage dtype (what saving and loading them yields). The data is moved into
/// NumPy without a copy.
fn from_params<'py>(
    py: Python<'py>,
    params: ParamDict,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
    let arrays = PyDict::new(py);
    let dtypes = PyDict::new(py);
    let names: Vec<String> = params.keys().map(str::to_owned).collect();
    let mut params = params;
    for name in names {
        let Some(mut t) = params.remove(&name) else {
            continue;
        };
        t.round_to_dtype();
        let dtype = t.dtype();
        let shape = t.shape().to_vec();
        let array: Bound<'py, PyArrayDyn<f32>> =
            PyArray1::from_vec(py, t.into_data()).reshape(shape)?;
        arrays.set_item(&name, array)?;
        dtypes.set_item(&name, dtype.name())?;
    }
    Ok((arrays, dtypes))
}

/// A step report as a JSON object.
fn report_json(r: &StepReport) -> PyResult<serde_json::Value> {
    serde_json::to_value(r).map_err(|e| MadeitError::new_err(e.to_string()))
}

/// The merger behind a [`Merger`]: MADE-IT is kept as its concrete type (as `madeit merge`
/// does) so that its expert store can be saved.
#[derive(Debug)]
enum Inner {
    MadeIt(Box<MadeItMerger>),
    Other(Box<dyn ContinualMerger>),
}

impl Inner {
    fn build(cfg: &MethodConfig) -> Result<Self, MergeError> {
        Ok(match cfg {
            MethodConfig::MadeIt(c) => Self::MadeIt(Box::new(MadeItMerger::new(c.clone())?)),
            other => Self::Other(other.build()?),
        })
    }

    fn get(&self) -> &dyn ContinualMerger {
        match self {
            Self::MadeIt(m) => m.as_ref(),
            Self::Other(m) => m.as_ref(),
        }
    }

    fn get_mut(&mut self) -> &mut dyn ContinualMerger {
        match self {
            Self::MadeIt(m) => m.as_mut(),
            Self::Other(m) => m.as_mut(),
        }
    }
}

/// The core of `madeit.Merger`: a continual merger of one method, its pretrained model and
/// the reports of the steps so far. The Python class `madeit.Merger` wraps it.
#[pyclass(module = "madeit._madeit", name = "MergerCore")]
#[derive(Debug)]
struct MergerCore {
    inner: Inner,
    pretrained: Option<Checkpoint>,
    /// The pretrained checkpoint's path, when it was given as one.
    pretrained_path: Option<PathBuf>,
    reports: Vec<StepReport>,
}

impl MergerCore {
    fn pretrained(&self) -> PyResult<&Checkpoint> {
        self.pretrained.as_ref().ok_or_else(|| {
            MadeitError::new_err(
                "no pretrained model: give `pretrained=` (a state dict or a checkpoint path) \
                 to the first absorb, or to Merger.load",
            )
        })
    }

    fn absorb_checkpoint(&mut self, py: Python<'_>, ft: &Checkpoint, name: &str) -> PyResult<()> {
        self.pretrained()?;
        let Self {
            inner, pretrained, ..
        } = self;
        let Some(pre) = pretrained.as_ref() else {
            return Ok(());
        };
        let task = TaskId::new(name);
        let report = py
            .detach(|| absorb_checkpoint(inner.get_mut(), pre, ft, &task))
            .map_err(|e| py_err(&e))?;
        self.reports.push(report);
        Ok(())
    }

    /// A unique task name: `name`, or `<name>#<k>` if it was taken (as `madeit merge` names
    /// repeated folders).
    fn unique_name(&self, name: String) -> String {
        let tasks = self.inner.get().tasks();
        if tasks.iter().any(|t| t.as_str() == name) {
            format!("{name}#{}", tasks.len() + 1)
        } else {
            name
        }
    }
}

#[pymethods]
impl MergerCore {
    /// Builds an empty merger of `method` with hyper-parameters `options` (a dict).
    #[new]
    #[pyo3(signature = (method, options=None))]
    fn new(method: &str, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let options = options.map(to_json_map).transpose()?.unwrap_or_default();
        let cfg = merge_config(method, options).map_err(|e| py_err(&e))?;
        let inner = Inner::build(&cfg).map_err(|e| py_err(&e))?;
        Ok(Self {
            inner,
            pretrained: None,
            pretrained_path: None,
            reports: Vec::new(),
        })
    }

    /// The method's registry name.
    #[getter]
    fn method(&self) -> &'static str {
        self.inner.get().method()
    }

    /// The full configuration (every hyper-parameter, defaults included) as a dict.
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let value = serde_json::to_value(self.inner.get().config())
            .map_err(|e| MadeitError::new_err(e.to_string()))?;
        from_json(py, &value)
    }

    /// The tasks absorbed so far, in order.
    fn tasks(&self) -> Vec<String> {
        self.inner
            .get()
            .tasks()
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect()
    }

    /// Whether a pretrained model is set.
    fn has_pretrained(&self) -> bool {
        self.pretrained.is_some()
    }

    /// Sets the pretrained model from a checkpoint path (folder or `.safetensors` file).
    fn set_pretrained_path(&mut self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let pre = py
            .detach(|| Checkpoint::read(&path, PRETRAINED))
            .map_err(|e| py_err(&e))?;
        self.pretrained = Some(pre);
        self.pretrained_path = Some(path);
        Ok(())
    }

    /// Sets the pretrained model from a dict of float32 arrays (and their storage dtypes).
    #[pyo3(signature = (arrays, dtypes=None))]
    fn set_pretrained(
        &mut self,
        arrays: &Bound<'_, PyDict>,
        dtypes: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let params = to_params(arrays, dtypes)?;
        let pre =
            Checkpoint::from_params(params, "(state dict)", PRETRAINED).map_err(|e| py_err(&e))?;
        self.pretrained = Some(pre);
        self.pretrained_path = None;
        Ok(())
    }

    /// Absorbs the fine-tuned checkpoint at `path`; the task is named `name`, or after the
    /// folder (file stem) as `madeit merge` names it. Returns the step's report.
    #[pyo3(signature = (path, name=None))]
    fn absorb_path<'py>(
        &mut self,
        py: Python<'py>,
        path: PathBuf,
        name: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.pretrained()?;
        let ft = py
            .detach(|| Checkpoint::read(&path, FINETUNED))
            .map_err(|e| py_err(&e))?;
        let name = self.unique_name(name.unwrap_or_else(|| task_name(&path)));
        self.absorb_checkpoint(py, &ft, &name)?;
        self.report_last(py)
    }

    /// Absorbs a fine-tuned state dict (float32 arrays, plus their storage dtypes) as task
    /// `name`. Returns the step's report.
    #[pyo3(signature = (arrays, name, dtypes=None))]
    fn absorb<'py>(
        &mut self,
        py: Python<'py>,
        arrays: &Bound<'py, PyDict>,
        name: String,
        dtypes: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.pretrained()?;
        let params = to_params(arrays, dtypes)?;
        let ft = py
            .detach(|| Checkpoint::from_params(params, &name, FINETUNED))
            .map_err(|e| py_err(&e))?;
        self.absorb_checkpoint(py, &ft, &name)?;
        self.report_last(py)
    }

    /// The report of the last step (a dict), or None before the first.
    fn report_last<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.reports.last() {
            Some(r) => from_json(py, &report_json(r)?),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// The reports of every step absorbed by this object (a list of dicts).
    fn reports<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let all: Vec<serde_json::Value> = self
            .reports
            .iter()
            .map(report_json)
            .collect::<PyResult<_>>()?;
        from_json(py, &serde_json::Value::Array(all))
    }

    /// The merged model: `("dense", arrays, dtypes)` or `("experts", backbone arrays,
    /// backbone dtypes, expert factors, expert tasks)`. Expert factors are keyed
    /// `<weight>.expert<e>.up` (`[out, r]`) and `.down` (`[r, in]`) as `madeit merge`'s
    /// `experts.safetensors`; the tasks map each weight to the task names of its experts.
    fn merged<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let pre = self.pretrained()?;
        let inner = &self.inner;
        let merged = py
            .detach(|| inner.get().merged_model(&pre.params))
            .map_err(|e| py_err(&e))?;
        match merged {
            MergedModel::Dense(params) => {
                let (a, d) = from_params(py, params)?;
                ("dense", a, d).into_pyobject(py)
            }
            MergedModel::Experts(m) => {
                let (factors, per_module) = (m.factor_dict(), m.expert_tasks());
                let (a, d) = from_params(py, m.backbone)?;
                let tasks = PyDict::new(py);
                for (name, per_expert) in per_module {
                    tasks.set_item(name, per_expert)?;
                }
                let (f, _) = from_params(py, factors)?;
                ("experts", a, d, f, tasks).into_pyobject(py)
            }
            _ => Err(MadeitError::new_err(format!(
                "method `{}` produced a kind of model this package cannot return",
                self.method()
            ))),
        }
    }

    /// Saves MADE-IT's expert store into folder `path` (madeit-experts' store, atomic): the
    /// `experts/` folder `madeit merge` writes. Other methods raise.
    fn save_experts(&self, py: Python<'_>, path: PathBuf) -> PyResult<u64> {
        let Inner::MadeIt(m) = &self.inner else {
            return Err(MadeitError::new_err(format!(
                "method `{}` keeps no MADE-IT expert store",
                self.method()
            )));
        };
        let saved = py
            .detach(|| store::save(m.experts(), &path))
            .map_err(|e| py_err(&e))?;
        Ok(saved.tensor_bytes)
    }

    /// Saves the merger's state (tensors and metadata in one safetensors file, written
    /// atomically). The pretrained model is not saved, only its fingerprint (and its path,
    /// when it was given as one).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let state = self.inner.get().state().map_err(|e| py_err(&e))?;
        let mut meta = BTreeMap::new();
        meta.insert(
            MERGER_KEY.to_owned(),
            state.metadata_json().map_err(|e| py_err(&e))?,
        );
        if let Some(p) = &self.pretrained_path {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            meta.insert(PRETRAINED_KEY.to_owned(), abs.display().to_string());
        }
        py.detach(|| state.tensors.save_with_metadata(&path, &meta))
            .map_err(|e| py_err(&e))
    }

    /// Loads a merger saved with `save`. Returns the merger and the pretrained path recorded
    /// in the file (or None).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<(Self, Option<String>)> {
        let (tensors, meta) = py
            .detach(|| madeit::params::ParamDict::load_with_metadata(&path))
            .map_err(|e| py_err(&e))?;
        let meta = meta.unwrap_or_default();
        let Some(json) = meta.get(MERGER_KEY) else {
            return Err(MadeitError::new_err(format!(
                "{}: not a saved merger (no `{MERGER_KEY}` metadata)",
                path.display()
            )));
        };
        let state = MergerState::from_parts(json, tensors).map_err(|e| py_err(&e))?;
        let mut inner = Inner::build(&state.metadata.config).map_err(|e| py_err(&e))?;
        inner.get_mut().restore(&state).map_err(|e| py_err(&e))?;
        let core = Self {
            inner,
            pretrained: None,
            pretrained_path: None,
            reports: Vec::new(),
        };
        Ok((core, meta.get(PRETRAINED_KEY).cloned()))
    }

    fn __repr__(&self) -> String {
        format!(
            "Merger({:?}, tasks={})",
            self.method(),
            self.inner.get().num_tasks()
        )
    }
}

/// Every data-free merging method of the registry (those `madeit merge` runs), in registry
/// order: a list of dicts with `name`, `label` (the results tables' row name), `title`,
/// `summary`, `paper`, `reference`, `kind`, `default_run` (whether `madeit run` runs it by
/// default) and `defaults` (every hyper-parameter with its default value).
#[pyfunction]
fn methods<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
    let mut all = Vec::new();
    for descriptor in registry::methods() {
        if descriptor.kind != MethodKind::DataFree {
            continue;
        }
        let info = &descriptor.info;
        let cfg = MethodConfig::default_for(info.name).map_err(|e| py_err(&e))?;
        let mut defaults =
            serde_json::to_value(&cfg).map_err(|e| MadeitError::new_err(e.to_string()))?;
        if let Some(map) = defaults.as_object_mut() {
            map.remove("method");
        }
        let inner = Inner::build(&cfg).map_err(|e| py_err(&e))?;
        let kind = match inner {
            Inner::MadeIt(_) => "experts",
            Inner::Other(_) => "dense",
        };
        all.push(serde_json::json!({
            "name": info.name,
            "label": info.label,
            "title": info.title,
            "summary": info.summary,
            "paper": info.paper,
            "reference": info.reference,
            "kind": kind,
            "default_run": info.default_run,
            "defaults": defaults,
        }));
    }
    from_json(py, &serde_json::Value::Array(all))
}

/// The order in which the protocol visits `n_tasks` tasks for `seed`: 1-based task ids, the
/// CPython shuffle of `[1, ..., n_tasks]` after `random.seed(seed)`.
#[pyfunction]
fn task_order_ids(n_tasks: usize, seed: u64) -> Vec<usize> {
    task_order(n_tasks, seed)
}

/// ACC and BWT of an accuracy matrix (rows: tasks in merge order, columns: steps; None where
/// not computed). BWT is None for one task.
#[pyfunction]
fn acc_bwt(rows: Vec<Vec<Option<f64>>>) -> PyResult<(f64, Option<f64>)> {
    let m = AccuracyMatrix::from_rows(rows).map_err(|e| py_err(&e))?;
    let acc = m.acc().map_err(|e| py_err(&e))?;
    let bwt = m.bwt().map_err(|e| py_err(&e))?;
    Ok((acc, bwt))
}

/// The registry name of a checkpoint path's task (its folder name or file stem).
#[pyfunction]
fn checkpoint_task_name(path: PathBuf) -> String {
    task_name(Path::new(&path))
}

/// The extension module.
#[pymodule]
fn _madeit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MadeitError", m.py().get_type::<MadeitError>())?;
    m.add_class::<MergerCore>()?;
    m.add_function(wrap_pyfunction!(methods, m)?)?;
    m.add_function(wrap_pyfunction!(task_order_ids, m)?)?;
    m.add_function(wrap_pyfunction!(acc_bwt, m)?)?;
    m.add_function(wrap_pyfunction!(checkpoint_task_name, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

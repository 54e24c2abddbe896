//! A restricted reader for pickled numpy arrays that executes nothing.
//!
//! Python's pickle format is a program for a small stack machine; loading one with Python
//! can call any importable function. This reader instead interprets only the opcodes that a
//! pickled numpy array of a plain integer dtype uses (protocol 2–4, as written by
//! `pickle.dump(array, f, protocol=4)`), accepts only the three globals such a pickle names
//! (`numpy.core.multiarray._reconstruct` — or `numpy._core.multiarray._reconstruct` as numpy
//! 2 spells it —, `numpy.ndarray` and `numpy.dtype`), and never calls anything: `REDUCE` and
//! `BUILD` only record their arguments, and the resulting tree is then matched against the
//! exact shape numpy produces:
//!
//! ```text
//! _reconstruct(ndarray, (0,), b'b')  BUILD  (1, shape, dtype, fortran_order, raw_bytes)
//! dtype(code, False, True)           BUILD  (3, byte_order, None, None, None, -1, -1, 0)
//! ```
//!
//! Any other opcode is rejected with [`DataError::UnsupportedOpcode`], any other global with
//! [`DataError::UnsupportedGlobal`], any other structure with [`DataError::PickleStructure`].
//! The accepted opcodes are exactly those found (with Python's `pickletools`) in the
//! animal-mnist data files; see [`ACCEPTED_OPCODES`].

use std::cell::RefCell;
use std::rc::Rc;

use crate::error::{DataError, Result, check_exact_len};

/// The opcodes this reader accepts, with their names in Python's `pickletools`.
pub const ACCEPTED_OPCODES: [(u8, &str); 21] = [
    (0x80, "PROTO"),
    (0x95, "FRAME"),
    (0x8c, "SHORT_BINUNICODE"),
    (0x94, "MEMOIZE"),
    (0x93, "STACK_GLOBAL"),
    (b'K', "BININT1"),
    (b'M', "BININT2"),
    (b'J', "BININT"),
    (0x85, "TUPLE1"),
    (0x87, "TUPLE3"),
    (b't', "TUPLE"),
    (b'(', "MARK"),
    (b'C', "SHORT_BINBYTES"),
    (b'B', "BINBYTES"),
    (b'R', "REDUCE"),
    (b'h', "BINGET"),
    (0x89, "NEWFALSE"),
    (0x88, "NEWTRUE"),
    (b'N', "NONE"),
    (b'b', "BUILD"),
    (b'.', "STOP"),
];

/// Element type of a pickled array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpDType {
    /// `uint8` (numpy code `u1`).
    U8,
    /// `int32` (numpy code `i4`).
    I32,
    /// `int64` (numpy code `i8`).
    I64,
}

impl NpDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            NpDType::U8 => 1,
            NpDType::I32 => 4,
            NpDType::I64 => 8,
        }
    }
}

/// A numpy array recovered from a pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NdArray {
    /// The array's shape.
    pub shape: Vec<usize>,
    /// Its element type.
    pub dtype: NpDType,
    /// Whether multi-byte elements are little-endian (always true for `U8`).
    pub little_endian: bool,
    /// The raw elements, C order.
    pub data: Vec<u8>,
}

impl NdArray {
    /// Number of elements, the product of the shape.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as signed 64-bit integers.
    pub fn to_i64(&self) -> Vec<i64> {
        let le = self.little_endian;
        match self.dtype {
            NpDType::U8 => self.data.iter().map(|&b| i64::from(b)).collect(),
            NpDType::I32 => self
                .data
                .chunks_exact(4)
                .map(|c| {
                    let b = [c[0], c[1], c[2], c[3]];
                    i64::from(if le {
                        i32::from_le_bytes(b)
                    } else {
                        i32::from_be_bytes(b)
                    })
                })
                .collect(),
            NpDType::I64 => self
                .data
                .chunks_exact(8)
                .map(|c| {
                    let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                    if le {
                        i64::from_le_bytes(b)
                    } else {
                        i64::from_be_bytes(b)
                    }
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    Reconstruct,
    NdArrayClass,
    DTypeClass,
}

#[derive(Debug)]
struct Object {
    class: Global,
    args: Rc<[Value]>,
    state: Option<Value>,
    offset: usize,
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    Global(Global),
    Object(Rc<RefCell<Object>>),
}

enum Item {
    Value(Value),
    Mark,
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a str,
    stack: Vec<Item>,
    memo: Vec<Value>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.structure("length overflows"))?;
        let s = self.bytes.get(self.pos..end).ok_or(DataError::Truncated {
            file: self.file.to_owned(),
            expected: end,
            got: self.bytes.len(),
        })?;
        self.pos = end;
        Ok(s)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn structure(&self, detail: impl Into<String>) -> DataError {
        DataError::PickleStructure {
            file: self.file.to_owned(),
            offset: self.pos,
            detail: detail.into(),
        }
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Item::Value(v));
    }

    fn pop(&mut self) -> Result<Value> {
        match self.stack.pop() {
            Some(Item::Value(v)) => Ok(v),
            Some(Item::Mark) => Err(self.structure("found a MARK where a value was expected")),
            None => Err(self.structure("stack underflow")),
        }
    }

    /// Pops a value and takes it apart with `pick`; a value `pick` hands back is an error
    /// reading `"{expected}, found {kind}"`.
    fn pop_as<T>(
        &mut self,
        expected: &str,
        pick: impl FnOnce(Value) -> std::result::Result<T, Value>,
    ) -> Result<T> {
        let v = self.pop()?;
        pick(v).map_err(|other| self.structure(format!("{expected}, found {}", kind(&other))))
    }

    fn pop_str(&mut self) -> Result<Rc<str>> {
        self.pop_as("expected a string", |v| match v {
            Value::Str(s) => Ok(s),
            other => Err(other),
        })
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>> {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.pop()?);
        }
        items.reverse();
        Ok(items)
    }

    fn pop_to_mark(&mut self) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Item::Value(v)) => items.push(v),
                Some(Item::Mark) => break,
                None => return Err(self.structure("TUPLE without a MARK")),
            }
        }
        items.reverse();
        Ok(items)
    }

    fn resolve(&self, module: &str, name: &str) -> Result<Global> {
        match (module, name) {
            ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
                Ok(Global::Reconstruct)
            }
            ("numpy", "ndarray") => Ok(Global::NdArrayClass),
            ("numpy", "dtype") => Ok(Global::DTypeClass),
            _ => Err(DataError::UnsupportedGlobal {
                file: self.file.to_owned(),
                module: module.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    /// Runs the opcodes up to `STOP` and returns the value it leaves.
    fn run(&mut self) -> Result<Value> {
        loop {
            let op_offset = self.pos;
            let [op] = self.take_array::<1>()?;
            match op {
                0x80 => {
                    let [proto] = self.take_array::<1>()?;
                    if !(2..=4).contains(&proto) {
                        return Err(self.structure(format!(
                            "pickle protocol {proto} is not accepted (2 to 4 are)"
                        )));
                    }
                }
                0x95 => {
                    // Framing only groups opcodes for buffered reading; the content is the same.
                    self.take_array::<8>()?;
                }
                0x8c => {
                    let [len] = self.take_array::<1>()?;
                    let s = self.take(usize::from(len))?;
                    let s = std::str::from_utf8(s)
                        .map_err(|_| self.structure("string is not UTF-8"))?;
                    self.push(Value::Str(Rc::from(s)));
                }
                0x94 => {
                    let top = match self.stack.last() {
                        Some(Item::Value(v)) => v.clone(),
                        _ => return Err(self.structure("MEMOIZE with no value on the stack")),
                    };
                    self.memo.push(top);
                }
                0x93 => {
                    let name = self.pop_str()?;
                    let module = self.pop_str()?;
                    let g = self.resolve(&module, &name)?;
                    self.push(Value::Global(g));
                }
                b'K' | b'M' | b'J' => {
                    let v = match op {
                        b'K' => i64::from(u8::from_le_bytes(self.take_array::<1>()?)),
                        b'M' => i64::from(u16::from_le_bytes(self.take_array::<2>()?)),
                        _ => i64::from(i32::from_le_bytes(self.take_array::<4>()?)),
                    };
                    self.push(Value::Int(v));
                }
                0x85 | 0x87 => {
                    let n = if op == 0x85 { 1 } else { 3 };
                    let items = self.pop_n(n)?;
                    self.push(Value::Tuple(Rc::from(items)));
                }
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.push(Value::Tuple(Rc::from(items)));
                }
                b'(' => self.stack.push(Item::Mark),
                b'C' | b'B' => {
                    let len = if op == b'C' {
                        usize::from(u8::from_le_bytes(self.take_array::<1>()?))
                    } else {
                        u32::from_le_bytes(self.take_array::<4>()?) as usize
                    };
                    let b = self.take(len)?;
                    self.push(Value::Bytes(Rc::from(b)));
                }
                b'R' => {
                    let args = self.pop_as("REDUCE arguments must be a tuple", |v| match v {
                        Value::Tuple(t) => Ok(t),
                        other => Err(other),
                    })?;
                    let class = self.pop_as("REDUCE needs a global", |v| match v {
                        Value::Global(g) => Ok(g),
                        other => Err(other),
                    })?;
                    // Nothing is called: the call is only recorded.
                    self.push(Value::Object(Rc::new(RefCell::new(Object {
                        class,
                        args,
                        state: None,
                        offset: op_offset,
                    }))));
                }
                b'h' => {
                    let [idx] = self.take_array::<1>()?;
                    let v = self.memo.get(usize::from(idx)).cloned().ok_or_else(|| {
                        self.structure(format!("BINGET {idx} of an empty memo slot"))
                    })?;
                    self.push(v);
                }
                0x89 => self.push(Value::Bool(false)),
                0x88 => self.push(Value::Bool(true)),
                b'N' => self.push(Value::None),
                b'b' => {
                    let state = self.pop()?;
                    let obj = match self.stack.last() {
                        Some(Item::Value(Value::Object(o))) => Rc::clone(o),
                        _ => return Err(self.structure("BUILD needs an object under its state")),
                    };
                    let mut obj = obj.borrow_mut();
                    if obj.state.is_some() {
                        return Err(self.structure("BUILD applied twice to one object"));
                    }
                    obj.state = Some(state);
                }
                b'.' => {
                    let result = self.pop()?;
                    if !self.stack.is_empty() {
                        return Err(self.structure("values left on the stack at STOP"));
                    }
                    if self.pos != self.bytes.len() {
                        return Err(DataError::TrailingData {
                            file: self.file.to_owned(),
                            extra: self.bytes.len() - self.pos,
                        });
                    }
                    return Ok(result);
                }
                other => {
                    return Err(DataError::UnsupportedOpcode {
                        file: self.file.to_owned(),
                        offset: op_offset,
                        opcode: other,
                    });
                }
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "a tuple",
        Value::Global(_) => "a global",
        Value::Object(_) => "an object",
    }
}

/// Parses an (uncompressed) pickle of one numpy array of dtype `uint8`, `int32` or `int64`,
/// without executing anything (see the module documentation).
///
/// # Errors
/// [`DataError::UnsupportedOpcode`], [`DataError::UnsupportedGlobal`],
/// [`DataError::PickleStructure`] as described above; [`DataError::Truncated`] if the pickle
/// or the array's data ends early; [`DataError::TrailingData`] if bytes follow `STOP`.
pub fn parse_ndarray_pickle(bytes: &[u8], file: &str) -> Result<NdArray> {
    let mut m = Machine {
        bytes,
        pos: 0,
        file,
        stack: Vec::new(),
        memo: Vec::new(),
    };
    let result = m.run()?;
    interpret_array(&result, file)
}

fn structure_at(file: &str, offset: usize, detail: impl Into<String>) -> DataError {
    DataError::PickleStructure {
        file: file.to_owned(),
        offset,
        detail: detail.into(),
    }
}

impl Object {
    /// Checks that the object is an instance of `class`; `detail` is the error otherwise.
    fn check_class(&self, class: Global, file: &str, detail: &str) -> Result<()> {
        if self.class == class {
            Ok(())
        } else {
            Err(structure_at(file, self.offset, detail))
        }
    }

    /// The object's state tuple; the error names the object as `what` when it has none.
    fn state_tuple(&self, file: &str, what: &str) -> Result<&[Value]> {
        match &self.state {
            Some(Value::Tuple(state)) => Ok(state),
            _ => Err(structure_at(
                file,
                self.offset,
                format!("the {what} has no state tuple"),
            )),
        }
    }
}

fn interpret_array(v: &Value, file: &str) -> Result<NdArray> {
    let Value::Object(obj) = v else {
        return Err(structure_at(
            file,
            0,
            format!("the pickle holds {}, not an array", kind(v)),
        ));
    };
    let obj = obj.borrow();
    let at = obj.offset;
    obj.check_class(
        Global::Reconstruct,
        file,
        "the top object is not an ndarray reconstruction",
    )?;
    match &obj.args[..] {
        [
            Value::Global(Global::NdArrayClass),
            Value::Tuple(t),
            Value::Bytes(b),
        ] if matches!(&t[..], [Value::Int(0)]) && &b[..] == b"b" => {}
        _ => {
            return Err(structure_at(
                file,
                at,
                "expected _reconstruct(numpy.ndarray, (0,), b'b')",
            ));
        }
    }
    let state = obj.state_tuple(file, "array")?;
    let [
        Value::Int(1),
        Value::Tuple(shape),
        Value::Object(dtype),
        Value::Bool(fortran),
        Value::Bytes(data),
    ] = state
    else {
        return Err(structure_at(
            file,
            at,
            "expected array state (1, shape, dtype, fortran_order, bytes)",
        ));
    };
    if *fortran {
        return Err(structure_at(
            file,
            at,
            "Fortran-order arrays are not accepted",
        ));
    }
    let shape: Vec<usize> = shape
        .iter()
        .map(|d| match d {
            Value::Int(x) if *x >= 0 => Ok(*x as usize),
            _ => Err(structure_at(
                file,
                at,
                "shape entries must be non-negative ints",
            )),
        })
        .collect::<Result<_>>()?;
    let (dtype, little_endian) = interpret_dtype(&dtype.borrow(), file)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|c| c.checked_mul(dtype.size()))
        .ok_or_else(|| structure_at(file, at, "array size overflows"))?;
    check_exact_len(file, count, data.len())?;
    Ok(NdArray {
        shape,
        dtype,
        little_endian,
        data: data.to_vec(),
    })
}

fn interpret_dtype(obj: &Object, file: &str) -> Result<(NpDType, bool)> {
    let at = obj.offset;
    obj.check_class(
        Global::DTypeClass,
        file,
        "the array's dtype is not a numpy.dtype",
    )?;
    let [Value::Str(code), Value::Bool(false), Value::Bool(true)] = &obj.args[..] else {
        return Err(structure_at(file, at, "expected dtype(code, False, True)"));
    };
    let state = obj.state_tuple(file, "dtype")?;
    let [
        Value::Int(3),
        Value::Str(order),
        Value::None,
        Value::None,
        Value::None,
        Value::Int(-1),
        Value::Int(-1),
        Value::Int(0),
    ] = state
    else {
        return Err(structure_at(
            file,
            at,
            "expected dtype state (3, order, None, None, None, -1, -1, 0)",
        ));
    };
    let dtype = match &**code {
        "u1" => NpDType::U8,
        "i4" => NpDType::I32,
        "i8" => NpDType::I64,
        other => {
            return Err(structure_at(
                file,
                at,
                format!("dtype `{other}` is not accepted (u1, i4, i8 are)"),
            ));
        }
    };
    let little_endian = match (dtype, &**order) {
        (NpDType::U8, "|") => true,
        (NpDType::I32 | NpDType::I64, "<") => true,
        (NpDType::I32 | NpDType::I64, ">") => false,
        (_, other) => {
            return Err(structure_at(
                file,
                at,
                format!("byte order `{other}` does not fit dtype `{code}`"),
            ));
        }
    };
    Ok((dtype, little_endian))
}

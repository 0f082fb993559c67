//! Reading and writing numpy `.npy` files (format versions 1.0–3.0), the format people already have
//! for tensors.
//!
//! Only what a tensor needs: little-endian (or single-byte) numeric dtypes and bool, C order. Fortran
//! order and big-endian data are refused with a clear message rather than silently transposed or
//! byte-swapped.

use std::io::{Read, Write};
use std::path::Path;

use inferd_proto::DType;

use crate::tensor::HostTensor;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Refuse headers longer than this: real ones are under 200 bytes.
const MAX_HEADER: usize = 64 * 1024;

/// A malformed or unsupported `.npy` file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not an `.npy` file or its header is malformed.
    #[error("not a valid .npy file: {0}")]
    Format(String),
    /// A valid file this module does not handle.
    #[error("unsupported .npy file: {0}")]
    Unsupported(String),
}

fn descr(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::F64 => "<f8",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
    }
}

fn dtype_of(descr: &str) -> Result<DType, NpyError> {
    // '=' is native order, which is little-endian on every target inferd supports.
    let normalised = descr.replacen('=', "<", 1);
    let single_byte = normalised.replacen('<', "|", 1);
    DType::ALL
        .into_iter()
        .find(|d| self::descr(*d) == normalised || self::descr(*d) == single_byte)
        .ok_or_else(|| NpyError::Unsupported(format!("dtype {descr:?}")))
}

/// Parses an `.npy` file into a tensor called `name`.
///
/// # Errors
/// [`NpyError`] for anything that is not a C-order little-endian array of a supported dtype, or whose
/// data length disagrees with its shape.
pub fn read(mut r: impl Read, name: &str) -> Result<HostTensor, NpyError> {
    let mut lead = [0u8; 8];
    r.read_exact(&mut lead)?;
    if &lead[..6] != MAGIC {
        return Err(NpyError::Format("missing \\x93NUMPY magic".into()));
    }
    let header_len = match lead[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            usize::from(u16::from_le_bytes(b))
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)?;
            usize::try_from(u32::from_le_bytes(b)).unwrap_or(usize::MAX)
        }
        v => return Err(NpyError::Unsupported(format!("format version {v}"))),
    };
    if header_len > MAX_HEADER {
        return Err(NpyError::Format(format!("header of {header_len} bytes")));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header)?;
    let header =
        String::from_utf8(header).map_err(|_| NpyError::Format("header is not UTF-8".into()))?;
    let descr = dict_value(&header, "descr")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let dtype = dtype_of(descr)?;
    if dict_value(&header, "fortran_order")? != "False" {
        return Err(NpyError::Unsupported(
            "Fortran order; save with np.ascontiguousarray".into(),
        ));
    }
    let shape = parse_shape(&dict_value(&header, "shape")?)?;
    let expected = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| NpyError::Format("shape overflows".into()))?;
    let mut data = Vec::new();
    r.take(expected as u64 + 1).read_to_end(&mut data)?;
    if data.len() != expected {
        return Err(NpyError::Format(format!(
            "{} data bytes, shape needs {expected}",
            data.len()
        )));
    }
    Ok(HostTensor {
        name: name.to_owned(),
        dtype,
        shape,
        data,
    })
}

/// Reads the `.npy` file at `path` into a tensor called `name`.
///
/// # Errors
/// As [`read`], and I/O errors opening the file.
pub fn read_file(path: &Path, name: &str) -> Result<HostTensor, NpyError> {
    read(std::io::BufReader::new(std::fs::File::open(path)?), name)
}

/// Reads every `*.npy` file of `dir` (one model's sample inputs, say), each named after its file
/// stem, sorted by name.
///
/// # Errors
/// As [`read_file`], for the first file that fails.
pub fn read_folder(dir: &Path) -> Result<Vec<HostTensor>, NpyError> {
    let mut tensors = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "npy") {
            if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
                tensors.push(read_file(&path, name)?);
            }
        }
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

/// The text of `'key': value` in the header dict, up to the next top-level comma.
fn dict_value(header: &str, key: &str) -> Result<String, NpyError> {
    let missing = || NpyError::Format(format!("header has no {key:?}"));
    let at = header.find(&format!("'{key}'")).ok_or_else(missing)?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')
        .ok_or_else(missing)?
        .trim_start();
    let mut depth = 0i32;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            depth == 0 && (c == ',' || c == '}')
        })
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    Ok(rest[..end].trim().to_owned())
}

fn parse_shape(text: &str) -> Result<Vec<u64>, NpyError> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| NpyError::Format(format!("shape {text:?}")))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| NpyError::Format(format!("shape {text:?}")))
        })
        .collect()
}

/// Writes `t` as a version 1.0 `.npy` file.
///
/// # Errors
/// I/O errors from `w`.
pub fn write(mut w: impl Write, t: &HostTensor) -> Result<(), NpyError> {
    let shape = match t.shape.as_slice() {
        [] => "()".to_owned(),
        [one] => format!("({one},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        descr(t.dtype)
    );
    // Pad with spaces so that the data starts on a 64-byte boundary, newline-terminated.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.extend(std::iter::repeat_n(' ', (64 - unpadded % 64) % 64));
    header.push('\n');
    let len =
        u16::try_from(header.len()).map_err(|_| NpyError::Unsupported("shape too long".into()))?;
    w.write_all(MAGIC)?;
    w.write_all(&[1, 0])?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    w.write_all(&t.data)?;
    Ok(())
}

/// A tensor name as a file name: characters other than ASCII letters, digits, '-' and '_' become '_'
/// (`save_infer_model/scale_0.tmp_1` → `save_infer_model_scale_0_tmp_1`).
pub fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_reads_as_named_sorted_tensors() {
        let dir = std::env::temp_dir().join(format!("inferd-npy-folder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, v) in [("state", 2.0), ("input", 1.0)] {
            let file = std::fs::File::create(dir.join(format!("{name}.npy"))).unwrap();
            write(file, &HostTensor::from_f32(name, &[1], &[v])).unwrap();
        }
        std::fs::write(dir.join("README"), "not a tensor").unwrap();
        let tensors = read_folder(&dir).unwrap();
        let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec!["input", "state"]);
        assert_eq!(tensors[1].as_f32().unwrap(), vec![2.0]);
        assert!(matches!(
            read_file(&dir.join("missing.npy"), "x"),
            Err(NpyError::Io(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_names_become_safe_file_names() {
        assert_eq!(
            file_stem("save_infer_model/scale_0.tmp_1"),
            "save_infer_model_scale_0_tmp_1"
        );
        assert_eq!(file_stem("a-b_C9"), "a-b_C9");
        assert_eq!(file_stem("../x y"), "___x_y");
    }

    #[test]
    fn round_trip_every_dtype_and_rank() {
        for dtype in DType::ALL {
            for shape in [vec![], vec![3], vec![2, 3], vec![1, 2, 1, 2]] {
                let n: u64 = shape.iter().product();
                let data = (0..n as usize * dtype.size())
                    .map(|i| (i % 2) as u8)
                    .collect();
                let t = HostTensor {
                    name: "t".into(),
                    dtype,
                    shape: shape.clone(),
                    data,
                };
                let mut buf = Vec::new();
                write(&mut buf, &t).unwrap();
                assert_eq!(
                    (buf.len() - t.data.len()) % 64,
                    0,
                    "data is 64-byte aligned"
                );
                assert_eq!(read(&buf[..], "t").unwrap(), t);
            }
        }
    }

    #[test]
    fn reads_what_numpy_writes() {
        // np.save of np.array([[1.5, -2.0]], dtype=np.float32), header copied from numpy 1.26.
        let mut file =
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }"
                .to_vec();
        file.extend(std::iter::repeat_n(b' ', 128 - file.len() - 1));
        file.push(b'\n');
        file.extend_from_slice(&1.5f32.to_le_bytes());
        file.extend_from_slice(&(-2.0f32).to_le_bytes());
        let t = read(&file[..], "x").unwrap();
        assert_eq!(t.shape, vec![1, 2]);
        assert_eq!(t.as_f32().unwrap(), vec![1.5, -2.0]);
    }

    #[test]
    fn refuses_what_it_cannot_represent() {
        let t = HostTensor::from_f32("x", &[2], &[1.0, 2.0]);
        let mut buf = Vec::new();
        write(&mut buf, &t).unwrap();
        let edit = |from: &[u8], to: &[u8]| {
            let at = buf.windows(from.len()).position(|w| w == from).unwrap();
            let mut edited = buf.clone();
            edited[at..at + to.len()].copy_from_slice(to);
            edited
        };
        let fortran = edit(b"False", b"True ");
        assert!(matches!(
            read(&fortran[..], "x"),
            Err(NpyError::Unsupported(_))
        ));
        let big_endian = edit(b"<f4", b">f4");
        assert!(matches!(
            read(&big_endian[..], "x"),
            Err(NpyError::Unsupported(_))
        ));
        assert!(matches!(
            read(&buf[..buf.len() - 1], "x"),
            Err(NpyError::Format(_))
        ));
        let mut longer = buf.clone();
        longer.push(0);
        assert!(matches!(read(&longer[..], "x"), Err(NpyError::Format(_))));
        assert!(matches!(
            read(&b"garbage!!"[..], "x"),
            Err(NpyError::Format(_))
        ));
    }
}

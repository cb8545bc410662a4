//! Writing and reading named tensors in the safetensors format
//! (<https://github.com/huggingface/safetensors>): an 8-byte little-endian header length, a JSON
//! header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}` padded
//! with spaces to a multiple of 8 bytes, then the raw little-endian tensor bytes.
//!
//! The writer is ours (rather than `Tensor::write_safetensors`) so that the file is fsynced and
//! an I/O error (disk full) arrives as an [`std::io::Error`] naming the file. Reading uses tch's
//! reader, which validates the header and offsets. Bytes are copied as they are, so a round trip
//! is bit-identical.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::{Map, Value, json};
use tch::{Device, Kind, Tensor};

use super::CheckpointError;

/// The safetensors name of a dtype.
fn dtype_name(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Bool => "BOOL",
        Kind::Uint8 => "U8",
        Kind::Int8 => "I8",
        Kind::Int16 => "I16",
        Kind::Int => "I32",
        Kind::Int64 => "I64",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Float => "F32",
        Kind::Double => "F64",
        _ => return None,
    })
}

/// Write `tensors` (names unique) to `path` as safetensors and fsync the file. Tensors on a
/// GPU are copied to the CPU first.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), CheckpointError> {
    let io = |error: std::io::Error| CheckpointError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut header = Map::new();
    let mut cpu = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for (name, tensor) in tensors {
        let mismatch = |reason: String| CheckpointError::Mismatch {
            file: path.to_path_buf(),
            tensor: name.clone(),
            reason,
        };
        if name == "__metadata__" || header.contains_key(name) {
            return Err(mismatch("duplicate or reserved tensor name".into()));
        }
        let kind = tensor.kind();
        let dtype = dtype_name(kind)
            .ok_or_else(|| mismatch(format!("dtype {kind:?} has no safetensors name")))?;
        let t = tensor.detach().to_device(Device::Cpu).contiguous();
        let bytes = t.numel() * kind.elt_size_in_bytes();
        header.insert(
            name.clone(),
            json!({ "dtype": dtype, "shape": t.size(), "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
        cpu.push((t, bytes));
    }
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut text = Value::Object(header).to_string().into_bytes();
    text.resize(text.len().next_multiple_of(8), b' ');

    let file = File::create(path).map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&text).map_err(io)?;
    let mut buf = Vec::new();
    for ((name, _), (t, bytes)) in tensors.iter().zip(&cpu) {
        buf.resize(*bytes, 0);
        t.f_copy_data_u8(&mut buf, t.numel())
            .map_err(|e| CheckpointError::Mismatch {
                file: path.to_path_buf(),
                tensor: name.clone(),
                reason: e.to_string(),
            })?;
        out.write_all(&buf).map_err(io)?;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

/// Read every tensor of the safetensors file at `path` (on the CPU), in file order.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::Missing {
                path: path.to_path_buf(),
            });
        }
        Err(error) => {
            return Err(CheckpointError::Io {
                path: path.to_path_buf(),
                error,
            });
        }
        Ok(_) => {}
    }
    Tensor::read_safetensors(path).map_err(|e| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

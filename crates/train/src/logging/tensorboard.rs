//! A TensorBoard event-file writer with no protobuf or TensorBoard dependency.
//!
//! An event file is a sequence of TFRecords, each
//!
//! ```text
//! u64 length (little endian) | u32 masked_crc32c(length bytes) | data | u32 masked_crc32c(data)
//! ```
//!
//! where `data` is a serialized `tensorboard.Event` protobuf. The first record carries
//! `file_version = "brain.Event:2"`; every later one carries a `Summary` with one value. The
//! few protobuf fields used are encoded by hand below; their numbers are those of
//! `event.proto`, `summary.proto`, `tensor.proto` and `tensor_shape.proto`.
//!
//! Records are buffered and written out every [`EventWriter::with_flush_policy`] records or
//! seconds, on [`EventWriter::flush`], and when the writer is dropped, so a run that ends
//! normally (or unwinds from a panic) loses nothing. `std::process::exit` skips destructors:
//! call [`EventWriter::flush`] before it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use image::{DynamicImage, ImageFormat};

/// What can go wrong while writing an event file. Every variant names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log directory could not be created.
    #[error("cannot create log directory {path}: {error}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error (in the message, so not a `source`: it would print twice).
        error: io::Error,
    },
    /// The event file could not be created.
    #[error("cannot create event file {path}: {error}")]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// The underlying error (in the message, so not a `source`: it would print twice).
        error: io::Error,
    },
    /// Writing or flushing the event file failed.
    #[error("cannot write event file {path}: {error}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error (in the message, so not a `source`: it would print twice).
        error: io::Error,
    },
    /// An image could not be encoded as PNG.
    #[error("cannot encode image {tag:?} as PNG for event file {path}: {error}")]
    Encode {
        /// The event file the image was meant for.
        path: PathBuf,
        /// The summary tag of the image.
        tag: String,
        /// The underlying error (in the message, so not a `source`).
        error: image::ImageError,
    },
    /// Bytes passed to [`EventWriter::add_png`] do not start with a PNG signature and header.
    #[error("image {tag:?} for event file {path} is not a PNG (no PNG signature and IHDR chunk)")]
    NotPng {
        /// The event file the image was meant for.
        path: PathBuf,
        /// The summary tag of the image.
        tag: String,
    },
}

/// The `file_version` TensorBoard expects in the first record of an event file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Records written before the buffer is flushed to the file, by default.
pub const DEFAULT_FLUSH_RECORDS: usize = 20;

/// Longest time a record stays in the buffer by default (checked when a record is added).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Writes one TensorBoard event file
/// (`events.out.tfevents.<unix_secs>.<hostname>.<pid>.difflab`) in a log directory.
///
/// ```no_run
/// # use difflab_train::logging::EventWriter;
/// let mut tb = EventWriter::new("runs/example")?;
/// tb.add_scalar("train/loss", 0.042, 100)?;
/// tb.add_text("config", "**lr** = 2e-4", 0)?;
/// tb.flush()?;
/// # Ok::<(), difflab_train::logging::LogError>(())
/// ```
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
    unflushed: usize,
    last_flush: Instant,
    flush_records: usize,
    flush_interval: Duration,
}

impl EventWriter {
    /// Creates `log_dir` if missing and a new event file in it, and writes the file-version
    /// record. The file name is never shared with another writer: if a file of that name
    /// exists (two writers in one directory in the same second), a `.1`, `.2`, … suffix is
    /// added, which TensorBoard still recognises as an event file.
    pub fn new(log_dir: impl AsRef<Path>) -> Result<Self, LogError> {
        let dir = log_dir.as_ref();
        fs::create_dir_all(dir).map_err(|error| LogError::CreateDir {
            path: dir.to_path_buf(),
            error,
        })?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let base = format!(
            "events.out.tfevents.{secs}.{}.{}.difflab",
            hostname(),
            std::process::id()
        );
        let (path, file) = create_unique(dir, &base)?;
        let mut writer = Self {
            path,
            out: BufWriter::with_capacity(1 << 16, file),
            unflushed: 0,
            last_flush: Instant::now(),
            flush_records: DEFAULT_FLUSH_RECORDS,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
        };
        let mut event = event_header(wall_time(), 0);
        event.bytes(3, FILE_VERSION.as_bytes());
        writer.write_record(&event.0)?;
        // The header goes out at once so TensorBoard sees the run as soon as it starts.
        writer.flush()?;
        Ok(writer)
    }

    /// Sets how often buffered records are written to the file: after `records` records
    /// (at least 1) or when a record is added `interval` or more after the last flush.
    #[must_use]
    pub fn with_flush_policy(mut self, records: usize, interval: Duration) -> Self {
        self.flush_records = records.max(1);
        self.flush_interval = interval;
        self
    }

    /// The path of the event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs a scalar. TensorBoard stores it as a 32-bit float (`Summary.Value.simple_value`).
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<(), LogError> {
        let mut v = Proto::default();
        v.bytes(1, tag.as_bytes());
        // Narrowing to f32 is what the `simple_value` field holds.
        #[allow(clippy::cast_possible_truncation)]
        v.fixed32(2, value as f32);
        self.write_summary(&v, step)
    }

    /// Logs an image, encoded as PNG. 8- and 16-bit images are stored as they are; float
    /// images are converted to 8 bits.
    pub fn add_image(
        &mut self,
        tag: &str,
        image: &DynamicImage,
        step: i64,
    ) -> Result<(), LogError> {
        let converted;
        let image = match image {
            DynamicImage::ImageRgb32F(_) => {
                converted = DynamicImage::ImageRgb8(image.to_rgb8());
                &converted
            }
            DynamicImage::ImageRgba32F(_) => {
                converted = DynamicImage::ImageRgba8(image.to_rgba8());
                &converted
            }
            other => other,
        };
        let mut png = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .map_err(|error| LogError::Encode {
                path: self.path.clone(),
                tag: tag.to_owned(),
                error,
            })?;
        let colorspace = u32::from(image.color().channel_count());
        self.write_image(tag, &png, image.width(), image.height(), colorspace, step)
    }

    /// Logs an already encoded PNG. Width, height and channel count are read from the PNG's
    /// own header, so they cannot disagree with the pixels.
    pub fn add_png(&mut self, tag: &str, png: &[u8], step: i64) -> Result<(), LogError> {
        let (width, height, colorspace) = png_header(png).ok_or_else(|| LogError::NotPng {
            path: self.path.clone(),
            tag: tag.to_owned(),
        })?;
        self.write_image(tag, png, width, height, colorspace, step)
    }

    /// Logs markdown text, in the form TensorBoard's text plugin reads: a scalar `DT_STRING`
    /// tensor tagged with plugin name `"text"`.
    pub fn add_text(&mut self, tag: &str, markdown: &str, step: i64) -> Result<(), LogError> {
        let mut plugin_data = Proto::default();
        plugin_data.bytes(1, b"text");
        // `content` is a serialized TextPluginData{version: 0}: empty.
        let mut metadata = Proto::default();
        metadata.message(1, &plugin_data);

        let mut tensor = Proto::default();
        tensor.varint(1, DT_STRING);
        // An empty TensorShapeProto: a scalar, which the plugin renders as markdown (a shape
        // of [1] would be rendered as a one-cell table).
        tensor.message(2, &Proto::default());
        tensor.bytes(8, markdown.as_bytes());

        let mut v = Proto::default();
        v.bytes(1, tag.as_bytes());
        v.message(9, &metadata);
        v.message(8, &tensor);
        self.write_summary(&v, step)
    }

    /// Writes every buffered record to the file.
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.out.flush().map_err(|error| LogError::Write {
            path: self.path.clone(),
            error,
        })?;
        self.unflushed = 0;
        self.last_flush = Instant::now();
        Ok(())
    }

    fn write_image(
        &mut self,
        tag: &str,
        png: &[u8],
        width: u32,
        height: u32,
        colorspace: u32,
        step: i64,
    ) -> Result<(), LogError> {
        let mut img = Proto::default();
        img.varint(1, u64::from(height));
        img.varint(2, u64::from(width));
        img.varint(3, u64::from(colorspace));
        img.bytes(4, png);
        let mut v = Proto::default();
        v.bytes(1, tag.as_bytes());
        v.message(4, &img);
        self.write_summary(&v, step)
    }

    fn write_summary(&mut self, value: &Proto, step: i64) -> Result<(), LogError> {
        let mut summary = Proto::default();
        summary.message(1, value);
        let mut event = event_header(wall_time(), step);
        event.message(5, &summary);
        self.write_record(&event.0)?;
        self.unflushed += 1;
        if self.unflushed >= self.flush_records || self.last_flush.elapsed() >= self.flush_interval
        {
            self.flush()?;
        }
        Ok(())
    }

    fn write_record(&mut self, data: &[u8]) -> Result<(), LogError> {
        let len = (data.len() as u64).to_le_bytes();
        let mut frame = Vec::with_capacity(data.len() + 16);
        frame.extend_from_slice(&len);
        frame.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        frame.extend_from_slice(data);
        frame.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.out.write_all(&frame).map_err(|error| LogError::Write {
            path: self.path.clone(),
            error,
        })
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            eprintln!("warning: {e}");
        }
    }
}

/// `tensorflow.DataType.DT_STRING`.
const DT_STRING: u64 = 7;

/// An `Event` with `wall_time` (field 1, double) and `step` (field 2, int64).
fn event_header(wall_time: f64, step: i64) -> Proto {
    let mut event = Proto::default();
    event.fixed64(1, wall_time);
    if step != 0 {
        // Two's complement, as protobuf encodes a negative int64.
        event.varint(2, step as u64);
    }
    event
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The machine's host name, restricted to characters that are safe in a file name.
fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".to_owned()
    } else {
        name
    }
}

fn create_unique(dir: &Path, base: &str) -> Result<(PathBuf, File), LogError> {
    let mut n = 0u32;
    loop {
        let name = if n == 0 {
            base.to_owned()
        } else {
            format!("{base}.{n}")
        };
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
            Err(error) => return Err(LogError::CreateFile { path, error }),
        }
    }
}

/// Width, height and channel count from a PNG's signature and IHDR chunk.
fn png_header(png: &[u8]) -> Option<(u32, u32, u32)> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    if png.len() < 26 || png[..8] != SIGNATURE || &png[12..16] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let height = u32::from_be_bytes(png[20..24].try_into().ok()?);
    let channels = match png[25] {
        0 => 1,     // greyscale
        2 | 3 => 3, // RGB, palette
        4 => 2,     // greyscale + alpha
        6 => 4,     // RGBA
        _ => return None,
    };
    Some((width, height, channels))
}

/// A protobuf message under construction: fields are appended in the order written.
#[derive(Default)]
struct Proto(Vec<u8>);

impl Proto {
    fn key(&mut self, field: u32, wire_type: u8) {
        self.raw_varint((u64::from(field) << 3) | u64::from(wire_type));
    }

    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// Wire type 0: int32, int64, uint64, bool, enum.
    fn varint(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.raw_varint(v);
    }

    /// Wire type 1: double.
    fn fixed64(&mut self, field: u32, v: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// Wire type 5: float.
    fn fixed32(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// Wire type 2: string, bytes.
    fn bytes(&mut self, field: u32, v: &[u8]) {
        self.key(field, 2);
        self.raw_varint(v.len() as u64);
        self.0.extend_from_slice(v);
    }

    /// Wire type 2: an embedded message.
    fn message(&mut self, field: u32, m: &Proto) {
        self.bytes(field, &m.0);
    }
}

/// The CRC-32C (Castagnoli, reflected polynomial `0x82F63B78`) lookup table.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli) of `data`, as used by TFRecord; `crc32c(b"123456789") == 0xE3069283`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The masked CRC-32C TFRecord stores: `((crc >> 15) | (crc << 17)) + 0xa282ead8`, wrapping.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_test_vectors() {
        // RFC 3720 (iSCSI), appendix B.4, and the common check value.
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        let descending: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113F_DB5C);
    }

    #[test]
    fn mask_is_rotate_then_add() {
        let crc = crc32c(b"123456789");
        // Spelled as TFRecord documents it, to check the rotate used above.
        #[allow(clippy::manual_rotate)]
        let expected = ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8);
        assert_eq!(masked_crc32c(b"123456789"), expected);
    }

    #[test]
    fn varints_match_protobuf_encoding() {
        let mut p = Proto::default();
        p.raw_varint(1);
        p.raw_varint(300);
        p.raw_varint(u64::MAX);
        assert_eq!(p.0[..3], [0x01, 0xAC, 0x02]);
        assert_eq!(p.0.len(), 3 + 10);
        assert_eq!(*p.0.last().unwrap(), 0x01);
        let mut q = Proto::default();
        q.bytes(1, b"ab");
        q.fixed32(2, 1.0);
        assert_eq!(q.0, [0x0A, 2, b'a', b'b', 0x15, 0, 0, 0x80, 0x3F]);
    }

    #[test]
    fn png_header_reads_width_then_height() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(7, 2));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        assert_eq!(png_header(&png), Some((7, 2, 3)));
        assert_eq!(png_header(b"not a png at all, definitely not"), None);
        assert_eq!(png_header(&png[..10]), None);
    }

    #[test]
    fn hostname_is_file_name_safe() {
        let h = hostname();
        assert!(!h.is_empty());
        assert!(
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }
}

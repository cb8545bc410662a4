//! The TensorBoard event writer, checked twice: by a small reader written here (TFRecord
//! framing, both CRCs, the protobuf fields) and by TensorBoard's own `EventAccumulator` from the
//! project venv (`scripts/test.sh` installs `tensorboard`; without it the Python check is
//! skipped, unless `CI` is set, where it fails).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use difflab_train::logging::tensorboard::{crc32c, masked_crc32c};
use difflab_train::logging::{EventWriter, LogError};
use image::{DynamicImage, GrayImage, ImageFormat, Rgb, RgbImage};

// ---------------------------------------------------------------------------------------------
// Test helpers: a scratch directory and an independent reader.
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("difflab-tb-{name}-{}-{nanos}", std::process::id()));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bit-at-a-time CRC-32C, independent of the table-driven one under test.
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

/// The TFRecord mask, spelled as its documentation writes it.
#[allow(clippy::manual_rotate)]
fn masked(data: &[u8]) -> u32 {
    let crc = crc32c_bitwise(data);
    ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8)
}

/// Splits a TFRecord file into its records, checking both CRCs of each.
fn read_records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        assert!(bytes.len() - at >= 12, "truncated header at {at}");
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(
            len_crc,
            masked(len_bytes),
            "length CRC of record {}",
            records.len()
        );
        let data_at = at + 12;
        assert!(bytes.len() >= data_at + len + 4, "truncated record at {at}");
        let data = &bytes[data_at..data_at + len];
        let data_crc =
            u32::from_le_bytes(bytes[data_at + len..data_at + len + 4].try_into().unwrap());
        assert_eq!(
            data_crc,
            masked(data),
            "data CRC of record {}",
            records.len()
        );
        records.push(data.to_vec());
        at = data_at + len + 4;
    }
    records
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
}

/// Decodes one protobuf message into (field number, value) pairs, in order.
fn decode(mut buf: &[u8]) -> Vec<(u32, Field)> {
    fn varint(buf: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().expect("truncated varint");
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
        }
        panic!("varint too long");
    }
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf);
        let field = u32::try_from(key >> 3).unwrap();
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut buf)),
            1 => {
                let (v, rest) = buf.split_at(8);
                buf = rest;
                Field::Fixed64(u64::from_le_bytes(v.try_into().unwrap()))
            }
            2 => {
                let len = varint(&mut buf) as usize;
                let (v, rest) = buf.split_at(len);
                buf = rest;
                Field::Bytes(v.to_vec())
            }
            5 => {
                let (v, rest) = buf.split_at(4);
                buf = rest;
                Field::Fixed32(u32::from_le_bytes(v.try_into().unwrap()))
            }
            w => panic!("unexpected wire type {w}"),
        };
        fields.push((field, value));
    }
    fields
}

fn get(fields: &[(u32, Field)], number: u32) -> Option<&Field> {
    let mut found = fields.iter().filter(|(n, _)| *n == number);
    let first = found.next().map(|(_, f)| f);
    assert!(found.next().is_none(), "field {number} repeated");
    first
}

fn get_bytes(fields: &[(u32, Field)], number: u32) -> Option<&[u8]> {
    match get(fields, number)? {
        Field::Bytes(b) => Some(b),
        other => panic!("field {number}: expected bytes, got {other:?}"),
    }
}

fn get_varint(fields: &[(u32, Field)], number: u32) -> Option<u64> {
    match get(fields, number)? {
        Field::Varint(v) => Some(*v),
        other => panic!("field {number}: expected varint, got {other:?}"),
    }
}

#[derive(Debug, Default)]
struct Event {
    wall_time: f64,
    step: i64,
    file_version: Option<String>,
    value: Option<Value>,
}

#[derive(Debug, Default)]
struct Value {
    tag: String,
    simple_value: Option<f32>,
    /// height, width, colorspace, PNG bytes
    image: Option<(u64, u64, u64, Vec<u8>)>,
    plugin_name: Option<String>,
    /// dtype, number of shape dims, string value
    tensor: Option<(u64, usize, String)>,
}

/// Decodes the fields of `tensorboard.Event` that the writer uses.
fn decode_event(data: &[u8]) -> Event {
    let f = decode(data);
    let mut event = Event {
        wall_time: match get(&f, 1) {
            Some(Field::Fixed64(bits)) => f64::from_bits(*bits),
            other => panic!("wall_time: {other:?}"),
        },
        step: get_varint(&f, 2).unwrap_or(0) as i64,
        file_version: get_bytes(&f, 3).map(|b| String::from_utf8(b.to_vec()).unwrap()),
        value: None,
    };
    if let Some(summary) = get_bytes(&f, 5) {
        let summary = decode(summary);
        assert_eq!(summary.len(), 1, "one value per summary");
        let v = decode(get_bytes(&summary, 1).unwrap());
        let mut value = Value {
            tag: String::from_utf8(get_bytes(&v, 1).unwrap().to_vec()).unwrap(),
            ..Value::default()
        };
        if let Some(field) = get(&v, 2) {
            let Field::Fixed32(bits) = field else {
                panic!("simple_value: {field:?}")
            };
            value.simple_value = Some(f32::from_bits(*bits));
        }
        if let Some(img) = get_bytes(&v, 4) {
            let img = decode(img);
            value.image = Some((
                get_varint(&img, 1).unwrap(),
                get_varint(&img, 2).unwrap(),
                get_varint(&img, 3).unwrap(),
                get_bytes(&img, 4).unwrap().to_vec(),
            ));
        }
        if let Some(meta) = get_bytes(&v, 9) {
            let plugin = decode(get_bytes(&decode(meta), 1).unwrap());
            value.plugin_name =
                Some(String::from_utf8(get_bytes(&plugin, 1).unwrap().to_vec()).unwrap());
        }
        if let Some(t) = get_bytes(&v, 8) {
            let t = decode(t);
            let dims = get_bytes(&t, 2).map_or(0, |shape| {
                decode(shape).iter().filter(|(n, _)| *n == 2).count()
            });
            value.tensor = Some((
                get_varint(&t, 1).unwrap(),
                dims,
                String::from_utf8(get_bytes(&t, 8).unwrap().to_vec()).unwrap(),
            ));
        }
        event.value = Some(value);
    }
    event
}

fn read_events(path: &Path) -> Vec<Event> {
    read_records(path).iter().map(|r| decode_event(r)).collect()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A non-square RGB test image: 5 wide, 3 high, with a gradient so PNG has real content.
fn test_image() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(5, 3, |x, y| {
        Rgb([(x * 50) as u8, (y * 100) as u8, 7])
    }))
}

fn gray_png(width: u32, height: u32) -> Vec<u8> {
    let img = DynamicImage::ImageLuma8(GrayImage::from_fn(width, height, |x, y| {
        image::Luma([(x + y) as u8])
    }));
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    png
}

const TEXT: &str = "## Config\n\n**lr** = `2e-4`, schedule *cosine*";
const SCALARS: [(i64, f64); 4] = [(0, 1.25), (1, 0.5), (100, 0.0421), (5000, -3.0e-5)];

/// Writes the reference content: scalars, an RGB image, a gray PNG and a text.
fn write_reference(dir: &Path) -> PathBuf {
    let mut w = EventWriter::new(dir).unwrap();
    for (step, v) in SCALARS {
        w.add_scalar("train/loss", v, step).unwrap();
    }
    w.add_scalar("train/lr", 2e-4, 100).unwrap();
    w.add_image("samples", &test_image(), 100).unwrap();
    w.add_png("samples/png", &gray_png(4, 9), 200).unwrap();
    w.add_text("config", TEXT, 0).unwrap();
    w.flush().unwrap();
    w.path().to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn crc32c_test_vectors() {
    for (data, crc) in [
        (&b""[..], 0u32),
        (b"123456789", 0xE306_9283),
        (&[0u8; 32], 0x8A91_36AA),
        (&[0xFFu8; 32], 0x62A8_AB43),
    ] {
        assert_eq!(crc32c(data), crc, "{data:?}");
        assert_eq!(crc32c_bitwise(data), crc, "{data:?}");
    }
    let ascending: Vec<u8> = (0u8..32).collect();
    assert_eq!(crc32c(&ascending), 0x46DD_794E);
    // Longer, unaligned input: table and bitwise versions agree, and so do the masks.
    let long: Vec<u8> = (0..1001u32).map(|i| (i * 31 % 251) as u8).collect();
    assert_eq!(crc32c(&long), crc32c_bitwise(&long));
    assert_eq!(masked_crc32c(&long), masked(&long));
}

#[test]
fn records_round_trip_with_valid_crcs() {
    let scratch = Scratch::new("roundtrip");
    let path = write_reference(&scratch.0);
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    assert!(
        name.ends_with(&format!(".{}.difflab", std::process::id())),
        "{name}"
    );

    let events = read_events(&path);
    assert_eq!(events.len(), 1 + SCALARS.len() + 4);
    let now = now_secs();
    for e in &events {
        assert!(
            (now - e.wall_time).abs() < 600.0,
            "wall_time {}",
            e.wall_time
        );
    }
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    assert!(events[0].value.is_none());

    for (event, (step, v)) in events[1..].iter().zip(SCALARS) {
        let value = event.value.as_ref().unwrap();
        assert_eq!((value.tag.as_str(), event.step), ("train/loss", step));
        assert_eq!(value.simple_value, Some(v as f32));
    }
    let lr = &events[5];
    assert_eq!(lr.value.as_ref().unwrap().simple_value, Some(2e-4_f32));

    // The RGB image: height 3, width 5, 3 channels; the PNG decodes to the same pixels.
    let img = events[6].value.as_ref().unwrap();
    assert_eq!((img.tag.as_str(), events[6].step), ("samples", 100));
    let (h, w, cs, png) = img.image.clone().unwrap();
    assert_eq!((h, w, cs), (3, 5, 3));
    let decoded = image::load_from_memory(&png).unwrap();
    assert_eq!(decoded.to_rgb8(), test_image().to_rgb8());

    // The PNG passed as bytes: dimensions read from its header, greyscale.
    let png_value = events[7].value.as_ref().unwrap();
    assert_eq!(png_value.tag, "samples/png");
    let (h, w, cs, bytes) = png_value.image.clone().unwrap();
    assert_eq!((h, w, cs), (9, 4, 1));
    assert_eq!(bytes, gray_png(4, 9));

    let text = events[8].value.as_ref().unwrap();
    assert_eq!((text.tag.as_str(), events[8].step), ("config", 0));
    assert_eq!(text.plugin_name.as_deref(), Some("text"));
    assert_eq!(text.tensor, Some((7, 0, TEXT.to_owned())));
}

#[test]
fn drop_flushes_buffered_records() {
    let scratch = Scratch::new("drop");
    let mut w = EventWriter::new(&scratch.0)
        .unwrap()
        .with_flush_policy(1_000_000, Duration::from_secs(3600));
    let path = w.path().to_path_buf();
    for step in 0..200 {
        w.add_scalar("loss", f64::from(step as i32) * 0.5, step)
            .unwrap();
    }
    // Still buffered: only the file-version record, written at creation, is on disk.
    assert_eq!(read_records(&path).len(), 1);
    drop(w);
    let events = read_events(&path);
    assert_eq!(events.len(), 201);
    let last = events.last().unwrap();
    assert_eq!(last.step, 199);
    assert_eq!(last.value.as_ref().unwrap().simple_value, Some(99.5));
}

#[test]
fn explicit_flush_and_record_count_policy() {
    let scratch = Scratch::new("flush");
    let mut w = EventWriter::new(&scratch.0)
        .unwrap()
        .with_flush_policy(3, Duration::from_secs(3600));
    let path = w.path().to_path_buf();
    w.add_scalar("a", 1.0, 1).unwrap();
    w.add_scalar("a", 2.0, 2).unwrap();
    assert_eq!(read_records(&path).len(), 1);
    w.add_scalar("a", 3.0, 3).unwrap();
    assert_eq!(read_records(&path).len(), 4, "flushed after 3 records");
    w.add_scalar("a", 4.0, 4).unwrap();
    w.flush().unwrap();
    assert_eq!(read_records(&path).len(), 5);
}

#[test]
fn two_writers_in_one_dir_get_distinct_files() {
    let scratch = Scratch::new("two");
    let mut a = EventWriter::new(&scratch.0).unwrap();
    let mut b = EventWriter::new(&scratch.0).unwrap();
    assert_ne!(a.path(), b.path());
    a.add_scalar("x", 1.0, 1).unwrap();
    b.add_scalar("x", 2.0, 1).unwrap();
    let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
    drop((a, b));
    for (p, v) in [(pa, 1.0), (pb, 2.0)] {
        assert!(
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .contains("tfevents")
        );
        let events = read_events(&p);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].value.as_ref().unwrap().simple_value, Some(v));
    }
}

#[test]
fn non_square_image_keeps_width_and_height() {
    let scratch = Scratch::new("dims");
    let mut w = EventWriter::new(&scratch.0).unwrap();
    // Tall and wide, so a swap shows either way.
    let tall = DynamicImage::ImageRgba8(image::RgbaImage::new(2, 11));
    let wide = DynamicImage::ImageLuma8(GrayImage::new(13, 1));
    w.add_image("tall", &tall, 1).unwrap();
    w.add_image("wide", &wide, 1).unwrap();
    let path = w.path().to_path_buf();
    drop(w);
    let events = read_events(&path);
    let dims = |i: usize| {
        let (h, w, cs, png) = events[i].value.as_ref().unwrap().image.clone().unwrap();
        let decoded = image::load_from_memory(&png).unwrap();
        assert_eq!(
            (u64::from(decoded.width()), u64::from(decoded.height())),
            (w, h)
        );
        (w, h, cs)
    };
    assert_eq!(dims(1), (2, 11, 4));
    assert_eq!(dims(2), (13, 1, 1));
}

#[test]
fn errors_name_the_path_and_do_not_panic() {
    let scratch = Scratch::new("errors");
    std::fs::create_dir_all(&scratch.0).unwrap();
    let blocker = scratch.0.join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let bad_dir = blocker.join("logs");
    let err = EventWriter::new(&bad_dir).unwrap_err();
    assert!(matches!(err, LogError::CreateDir { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&bad_dir.display().to_string()),
        "{err}"
    );

    let mut w = EventWriter::new(&scratch.0).unwrap();
    let err = w
        .add_png("img", b"definitely not a png image", 1)
        .unwrap_err();
    assert!(matches!(err, LogError::NotPng { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&w.path().display().to_string()),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// TensorBoard's own reader
// ---------------------------------------------------------------------------------------------

const READ_WITH_TENSORBOARD: &str = r#"
import json, sys
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.text import text_plugin
from tensorboard.util import tensor_util

acc = ea.EventAccumulator(sys.argv[1], size_guidance={k: 0 for k in ea.DEFAULT_SIZE_GUIDANCE})
acc.Reload()
tags = acc.Tags()
out = {"file_version": acc.file_version, "first_wall_time": acc.FirstEventTimestamp(),
       "scalars": {}, "images": {}, "texts": {}}
for t in tags["scalars"]:
    out["scalars"][t] = [[e.step, e.value] for e in acc.Scalars(t)]
for t in tags["images"]:
    out["images"][t] = [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in acc.Images(t)]
for t in tags["tensors"]:
    plugin = acc.SummaryMetadata(t).plugin_data.plugin_name
    for e in acc.Tensors(t):
        arr = tensor_util.make_ndarray(e.tensor_proto)
        out["texts"].setdefault(t, []).append(
            [e.step, plugin, list(arr.shape), arr.item().decode("utf-8"),
             text_plugin.text_array_to_html(arr, True)])
print(json.dumps(out))
"#;

/// The venv's Python when it can import tensorboard; `None` (skip) otherwise, except under CI.
fn tensorboard_python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    let note = format!(
        "{} cannot import tensorboard (scripts/test.sh installs it: \
         .venv/bin/pip install tensorboard)",
        python.display()
    );
    assert!(std::env::var_os("CI").is_none(), "CI is set and {note}");
    eprintln!("SKIPPED the TensorBoard reader check: {note}");
    None
}

#[test]
fn tensorboard_event_accumulator_reads_the_file() {
    let Some(python) = tensorboard_python() else {
        return;
    };
    let scratch = Scratch::new("accumulator");
    let path = write_reference(&scratch.0);
    let out = Command::new(&python)
        .args(["-c", READ_WITH_TENSORBOARD])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "EventAccumulator failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(json["file_version"], 2.0);
    let first = json["first_wall_time"].as_f64().unwrap();
    assert!((now_secs() - first).abs() < 600.0, "{first}");

    let loss = json["scalars"]["train/loss"].as_array().unwrap();
    assert_eq!(loss.len(), SCALARS.len());
    for (row, (step, v)) in loss.iter().zip(SCALARS) {
        assert_eq!(row[0].as_i64(), Some(step));
        assert_eq!(row[1].as_f64(), Some(f64::from(v as f32)), "step {step}");
    }
    let lr = &json["scalars"]["train/lr"][0];
    assert_eq!(
        (lr[0].as_i64(), lr[1].as_f64()),
        (Some(100), Some(f64::from(2e-4_f32)))
    );

    // [step, width, height, png bytes]
    let img = &json["images"]["samples"][0];
    assert_eq!(
        (img[0].as_i64(), img[1].as_u64(), img[2].as_u64()),
        (Some(100), Some(5), Some(3))
    );
    assert!(img[3].as_u64().unwrap() > 8);
    let png = &json["images"]["samples/png"][0];
    assert_eq!(
        (png[0].as_i64(), png[1].as_u64(), png[2].as_u64()),
        (Some(200), Some(4), Some(9))
    );

    // [step, plugin, shape, text, html]
    let text = &json["texts"]["config"][0];
    assert_eq!(text[0].as_i64(), Some(0));
    assert_eq!(text[1], "text");
    assert_eq!(text[2], serde_json::json!([]));
    assert_eq!(text[3], TEXT);
    let html = text[4].as_str().unwrap();
    assert!(html.contains("<h2>Config</h2>"), "{html}");
    assert!(html.contains("<strong>lr</strong>"), "{html}");
    assert!(html.contains("<code>2e-4</code>"), "{html}");
}

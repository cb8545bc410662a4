//! A minimal reader for the `.npy` reference arrays in `tests/golden/` (C-ordered uint8 only).
#![allow(dead_code)]

/// A `.npy` file holding a C-ordered uint8 array: (shape, data).
pub fn read_npy_u8(path: &std::path::Path) -> (Vec<i64>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not an .npy file");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("utf-8 header");
    assert!(
        header.contains("'descr': '|u1'") && header.contains("'fortran_order': False"),
        "expected C-ordered uint8, header {header}"
    );
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape in header");
    let shape: Vec<i64> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("shape entry"))
        .collect();
    let data = bytes[start + header_len..].to_vec();
    assert_eq!(
        data.len() as i64,
        shape.iter().product::<i64>(),
        "data size"
    );
    (shape, data)
}

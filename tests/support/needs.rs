//! Tests that need something the machine may lack (a dataset, a Python package, a CUDA build of
//! libtorch): they say so loudly and pass where it is missing, but fail when the `CI`
//! environment variable is set, because CI installs everything a test needs.
#![allow(dead_code)]

/// Whether a test needing `what` can run: `present`, or else a note on stderr and `false`.
///
/// # Panics
/// When `what` is missing and `CI` is set.
pub fn available(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but {what} is missing: this test cannot be skipped there"
    );
    eprintln!("SKIPPED: {what} is missing");
    false
}

/// [`available`] for the Debian package `dataset-fashion-mnist`.
pub fn fashion_mnist() -> bool {
    available(
        "/usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)",
        std::path::Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
            .exists(),
    )
}

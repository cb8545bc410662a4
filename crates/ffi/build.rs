//! Links libtorch (shared helper) and compiles the small C++ shim that sets libtorch's autocast
//! dtype, which the C API that tch wraps does not expose (needed for bf16 autocast).

#[path = "../../build-support/libtorch.rs"]
mod libtorch;

fn main() {
    libtorch::link();
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    let Some(root) = libtorch::root() else { return };
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!(
            "-D_GLIBCXX_USE_CXX11_ABI={}",
            std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into())
        ))
        .file("csrc/autocast.cpp")
        .compile("difflab_autocast");
}

//! The shipped Fashion-MNIST reference classifier: its recorded accuracy and hash, its accuracy
//! on real test images, reproducible training, and classifier-FID rising with degradation.
//! Tests that need Debian's `dataset-fashion-mnist` skip (with a message) when it is absent,
//! and fail when `CI` is set.

#[path = "../../../tests/support/needs.rs"]
mod needs;

use std::path::{Path, PathBuf};

use difflab_data::{DEFAULT_FASHION_MNIST_DIR, DataConfig, DataKind, LabelMode};
use difflab_eval::real_data::{Part, RealData};
use difflab_eval::{
    FeatureStats, ReferenceClassifier, TrainOptions, extract_features, frechet_distance,
    sha256_file, train_classifier,
};
use tch::{Device, Kind, Tensor};

fn weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../checkpoints/fashion-mnist-lenet.safetensors")
}

fn have_dataset() -> bool {
    needs::available(
        &format!("{DEFAULT_FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)"),
        Path::new(DEFAULT_FASHION_MNIST_DIR).is_dir(),
    )
}

#[test]
fn recorded_accuracy_and_hash_match_the_shipped_weights() {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(weights().with_extension("json")).expect("reference json"),
    )
    .unwrap();
    assert!(json["test_accuracy"].as_f64().unwrap() >= 0.88, "{json}");
    assert_eq!(json["weights_sha256"], sha256_file(&weights()).unwrap());
    assert_eq!(json["spec"]["feature_dim"], 128);
    assert_eq!(json["spec"]["input_size"], 32);
    // Small enough to ship.
    let total: u64 = ["safetensors", "json", "test-stats.safetensors"]
        .iter()
        .map(|ext| {
            std::fs::metadata(weights().with_extension(ext))
                .unwrap()
                .len()
        })
        .sum();
    assert!(total < 1_000_000, "{total} bytes");
}

fn test_images(n: usize) -> (ReferenceClassifier, Tensor, Tensor) {
    let classifier = ReferenceClassifier::load(&weights(), Device::Cpu).expect("loads, hash ok");
    let test = RealData::open(&classifier.meta.data, Part::Test, 0).unwrap();
    let (x, y) = test.load(&(0..n).collect::<Vec<_>>()).unwrap();
    (classifier, x, y.unwrap())
}

#[test]
fn shipped_weights_classify_real_test_images() {
    if !have_dataset() {
        return;
    }
    let (classifier, x, y) = test_images(1000);
    let out = extract_features(&classifier.net, &x, 500, Device::Cpu).unwrap();
    let acc = out
        .predictions
        .eq_tensor(&y)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    eprintln!("accuracy on the first 1000 test images: {acc:.4}");
    assert!(acc >= 0.87, "{acc}");
    assert_eq!(out.features.size(), [1000, 128]);
}

/// A 5×5 box blur of `[N, 1, H, W]` images, applied `times` times.
fn blur(x: &Tensor, times: usize) -> Tensor {
    let k = Tensor::ones([1, 1, 3, 3], (Kind::Float, Device::Cpu)) / 9.0;
    let mut y = x.shallow_clone();
    for _ in 0..times {
        y = y.conv2d(&k, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    }
    y
}

#[test]
fn classifier_fid_rises_with_noise_and_blur() {
    if !have_dataset() {
        return;
    }
    let (classifier, x, _) = test_images(400);
    let stats = classifier
        .test_stats()
        .unwrap()
        .expect("shipped test stats");
    let cfid = |images: &Tensor| {
        let f = extract_features(&classifier.net, images, 500, Device::Cpu)
            .unwrap()
            .features;
        frechet_distance(&FeatureStats::from_features(&f).unwrap(), &stats).unwrap()
    };
    tch::manual_seed(0);
    let noise = Tensor::randn(x.size(), (Kind::Float, Device::Cpu));
    let by_noise: Vec<f64> = [0.0, 0.1, 0.2, 0.4, 0.8]
        .iter()
        .map(|s| cfid(&(&x + &noise * *s).clamp(-1.0, 1.0)))
        .collect();
    let by_blur: Vec<f64> = [0, 1, 2, 4, 8]
        .iter()
        .map(|&t| cfid(&blur(&x, t)))
        .collect();
    eprintln!("cFID vs noise σ 0, .1, .2, .4, .8: {by_noise:?}");
    eprintln!("cFID vs blur passes 0, 1, 2, 4, 8: {by_blur:?}");
    for v in [&by_noise, &by_blur] {
        assert!(v.windows(2).all(|w| w[1] > w[0]), "not increasing: {v:?}");
    }
}

#[test]
fn training_is_reproducible() {
    if !have_dataset() {
        return;
    }
    let data = DataConfig {
        kind: DataKind::FashionMnist,
        resolution: 32,
        channels: 1,
        label_mode: LabelMode::Class,
        limit: Some(256),
        ..DataConfig::default()
    };
    let options = TrainOptions {
        max_steps: Some(4),
        batch_size: 32,
        ..TrainOptions::default()
    };
    let run = || {
        let (c, stats) = train_classifier(&data, 0, &options, Device::Cpu, &mut |_| {}).unwrap();
        let mut vars: Vec<(String, Tensor)> = c.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        (vars, stats)
    };
    let (a, sa) = run();
    let (b, sb) = run();
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs between two identical trainings");
    }
    assert!(sa.mean.equal(&sb.mean));
}

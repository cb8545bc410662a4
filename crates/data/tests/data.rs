//! Datasets and the data loader: folder walking and preprocessing, CSV labels and pairs, IDX
//! files, procedural shapes, 2-D toys, and exact, worker-independent, resumable batch order.

#[path = "../../../tests/support/needs.rs"]
mod needs;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use difflab_data::{
    BadFilePolicy, DataConfig, DataCursor, DataError, DataKind, DataLoader, Dataset, FashionMnist,
    LabelMode, SHAPE_COLORS, SHAPE_NAMES, Split, Toy2dKind, epoch_permutation, flip_decision,
    open_dataset, render_shape, sample_toy2d, spiral_distance,
};
use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use tch::{Kind, Tensor};

/// A fresh, empty directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("difflab-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(w, h, |x, y| Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

fn folder_config(root: &Path, resolution: i64, channels: i64) -> DataConfig {
    DataConfig {
        kind: DataKind::Folder,
        path: Some(root.to_path_buf()),
        resolution,
        channels,
        ..DataConfig::default()
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

/// A batch as plain values: data, class labels, dataset indices.
type Plain = (Vec<f32>, Option<Vec<i64>>, Vec<usize>);

fn batches(loader: &mut DataLoader, n: usize) -> Vec<Plain> {
    (0..n)
        .map(|_| {
            let b = loader.next_batch().unwrap();
            let classes = b
                .class_labels
                .as_ref()
                .map(|c| Vec::<i64>::try_from(c).unwrap());
            (values(&b.x), classes, loader.last_indices().to_vec())
        })
        .collect()
}

// ---------------------------------------------------------------- folder

/// gray png, RGB jpg, RGBA png, a non-square png with an upper-case extension in nested
/// folders, and a text file that must be ignored.
fn mixed_folder(name: &str) -> PathBuf {
    let root = temp_dir(name);
    GrayImage::from_fn(40, 30, |x, _| Luma([(x * 6) as u8]))
        .save(root.join("a_gray.png"))
        .unwrap();
    save_rgb(&root.join("b_rgb.jpg"), 50, 80, |x, y| {
        [(x * 5) as u8, (y * 3) as u8, 128]
    });
    RgbaImage::from_fn(64, 64, |_, _| Rgba([0, 0, 0, 0]))
        .save(root.join("c_transparent.png"))
        .unwrap();
    // 60×20: red in the outer 10 columns on each side, blue in between.
    save_rgb(&root.join("sub/deeper/d_wide.PNG"), 60, 20, |x, _| {
        if (10..50).contains(&x) {
            [0, 0, 255]
        } else {
            [255, 0, 0]
        }
    });
    std::fs::write(root.join("sub/notes.txt"), "not an image").unwrap();
    root
}

#[test]
fn folder_walk_decodes_resizes_and_crops() {
    let root = mixed_folder("walk");
    let ds = open_dataset(&folder_config(&root, 16, 3), 0).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.shape(), vec![3, 16, 16]);
    assert!(ds.describe().contains("4 images"), "{}", ds.describe());
    let n = 16 * 16;
    for i in 0..4 {
        let e = ds.get(i).unwrap();
        assert_eq!(e.data.len(), 3 * n);
        assert!(e.data.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!((e.class, &e.labels, &e.cond), (None, &None, &None));
    }
    // Sorted order: a_gray, b_rgb, c_transparent, sub/deeper/d_wide.
    let gray = ds.get(0).unwrap().data;
    assert_eq!(gray[..n], gray[n..2 * n], "gray is repeated to RGB");
    assert!(gray[0] < gray[15], "the horizontal ramp survives");
    let transparent = ds.get(2).unwrap().data;
    assert!(transparent.iter().all(|&v| v > 0.9999), "alpha on white");
    // The centre crop of the wide image is blue (interior columns, away from the filter's
    // reach into the red border).
    let wide = ds.get(3).unwrap().data;
    for y in 0..16 {
        for x in 3..13 {
            let px = y * 16 + x;
            assert!(wide[px] < -0.95 && wide[2 * n + px] > 0.95, "({x},{y})");
        }
    }
    // One channel: luma.
    let ds1 = open_dataset(&folder_config(&root, 8, 1), 0).unwrap();
    assert_eq!(ds1.shape(), vec![1, 8, 8]);
    let wide1 = ds1.get(3).unwrap().data;
    let blue_luma = 0.114 * 2.0 - 1.0;
    assert!((wide1[4 * 8 + 4] - blue_luma).abs() < 0.02, "{}", wide1[36]);
    // `limit` takes the first examples.
    let mut limited = folder_config(&root, 8, 3);
    limited.limit = Some(2);
    assert_eq!(open_dataset(&limited, 0).unwrap().len(), 2);
}

#[test]
fn corrupt_files_fail_or_skip() {
    let root = temp_dir("corrupt");
    for i in 0..5 {
        save_rgb(&root.join(format!("ok{i}.png")), 8, 8, |_, _| {
            [i * 40, 0, 0]
        });
    }
    std::fs::write(
        root.join("broken.png"),
        b"\x89PNG\r\n\x1a\nthis is not a png",
    )
    .unwrap();
    let ds = open_dataset(&folder_config(&root, 8, 3), 0).unwrap();
    assert_eq!(ds.len(), 6);

    // fail: the batch that reaches the file errors, naming it.
    let mut loader = DataLoader::new(ds.clone(), 6, 1, 2, BadFilePolicy::Fail);
    let err = loader.next_batch().unwrap_err();
    assert!(err.is_bad_file());
    assert!(err.to_string().contains("broken.png"), "{err}");
    assert_eq!(
        loader.cursor(),
        DataCursor::default(),
        "cursor stays at the batch start"
    );
    assert!(
        loader.next_batch().is_err(),
        "and fails again, deterministically"
    );

    // skip: full batches keep coming; the file is counted once.
    let mut loader = DataLoader::new(ds.clone(), 4, 1, 2, BadFilePolicy::Skip);
    for _ in 0..6 {
        let b = loader.next_batch().unwrap();
        assert_eq!(b.x.size(), [4, 3, 8, 8]);
        assert!(
            !loader.last_indices().contains(&0),
            "broken.png (index 0) is never served"
        );
    }
    assert_eq!(loader.skipped(), 1);
    // The same cursor gives the same batches with skipping too, whatever the workers.
    let mut a = DataLoader::new(ds.clone(), 4, 9, 1, BadFilePolicy::Skip);
    let mut b = DataLoader::new(ds.clone(), 4, 9, 3, BadFilePolicy::Skip);
    assert_eq!(batches(&mut a, 5), batches(&mut b, 5));
    assert_eq!(a.cursor(), b.cursor());
}

#[test]
fn all_files_bad_is_an_error_not_a_hang() {
    let root = temp_dir("allbad");
    for i in 0..3 {
        std::fs::write(root.join(format!("x{i}.jpg")), b"nope").unwrap();
    }
    let ds = open_dataset(&folder_config(&root, 8, 3), 0).unwrap();
    let mut loader = DataLoader::new(ds, 2, 0, 2, BadFilePolicy::Skip);
    let err = loader.next_batch().unwrap_err();
    assert!(matches!(err, DataError::NoGoodExamples { .. }), "{err}");
}

#[test]
fn missing_and_empty_folders_name_the_path() {
    let missing = std::env::temp_dir().join("difflab-data-no-such-folder-xyz");
    let err = open_dataset(&folder_config(&missing, 8, 3), 0)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("difflab-data-no-such-folder-xyz"),
        "{err}"
    );

    let empty = temp_dir("empty");
    std::fs::write(empty.join("readme.txt"), "no images").unwrap();
    let err = open_dataset(&folder_config(&empty, 8, 3), 0).err().unwrap();
    assert!(matches!(err, DataError::EmptyFolder(_)));
    assert!(err.to_string().contains(&*empty.to_string_lossy()), "{err}");

    let mut no_path = folder_config(&empty, 8, 3);
    no_path.path = None;
    assert!(
        open_dataset(&no_path, 0)
            .err()
            .unwrap()
            .to_string()
            .contains("data.path")
    );
}

// ---------------------------------------------------------------- labels and pairs

fn labelled_folder(name: &str) -> PathBuf {
    let root = temp_dir(name);
    for f in ["a.png", "b.png", "c.png", "sub/d.png"] {
        save_rgb(&root.join("images").join(f), 8, 8, |_, _| [10, 20, 30]);
    }
    root
}

fn with_labels(root: &Path, csv: &str, mode: LabelMode) -> Result<Arc<dyn Dataset>, DataError> {
    let path = root.join("labels.csv");
    std::fs::write(&path, csv).unwrap();
    let mut config = folder_config(&root.join("images"), 8, 3);
    config.labels = Some(path);
    config.label_mode = mode;
    open_dataset(&config, 0)
}

#[test]
fn class_labels_by_name_sorted_and_stable() {
    let root = labelled_folder("classes");
    let csv = "file,label\n# comment\na.png,dog\nb.png,cat\n\nc.png, dog\nsub/d.png,bird\n";
    let ds = with_labels(&root, csv, LabelMode::Class).unwrap();
    assert_eq!(ds.num_classes(), Some(3));
    assert_eq!(ds.label_dim(), None);
    assert_eq!(ds.label_names().unwrap(), ["bird", "cat", "dog"]);
    let classes: Vec<i64> = (0..4).map(|i| ds.get(i).unwrap().class.unwrap()).collect();
    assert_eq!(classes, [2, 1, 2, 0]);
    // Row order does not change the mapping.
    let shuffled = "sub/d.png,bird\nc.png,dog\nb.png,cat\na.png,dog\n";
    let ds2 = with_labels(&root, shuffled, LabelMode::Class).unwrap();
    assert_eq!(ds2.label_names(), ds.label_names());
    // Through the loader: class tensor matches the examples served.
    let mut loader = DataLoader::new(ds.clone(), 3, 4, 2, BadFilePolicy::Fail);
    let b = loader.next_batch().unwrap();
    let got = Vec::<i64>::try_from(b.class_labels.unwrap()).unwrap();
    let want: Vec<i64> = loader.last_indices().iter().map(|&i| classes[i]).collect();
    assert_eq!(got, want);
    // Numeric labels are indices.
    let numeric = "a.png,0\nb.png,3\nc.png,1\nsub/d.png,1\n";
    let ds3 = with_labels(&root, numeric, LabelMode::Class).unwrap();
    assert_eq!(ds3.num_classes(), Some(4));
    assert_eq!(ds3.get(1).unwrap().class, Some(3));
}

#[test]
fn multi_hot_labels() {
    let root = labelled_folder("multihot");
    let csv = "file,labels\na.png,sky;sea\nb.png,sand\nc.png,\nsub/d.png,sea ; sand;sea\n";
    let ds = with_labels(&root, csv, LabelMode::MultiHot).unwrap();
    assert_eq!(ds.label_dim(), Some(3));
    assert_eq!(ds.num_classes(), None);
    assert_eq!(ds.label_names().unwrap(), ["sand", "sea", "sky"]);
    let l = |i| ds.get(i).unwrap().labels.unwrap();
    assert_eq!(l(0), [0.0, 1.0, 1.0]);
    assert_eq!(l(1), [1.0, 0.0, 0.0]);
    assert_eq!(l(2), [0.0, 0.0, 0.0]);
    assert_eq!(l(3), [1.0, 1.0, 0.0]);
    let mut loader = DataLoader::new(ds, 4, 0, 1, BadFilePolicy::Fail);
    let b = loader.next_batch().unwrap();
    assert_eq!(b.label_vector.unwrap().size(), [4, 3]);
    assert!(b.class_labels.is_none());
}

#[test]
fn bad_label_csv_rows_name_file_and_line() {
    let root = labelled_folder("badcsv");
    let err = |csv: &str, mode| with_labels(&root, csv, mode).err().unwrap().to_string();

    let e = err("file,label\na.png,dog\nb.png,cat,extra\n", LabelMode::Class);
    assert!(
        e.contains("labels.csv:3") && e.contains("expected 2 fields"),
        "{e}"
    );

    let e = err("a.png,dog\nb.png,cat\nzzz.png,dog\n", LabelMode::Class);
    assert!(e.contains("labels.csv:3") && e.contains("zzz.png"), "{e}");

    let e = err("a.png,dog\nb.png,cat;dog\n", LabelMode::Class);
    assert!(
        e.contains("labels.csv:2") && e.contains("exactly one"),
        "{e}"
    );

    let e = err("a.png,dog\na.png,cat\n", LabelMode::Class);
    assert!(e.contains("labels.csv:2") && e.contains("line 1"), "{e}");

    let e = err("a.png,dog\nb.png,cat\n", LabelMode::Class);
    assert!(e.contains("2 of 4 images have no row"), "{e}");

    let e = err("\"a.png,dog\n", LabelMode::Class);
    assert!(
        e.contains("labels.csv:1") && e.contains("unterminated"),
        "{e}"
    );

    // A missing CSV names its path.
    let mut config = folder_config(&root.join("images"), 8, 3);
    config.labels = Some(root.join("nope.csv"));
    config.label_mode = LabelMode::Class;
    let e = open_dataset(&config, 0).err().unwrap().to_string();
    assert!(e.contains("nope.csv"), "{e}");
}

#[test]
fn paired_cond_images_load_and_flip_together() {
    let root = temp_dir("pairs");
    for i in 0..6u8 {
        // The main image and its conditioning image have the same asymmetric content, so the
        // pair must stay equal after a flip.
        let f = move |x: u32, y: u32| [x as u8 * 20 + i, y as u8 * 20, 255 - x as u8 * 10];
        save_rgb(&root.join(format!("photos/{i}.png")), 12, 10, f);
        save_rgb(&root.join(format!("poses/{i}.png")), 12, 10, f);
    }
    let rows: String = (0..6).map(|i| format!("{i}.png,poses/{i}.png\n")).collect();
    std::fs::write(root.join("pairs.csv"), format!("file,cond_file\n{rows}")).unwrap();
    let mut config = folder_config(&root.join("photos"), 8, 3);
    config.cond_images = Some(root.join("pairs.csv"));
    config.hflip = true;
    let ds = open_dataset(&config, 0).unwrap();
    assert_eq!(ds.cond_shape(), Some(vec![3, 8, 8]));
    let e = ds.get(2).unwrap();
    assert_eq!(e.cond.as_ref().unwrap(), &e.data);

    let mut loader = DataLoader::new(ds.clone(), 6, 3, 2, BadFilePolicy::Fail);
    let b = loader.next_batch().unwrap();
    let cond = b.cond_image.unwrap();
    assert_eq!(cond.size(), [6, 3, 8, 8]);
    assert!(cond.equal(&b.x));
    let flips = loader
        .last_indices()
        .iter()
        .filter(|&&i| flip_decision(3, 0, i))
        .count();
    assert!(
        flips > 0 && flips < 6,
        "some but not all flipped with this seed"
    );

    // A cond file that does not exist is named with the row's line.
    std::fs::write(
        root.join("pairs.csv"),
        "0.png,poses/0.png\n1.png,poses/missing.png\n",
    )
    .unwrap();
    let e = open_dataset(&config, 0).err().unwrap().to_string();
    assert!(
        e.contains("pairs.csv:2") && e.contains("missing.png"),
        "{e}"
    );
}

// ---------------------------------------------------------------- IDX / Fashion-MNIST

fn idx_bytes(magic_type: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, magic_type, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// 5 train images (raw files) and 3 test images (gzipped), 28×28, pixel = (i·40 + x) mod 256.
fn write_idx_folder(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    let images = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| (0..28 * 28).map(move |p| ((i * 40 + p % 28) % 256) as u8))
            .collect()
    };
    std::fs::write(
        dir.join("train-images-idx3-ubyte"),
        idx_bytes(8, &[5, 28, 28], &images(5)),
    )
    .unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx_bytes(8, &[5], &[9, 0, 3, 3, 7]),
    )
    .unwrap();
    std::fs::write(
        dir.join("t10k-images-idx3-ubyte.gz"),
        gzip(&idx_bytes(8, &[3, 28, 28], &images(3))),
    )
    .unwrap();
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte.gz"),
        gzip(&idx_bytes(8, &[3], &[1, 2, 5])),
    )
    .unwrap();
    dir
}

fn fmnist_config(dir: &Path) -> DataConfig {
    DataConfig {
        kind: DataKind::FashionMnist,
        path: Some(dir.to_path_buf()),
        resolution: 28,
        channels: 1,
        label_mode: LabelMode::Class,
        ..DataConfig::default()
    }
}

#[test]
fn idx_files_raw_and_gzipped() {
    let dir = write_idx_folder("idx");
    let config = fmnist_config(&dir);
    let ds = open_dataset(&config, 0).unwrap();
    assert_eq!(
        (ds.len(), ds.shape(), ds.num_classes()),
        (5, vec![1, 28, 28], Some(10))
    );
    let e = ds.get(1).unwrap();
    assert_eq!(e.class, Some(0));
    assert_eq!(e.data[0], 40.0 / 127.5 - 1.0);
    assert_eq!(e.data[27], (40.0 + 27.0) / 127.5 - 1.0);
    assert_eq!(e.data.len(), 784);

    let test = open_dataset(
        &DataConfig {
            split: Split::Test,
            ..config.clone()
        },
        0,
    )
    .unwrap();
    assert_eq!(test.len(), 3);
    assert_eq!(test.get(2).unwrap().class, Some(5));

    // Resized to 14 and repeated to 3 channels; multi-hot = one-hot.
    let small = open_dataset(
        &DataConfig {
            resolution: 14,
            channels: 3,
            label_mode: LabelMode::MultiHot,
            ..config.clone()
        },
        0,
    )
    .unwrap();
    assert_eq!(
        (small.shape(), small.label_dim()),
        (vec![3, 14, 14], Some(10))
    );
    let e = small.get(0).unwrap();
    assert_eq!(e.data[..196], e.data[196..392]);
    assert!(e.data[0] < e.data[13], "the ramp survives the resize");
    assert_eq!(e.labels.unwrap()[9], 1.0);
}

#[test]
fn bad_idx_files_are_reported() {
    let dir = write_idx_folder("badidx");
    let config = fmnist_config(&dir);
    let images = dir.join("train-images-idx3-ubyte");
    let good = std::fs::read(&images).unwrap();

    let mut bad_magic = good.clone();
    bad_magic[2] = 0x0d; // float elements
    std::fs::write(&images, &bad_magic).unwrap();
    let e = open_dataset(&config, 0).err().unwrap().to_string();
    assert!(
        e.contains("magic") && e.contains("train-images-idx3-ubyte"),
        "{e}"
    );

    std::fs::write(&images, &good[..good.len() - 10]).unwrap();
    let e = open_dataset(&config, 0).err().unwrap().to_string();
    assert!(e.contains("need 3920 bytes") && e.contains("3910"), "{e}");

    std::fs::write(&images, &good).unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx_bytes(8, &[4], &[0, 1, 2, 3]),
    )
    .unwrap();
    let e = open_dataset(&config, 0).err().unwrap().to_string();
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("[5]"),
        "{e}"
    );

    std::fs::remove_file(dir.join("train-labels-idx1-ubyte")).unwrap();
    let e = open_dataset(&config, 0).err().unwrap().to_string();
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn real_fashion_mnist_train_split() {
    let config = DataConfig {
        kind: DataKind::FashionMnist,
        resolution: 28,
        channels: 1,
        label_mode: LabelMode::Class,
        ..DataConfig::default()
    };
    let dir = config.fashion_mnist_dir();
    let present = dir.join("train-images-idx3-ubyte.gz").exists()
        || dir.join("train-images-idx3-ubyte").exists();
    let what = format!(
        "Fashion-MNIST in {} (apt-get install dataset-fashion-mnist)",
        dir.display()
    );
    if !needs::available(&what, present) {
        return;
    }
    let ds = FashionMnist::open(&config).unwrap();
    assert_eq!(ds.len(), 60_000);
    let mut counts = [0usize; 10];
    for i in 0..ds.len() {
        counts[ds.label(i) as usize] += 1;
    }
    assert_eq!(counts, [6000; 10], "Fashion-MNIST train is balanced");
    let e = ds.get(123).unwrap();
    assert_eq!(e.class, Some(ds.label(123) as i64));
    assert!(e.data.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert!(e.data.iter().any(|&v| v > 0.0), "not a blank image");
}

// ---------------------------------------------------------------- shapes

fn shapes_config(mode: LabelMode) -> DataConfig {
    DataConfig {
        kind: DataKind::Shapes,
        label_mode: mode,
        ..DataConfig::default()
    }
}

#[test]
fn shapes_are_deterministic_balanced_and_visible() {
    let ds = open_dataset(&shapes_config(LabelMode::Class), 7).unwrap();
    assert_eq!(
        (ds.len(), ds.shape(), ds.num_classes()),
        (2000, vec![3, 32, 32], Some(3))
    );
    let again = open_dataset(&shapes_config(LabelMode::Class), 7).unwrap();
    let other = open_dataset(&shapes_config(LabelMode::Class), 8).unwrap();
    assert_eq!(ds.get(5).unwrap(), again.get(5).unwrap());
    assert_ne!(ds.get(5).unwrap().data, other.get(5).unwrap().data);

    let mut counts = [0usize; 3];
    for i in 0..300 {
        counts[ds.get(i).unwrap().class.unwrap() as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| (70..=130).contains(&c)),
        "{counts:?}"
    );

    for i in 0..100 {
        for channels in [1, 3] {
            let r = render_shape(7, i, 32, channels);
            let n = 32 * 32;
            let inside: Vec<usize> = (0..n).filter(|&p| r.coverage[p] == 1.0).collect();
            let outside: Vec<usize> = (0..n).filter(|&p| r.coverage[p] == 0.0).collect();
            assert!(
                inside.len() >= 40,
                "shape {i} covers {} pixels",
                inside.len()
            );
            assert!(outside.len() >= n / 3, "shape {i} leaves background");
            let luma = |p: usize| {
                if channels == 1 {
                    r.data[p]
                } else {
                    0.299 * r.data[p] + 0.587 * r.data[n + p] + 0.114 * r.data[2 * n + p]
                }
            };
            let mean = |ps: &[usize]| ps.iter().map(|&p| luma(p)).sum::<f32>() / ps.len() as f32;
            // ≥ 0.25 luma in [0, 1] is ≥ 0.5 in [−1, 1].
            assert!((mean(&inside) - mean(&outside)).abs() >= 0.49, "shape {i}");
            if channels == 3 {
                let want = SHAPE_COLORS[r.color].1;
                for (ch, w) in want.iter().enumerate() {
                    let got = r.data[ch * n + inside[0]] * 0.5 + 0.5;
                    assert!((got - w).abs() < 1e-5, "fill is the named colour");
                }
            }
        }
    }
    // Anti-aliased: some pixels are partly covered.
    let r = render_shape(7, 0, 32, 3);
    assert!(r.coverage.iter().any(|&c| c > 0.0 && c < 1.0));
    // Any resolution.
    assert_eq!(render_shape(7, 0, 64, 3).data.len(), 3 * 64 * 64);
}

#[test]
fn shapes_multi_hot_is_shape_then_colour() {
    let ds = open_dataset(&shapes_config(LabelMode::MultiHot), 1).unwrap();
    let dim = SHAPE_NAMES.len() + SHAPE_COLORS.len();
    assert_eq!(ds.label_dim(), Some(dim as i64));
    assert_eq!(ds.label_names().unwrap().len(), dim);
    for i in 0..20 {
        let v = ds.get(i).unwrap().labels.unwrap();
        let r = render_shape(1, i, 32, 3);
        let mut want = vec![0.0; dim];
        want[r.shape] = 1.0;
        want[3 + r.color] = 1.0;
        assert_eq!(v, want);
    }
}

// ---------------------------------------------------------------- toy2d

#[test]
fn toy2d_points_are_deterministic_and_on_their_shapes() {
    let spiral = sample_toy2d(Toy2dKind::Spiral, 2000, 3);
    assert_eq!(spiral, sample_toy2d(Toy2dKind::Spiral, 2000, 3));
    assert_ne!(spiral, sample_toy2d(Toy2dKind::Spiral, 2000, 4));
    for p in &spiral {
        assert!(spiral_distance(*p) <= 0.0751, "{p:?}");
        assert!(p.iter().all(|v| v.abs() <= 1.06));
    }
    // Off-spiral points are detected.
    let noise = sample_toy2d(Toy2dKind::EightGaussians, 200, 3);
    let far = noise.iter().filter(|p| spiral_distance(**p) > 0.1).count();
    assert!(far > 50, "{far}");

    for p in sample_toy2d(Toy2dKind::DiscGrid, 1000, 3) {
        let near = |v: f32| {
            [-1.0f32, -1.0 / 3.0, 1.0 / 3.0, 1.0]
                .iter()
                .map(|c| (v - c).abs())
                .fold(f32::MAX, f32::min)
        };
        assert!(near(p[0]).hypot(near(p[1])) <= 0.1001, "{p:?}");
    }
    let radii: Vec<f32> = noise.iter().map(|p| p[0].hypot(p[1])).collect();
    let mean = radii.iter().sum::<f32>() / radii.len() as f32;
    assert!((mean - 1.0).abs() < 0.05, "{mean}");

    let config = DataConfig {
        kind: DataKind::Toy2d,
        ..DataConfig::default()
    };
    let ds = open_dataset(&config, 3).unwrap();
    assert_eq!((ds.len(), ds.shape()), (10_000, vec![2]));
    assert_eq!(
        ds.get(17).unwrap().data,
        sample_toy2d(Toy2dKind::Spiral, 18, 3)[17]
    );
    let mut loader = DataLoader::new(ds, 25, 0, 2, BadFilePolicy::Fail);
    assert_eq!(loader.next_batch().unwrap().x.size(), [25, 2]);
}

// ---------------------------------------------------------------- loader

fn shapes_with_flip(n: usize) -> Arc<dyn Dataset> {
    let mut config = shapes_config(LabelMode::Class);
    config.resolution = 8;
    config.hflip = true;
    config.shapes.num_images = n;
    open_dataset(&config, 11).unwrap()
}

#[test]
fn same_seed_and_cursor_same_batches_any_workers() {
    let ds = shapes_with_flip(23);
    let mut one = DataLoader::new(ds.clone(), 5, 42, 1, BadFilePolicy::Fail);
    let mut two = DataLoader::new(ds.clone(), 5, 42, 2, BadFilePolicy::Fail);
    let mut four = DataLoader::new(ds.clone(), 5, 42, 4, BadFilePolicy::Fail);
    let a = batches(&mut one, 12); // 60 examples: wraps through 3 epochs of 23
    assert_eq!(a, batches(&mut two, 12));
    assert_eq!(a, batches(&mut four, 12));
    assert!(a.iter().all(|b| b.2.len() == 5), "always full batches");
    let mut other_seed = DataLoader::new(ds, 5, 43, 2, BadFilePolicy::Fail);
    assert_ne!(a, batches(&mut other_seed, 12));
}

#[test]
fn seek_resumes_bit_for_bit() {
    let ds = shapes_with_flip(17);
    let mut straight = DataLoader::new(ds.clone(), 4, 5, 2, BadFilePolicy::Fail);
    let head = batches(&mut straight, 3);
    let saved = straight.cursor();
    assert_eq!(
        saved,
        DataCursor {
            epoch: 0,
            index: 12
        }
    );
    let tail = batches(&mut straight, 6);

    // Through JSON, as a checkpoint would store it.
    let json = serde_json::to_string(&saved).unwrap();
    let restored: DataCursor = serde_json::from_str(&json).unwrap();
    let mut resumed = DataLoader::new(ds.clone(), 4, 5, 3, BadFilePolicy::Fail);
    resumed.seek(restored);
    assert_eq!(resumed.cursor(), saved);
    assert_eq!(batches(&mut resumed, 6), tail);
    assert_eq!(resumed.cursor(), straight.cursor());

    // Seeking back on a loader that is already prefetching also works.
    resumed.seek(DataCursor::default());
    assert_eq!(batches(&mut resumed, 3), head);
    // A cursor mid-epoch-2 agrees with the one reached by running.
    let mut far = DataLoader::new(ds, 4, 5, 2, BadFilePolicy::Fail);
    far.seek(DataCursor {
        epoch: 0,
        index: 36,
    }); // normalised to epoch 2, index 2
    assert_eq!(far.cursor(), DataCursor { epoch: 2, index: 2 });
    let mut run = DataLoader::new(far.dataset().clone(), 2, 5, 1, BadFilePolicy::Fail);
    batches(&mut run, 18);
    assert_eq!(run.cursor(), far.cursor());
    let x = batches(&mut far, 2);
    let mut run4 = DataLoader::new(far.dataset().clone(), 4, 5, 1, BadFilePolicy::Fail);
    run4.seek(run.cursor());
    assert_eq!(batches(&mut run4, 2), x);
}

#[test]
fn epochs_visit_every_index_once() {
    let ds = shapes_with_flip(10);
    let mut loader = DataLoader::new(ds, 3, 8, 2, BadFilePolicy::Fail);
    let order: Vec<usize> = batches(&mut loader, 10)
        .into_iter()
        .flat_map(|b| b.2)
        .collect();
    assert_eq!(order[..10], epoch_permutation(10, 8, 0)[..]);
    assert_eq!(order[10..20], epoch_permutation(10, 8, 1)[..]);
    assert_eq!(order[20..30], epoch_permutation(10, 8, 2)[..]);
    for epoch in order.chunks(10) {
        let mut sorted = epoch.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(order[..10], order[10..20], "a new order each epoch");
    assert_eq!(loader.cursor(), DataCursor { epoch: 3, index: 0 });
}

#[test]
fn flips_follow_seed_epoch_and_index() {
    let ds = shapes_with_flip(16);
    let mut loader = DataLoader::new(ds.clone(), 16, 2, 2, BadFilePolicy::Fail);
    let mut flipped = 0;
    for epoch in 0..2u64 {
        let b = loader.next_batch().unwrap();
        let x = values(&b.x);
        for (k, &i) in loader.last_indices().iter().enumerate() {
            let original = ds.get(i).unwrap().data;
            let mut mirrored = original.clone();
            for row in mirrored.chunks_mut(8) {
                row.reverse();
            }
            let got = &x[k * 192..(k + 1) * 192];
            let flip = flip_decision(2, epoch, i);
            flipped += flip as usize;
            assert_eq!(got, if flip { &mirrored[..] } else { &original[..] });
        }
    }
    assert!(flipped > 4 && flipped < 28, "{flipped}");
    // Without hflip nothing is mirrored.
    let plain = open_dataset(
        &DataConfig {
            resolution: 8,
            ..shapes_config(LabelMode::None)
        },
        11,
    )
    .unwrap();
    let mut loader = DataLoader::new(plain.clone(), 4, 2, 1, BadFilePolicy::Fail);
    let x = values(&loader.next_batch().unwrap().x);
    for (k, &i) in loader.last_indices().iter().enumerate() {
        assert_eq!(x[k * 192..(k + 1) * 192], plain.get(i).unwrap().data[..]);
    }
}

// ---------------------------------------------------------------- config

#[test]
fn config_defaults_yaml_and_validation() {
    let c = DataConfig::default();
    assert_eq!(
        (c.kind, c.resolution, c.channels, c.workers),
        (DataKind::Shapes, 32, 3, 2)
    );
    assert_eq!(
        (c.on_bad_file, c.hflip, c.label_mode),
        (BadFilePolicy::Fail, false, LabelMode::None)
    );
    assert_eq!((c.shapes.num_images, c.toy2d.num_points), (2000, 10_000));

    let yaml = "kind: folder\npath: data/x\nlabels: data/l.csv\nlabel_mode: multi_hot\n\
                on_bad_file: skip\ntoy2d:\n  dataset: eight_gaussians\n";
    let c: DataConfig = serde_saphyr::from_str(yaml).unwrap();
    assert_eq!(c.label_mode, LabelMode::MultiHot);
    assert_eq!(c.on_bad_file, BadFilePolicy::Skip);
    assert_eq!(c.toy2d.dataset, Toy2dKind::EightGaussians);
    assert!(c.validate().is_ok());
    // Round trip through JSON (what `--set` overrides go through).
    let back: DataConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
    assert_eq!(back, c);

    assert!(serde_saphyr::from_str::<DataConfig>("kind: folder\nresolutoin: 3\n").is_err());
    let invalid = |c: DataConfig| c.validate().unwrap_err().to_string();
    assert!(
        invalid(DataConfig {
            channels: 2,
            ..DataConfig::default()
        })
        .contains("data.channels")
    );
    assert!(
        invalid(DataConfig {
            label_mode: LabelMode::Class,
            kind: DataKind::Toy2d,
            ..DataConfig::default()
        })
        .contains("toy2d")
    );
    assert!(
        invalid(DataConfig {
            labels: Some("x.csv".into()),
            ..DataConfig::default()
        })
        .contains("kind: folder")
    );
}

//! End-to-end tests of the public API: rendering, errors and PNG output.

use std::path::PathBuf;

use difflab_plot::{Chart, Figure, PlotError, Series};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("difflab-plot-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ramp() -> Chart {
    Chart::new("ramp")
        .x_label("t")
        .y_label("value")
        .series(Series::from_ys("a", &[0.0, 1.0, 4.0, 9.0, 16.0]))
}

fn is_dark(p: &image::Rgb<u8>) -> bool {
    p.0.iter().all(|&c| c < 100)
}

#[test]
fn only_nan_points_is_an_error_naming_the_chart() {
    let chart = Chart::new("all nan").series(Series::from_ys("x", &[f64::NAN, f64::NAN]));
    match chart.render(400, 300) {
        Err(PlotError::NoData { title }) => assert_eq!(title, "all nan"),
        other => panic!("expected NoData, got {other:?}"),
    }
    let err = chart.render(400, 300).unwrap_err();
    assert!(err.to_string().contains("all nan"), "{err}");
    // No series at all, and infinities, are the same.
    assert!(matches!(
        Chart::new("empty").render(400, 300),
        Err(PlotError::NoData { .. })
    ));
    let inf = Chart::new("inf").series(Series::new("x", vec![(0.0, f64::INFINITY)]));
    assert!(matches!(
        inf.render(400, 300),
        Err(PlotError::NoData { .. })
    ));
}

#[test]
fn log_y_skips_non_positive_values() {
    let ys = [-1.0, 0.0, 1e-3, 1.0, f64::NAN, 10.0, 0.0, 1e3];
    let chart = Chart::new("log").log_y().series(Series::from_ys("s", &ys));
    let img = chart.render(400, 300).unwrap();
    assert_eq!(img.dimensions(), (400, 300));
    let blue = difflab_plot::PALETTE[0];
    assert!(img.pixels().any(|p| p.0 == blue), "series not drawn");

    let none_positive = Chart::new("neg")
        .log_y()
        .series(Series::from_ys("s", &[-1.0, 0.0]));
    assert!(matches!(
        none_positive.render(400, 300),
        Err(PlotError::NoData { .. })
    ));
    // The same data is fine on a linear axis.
    let mut linear = none_positive.clone();
    linear.y_scale = difflab_plot::Scale::Linear;
    assert!(linear.render(400, 300).is_ok());
}

#[test]
fn title_is_drawn_in_the_title_area() {
    let titled = ramp().render(640, 420).unwrap();
    let mut untitled_chart = ramp();
    untitled_chart.title.clear();
    let untitled = untitled_chart.render(640, 420).unwrap();

    // Title band: above the axes box (the box starts lower with a title).
    let band = |img: &image::RgbImage, rows: std::ops::Range<u32>| {
        rows.flat_map(|y| (0..img.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| is_dark(img.get_pixel(x, y)))
            .count()
    };
    assert!(band(&titled, 0..28) > 30, "no title ink");
    assert_eq!(band(&untitled, 0..8), 0);
    assert_ne!(titled, untitled);
}

#[test]
fn rendering_is_deterministic() {
    let chart = ramp().series(Series::new("b", vec![(0.0, 3.0), (4.0, -2.0)]));
    assert_eq!(
        chart.render(500, 350).unwrap(),
        chart.render(500, 350).unwrap()
    );
}

#[test]
fn constant_series_renders() {
    let chart = Chart::new("flat").series(Series::from_ys("c", &[2.5; 20]));
    assert!(chart.render(300, 200).is_ok());
    let single = Chart::new("one point").series(Series::new("p", vec![(1.0, 1.0)]));
    let img = single.render(300, 200).unwrap();
    assert!(img.pixels().any(|p| p.0 == difflab_plot::PALETTE[0]));
}

#[test]
fn too_small_is_an_error() {
    assert!(matches!(
        ramp().render(30, 20),
        Err(PlotError::TooSmall {
            width: 30,
            height: 20
        })
    ));
}

#[test]
fn chart_save_png_round_trips() {
    let dir = temp_dir("chart");
    let path = dir.join("ramp.png");
    let chart = ramp();
    chart.save_png(&path, 480, 320).unwrap();
    let back = image::open(&path).unwrap().to_rgb8();
    assert_eq!(back.dimensions(), (480, 320));
    assert_eq!(back, chart.render(480, 320).unwrap());
    // Overwrite in place; no temporary files are left behind.
    chart.save_png(&path, 300, 200).unwrap();
    assert_eq!(
        image::open(&path).unwrap().to_rgb8().dimensions(),
        (300, 200)
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ramp.png")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn save_png_reports_the_path_on_io_error() {
    let dir = temp_dir("ioerr");
    let path = dir.join("missing-subdir").join("x.png");
    match ramp().save_png(&path, 300, 200) {
        Err(PlotError::Io { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Io error, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn figure_grid_sizes() {
    let fig = Figure::new(2)
        .panel_size(320, 240)
        .chart(ramp())
        .chart(ramp().log_y())
        .chart(ramp())
        .chart(ramp());
    assert_eq!(fig.grid(), (2, 2));
    let img = fig.render().unwrap();
    assert_eq!(img.dimensions(), (640, 480));
    // Each panel is the chart rendered alone.
    let alone = ramp().log_y().render(320, 240).unwrap();
    let panel = image::imageops::crop_imm(&img, 320, 0, 320, 240).to_image();
    assert_eq!(panel, alone);

    // Three panels in two columns: the last cell stays white.
    let three = Figure::new(2)
        .panel_size(320, 240)
        .chart(ramp())
        .chart(ramp())
        .chart(ramp());
    let img = three.render().unwrap();
    assert_eq!(img.dimensions(), (640, 480));
    assert!(
        image::imageops::crop_imm(&img, 320, 240, 320, 240)
            .to_image()
            .pixels()
            .all(|p| p.0 == [255, 255, 255])
    );

    // More columns than charts collapses to one row.
    let wide = Figure::new(5).panel_size(320, 240).chart(ramp());
    assert_eq!(wide.render().unwrap().dimensions(), (320, 240));
}

#[test]
fn figure_errors_and_save() {
    assert!(matches!(
        Figure::new(2).render(),
        Err(PlotError::EmptyFigure)
    ));
    let bad = Figure::new(2)
        .chart(ramp())
        .chart(Chart::new("nan panel").series(Series::from_ys("n", &[f64::NAN])));
    match bad.render() {
        Err(PlotError::NoData { title }) => assert_eq!(title, "nan panel"),
        other => panic!("expected NoData, got {other:?}"),
    }

    let dir = temp_dir("figure");
    let path = dir.join("fig.png");
    let fig = Figure::new(2)
        .panel_size(300, 200)
        .chart(ramp())
        .chart(ramp())
        .chart(ramp())
        .chart(ramp());
    fig.save_png(&path).unwrap();
    assert_eq!(
        image::open(&path).unwrap().to_rgb8().dimensions(),
        (600, 400)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Routing and validation of expert ensembles, with stub denoisers.

use difflab_ensemble::{EnsembleError, Expert, ExpertEnsemble};
use difflab_samplers::{
    Conditioning, DdimSampler, Denoiser, FnDenoiser, GlobalSeedNoise, NoiseSource, Sampler,
    X0Processing,
};
use difflab_schedulers::{Prediction, ScheduleConfig, TimestepSpacing};
use tch::{Device, Kind, Tensor};

type Stub = Box<dyn Denoiser>;

/// A denoiser whose output is its id everywhere.
fn stub(id: f64, prediction: Prediction) -> Stub {
    Box::new(FnDenoiser::new(
        prediction,
        move |x: &Tensor, _: &Tensor, _: &Conditioning| x.zeros_like() + id,
    ))
}

fn expert(name: &str, lo: i64, hi: i64, id: f64) -> Expert<Stub> {
    Expert {
        name: name.into(),
        lo,
        hi,
        denoiser: stub(id, Prediction::Eps),
    }
}

#[test]
fn every_timestep_goes_to_exactly_its_expert() {
    let ens = ExpertEnsemble::new(
        vec![
            expert("high", 600, 1000, 2.0),
            expert("low", 0, 250, 0.0),
            expert("mid", 250, 600, 1.0),
        ],
        1000,
    )
    .unwrap();
    let x = Tensor::zeros([1, 2], (Kind::Float, Device::Cpu));
    for t in 0..1000i64 {
        let want = if t < 250 {
            0.0
        } else if t < 600 {
            1.0
        } else {
            2.0
        };
        let got = ens
            .forward(&x, &Tensor::from_slice(&[t]), &Conditioning::none())
            .double_value(&[0, 0]);
        assert_eq!(got, want, "t = {t}");
    }
    // A batch mixing timesteps is routed per sample (the upper bounds 249, 599, 999 included).
    let x = Tensor::zeros([6, 2], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[999i64, 0, 249, 250, 599, 600]);
    let out = ens.forward(&x, &t, &Conditioning::none());
    let got: Vec<f64> = Vec::try_from(out.select(1, 0).to_kind(Kind::Double)).unwrap();
    assert_eq!(got, vec![2.0, 0.0, 0.0, 1.0, 1.0, 2.0]);
}

#[test]
fn conditioning_follows_its_samples_through_routing() {
    let by_label = |offset: f64| -> Stub {
        Box::new(FnDenoiser::new(
            Prediction::Eps,
            move |x: &Tensor, _: &Tensor, c: &Conditioning| {
                x.zeros_like()
                    + c.class_labels
                        .as_ref()
                        .unwrap()
                        .to_kind(Kind::Float)
                        .unsqueeze(1)
                    + offset
            },
        ))
    };
    let ens = ExpertEnsemble::new(
        vec![
            Expert {
                name: "a".into(),
                lo: 0,
                hi: 5,
                denoiser: by_label(0.0),
            },
            Expert {
                name: "b".into(),
                lo: 5,
                hi: 10,
                denoiser: by_label(100.0),
            },
        ],
        10,
    )
    .unwrap();
    let x = Tensor::zeros([4, 1], (Kind::Float, Device::Cpu));
    let cond = Conditioning::classes(Tensor::from_slice(&[1i64, 2, 3, 4]));
    let out = ens.forward(&x, &Tensor::from_slice(&[9i64, 1, 6, 0]), &cond);
    let got: Vec<f64> = Vec::try_from(out.reshape([-1]).to_kind(Kind::Double)).unwrap();
    assert_eq!(got, vec![101.0, 2.0, 103.0, 4.0]);
}

#[test]
fn intervals_must_tile_the_timesteps_exactly() {
    let err = |experts: Vec<Expert<Stub>>| ExpertEnsemble::new(experts, 1000).err().unwrap();
    assert_eq!(err(vec![]), EnsembleError::Empty);
    assert_eq!(
        err(vec![expert("a", 0, 400, 0.0), expert("b", 500, 1000, 1.0)]),
        EnsembleError::Gap {
            lo: 400,
            hi: 500,
            after: Some("a".into())
        }
    );
    assert_eq!(
        err(vec![expert("a", 0, 999, 0.0)]),
        EnsembleError::Gap {
            lo: 999,
            hi: 1000,
            after: Some("a".into())
        }
    );
    assert_eq!(
        err(vec![expert("b", 10, 1000, 0.0)]),
        EnsembleError::Gap {
            lo: 0,
            hi: 10,
            after: None
        }
    );
    assert_eq!(
        err(vec![expert("a", 0, 600, 0.0), expert("b", 500, 1000, 1.0)]),
        EnsembleError::Overlap {
            a: "a".into(),
            b: "b".into(),
            lo: 500,
            hi: 600
        }
    );
    assert!(matches!(
        err(vec![expert("a", 0, 1200, 0.0)]),
        EnsembleError::BadInterval { .. }
    ));
    let mixed = vec![
        expert("a", 0, 500, 0.0),
        Expert {
            name: "v".into(),
            lo: 500,
            hi: 1000,
            denoiser: stub(1.0, Prediction::V),
        },
    ];
    let e = err(mixed);
    assert!(matches!(e, EnsembleError::Prediction { .. }));
    assert!(
        e.to_string().contains("a") && e.to_string().contains("v"),
        "{e}"
    );
}

#[test]
fn an_ensemble_of_the_same_weights_equals_the_single_model() {
    let model = |x: &Tensor, t: &Tensor, _: &Conditioning| {
        (x * 0.9).tanh()
            + t.to_kind(Kind::Float)
                .unsqueeze(1)
                .unsqueeze(2)
                .unsqueeze(3)
                / 5000.0
    };
    let single = FnDenoiser::new(Prediction::Eps, model);
    let copies: Vec<Expert<Box<dyn Denoiser>>> = [(0, 300), (300, 700), (700, 1000)]
        .iter()
        .map(|&(lo, hi)| Expert {
            name: format!("{lo}-{hi}"),
            lo,
            hi,
            denoiser: Box::new(FnDenoiser::new(Prediction::Eps, model)) as Box<dyn Denoiser>,
        })
        .collect();
    let ens = ExpertEnsemble::new(copies, 1000).unwrap();
    let schedule = ScheduleConfig::default().build().unwrap();
    let sampler = DdimSampler::new(
        &schedule,
        20,
        TimestepSpacing::Trailing,
        0,
        true,
        0.0,
        X0Processing::Clip { range: 1.0 },
    )
    .unwrap();
    let run = |d: &dyn Denoiser| {
        let mut noise = GlobalSeedNoise::new(3);
        let x = noise.draw(&[2, 1, 4, 4], Kind::Float, Device::Cpu);
        sampler
            .sample(d, x, &Conditioning::none(), &mut noise, &mut |_| {})
            .unwrap()
    };
    assert!(run(&single).equal(&run(&ens)), "same weights, same samples");
}

/// A stub that logs every timestep it is asked about.
fn logging_stub(
    name: &'static str,
    prediction: Prediction,
    log: std::rc::Rc<std::cell::RefCell<Vec<(&'static str, i64)>>>,
) -> Stub {
    Box::new(FnDenoiser::new(
        prediction,
        move |x: &Tensor, t: &Tensor, _: &Conditioning| {
            log.borrow_mut().push((name, t.int64_value(&[0])));
            x.zeros_like()
        },
    ))
}

#[test]
fn ddim_strides_and_cold_levels_reach_the_expert_of_each_step() {
    use difflab_samplers::{ColdSampler, DdimConfig, SamplerConfig};
    use difflab_schedulers::DegradationConfig;
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let make = |t: i64, split: i64, p: Prediction| {
        ExpertEnsemble::new(
            vec![
                Expert {
                    name: "low".into(),
                    lo: 0,
                    hi: split,
                    denoiser: logging_stub("low", p, log.clone()),
                },
                Expert {
                    name: "high".into(),
                    lo: split,
                    hi: t,
                    denoiser: logging_stub("high", p, log.clone()),
                },
            ],
            t,
        )
        .unwrap()
    };
    // DDIM with 7 trailing steps visits strided timesteps; each goes to its interval's expert.
    let schedule = ScheduleConfig::default().build().unwrap();
    let sampler = SamplerConfig::Ddim(DdimConfig {
        steps: Some(7),
        spacing: TimestepSpacing::Trailing,
        ..DdimConfig::default()
    })
    .build(&schedule, None)
    .unwrap();
    let ens = make(1000, 500, Prediction::Eps);
    let x = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let mut noise = GlobalSeedNoise::new(0);
    let _ = sampler
        .sample(
            &ens,
            x.shallow_clone(),
            &Conditioning::none(),
            &mut noise,
            &mut |_| {},
        )
        .unwrap();
    drop(noise);
    let visited = log.borrow().clone();
    assert_eq!(visited.len(), 7);
    for (name, t) in &visited {
        assert_eq!(*name, if *t < 500 { "low" } else { "high" }, "t = {t}");
    }
    assert!(visited.iter().any(|v| v.0 == "low") && visited.iter().any(|v| v.0 == "high"));

    // Cold sampling: levels 1..=N route the same way (an ensemble over N + 1 levels).
    log.borrow_mut().clear();
    let blur = DegradationConfig::Blur {
        steps: 6,
        sigma_max: 2.0,
    }
    .build(&schedule, Device::Cpu)
    .unwrap();
    let cold = ColdSampler::new(
        blur,
        None,
        difflab_samplers::ColdAlgorithm::Improved,
        X0Processing::None,
    )
    .unwrap();
    let ens = make(7, 4, Prediction::X0);
    let img = Tensor::zeros([1, 1, 8, 8], (Kind::Float, Device::Cpu));
    let mut noise = GlobalSeedNoise::new(0);
    let _ = cold
        .sample(&ens, img, &Conditioning::none(), &mut noise, &mut |_| {})
        .unwrap();
    let visited = log.borrow().clone();
    assert_eq!(
        visited.iter().map(|v| v.1).collect::<Vec<_>>(),
        [6, 5, 4, 3, 2, 1]
    );
    for (name, t) in &visited {
        assert_eq!(*name, if *t < 4 { "low" } else { "high" }, "level {t}");
    }
}

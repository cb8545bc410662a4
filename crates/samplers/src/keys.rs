//! The keys of a `sampler:` section, each optional ([`SamplerKeys`]): what a section is read
//! into before its sampler is known, and what an override (a cascade stage, a command-line
//! flag) changes. Reading checks each key against the sampler as soon as `kind` is known, so a
//! key that does not apply is an error at that key ([`InapplicableKey`]), with the YAML position
//! when the deserializer has one.

use std::fmt;
use std::marker::PhantomData;

use difflab_schedulers::{TimestepSpacing, VarianceType};
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{ColdAlgorithm, SamplerKind};

/// A `sampler:` key set for a sampler that does not use it, e.g.
/// `sampler.eta = 0.5 does not apply to kind: ddpm`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InapplicableKey {
    /// The key, e.g. `eta`.
    pub key: &'static str,
    /// Its value as written (`null` when set to null).
    pub value: String,
    /// The sampler it was set for.
    pub kind: SamplerKind,
    /// The section gave no `kind`, so `kind` is the default (`ddim`).
    pub kind_defaulted: bool,
}

impl fmt::Display for InapplicableKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            key,
            value,
            kind,
            kind_defaulted,
        } = self;
        write!(f, "sampler.{key} = {value} does not apply to kind: {kind}")?;
        if *kind_defaulted {
            write!(f, " (the default: the section sets no `kind`)")?;
        }
        write!(f, "; {kind} takes {}", kind.keys().join(", "))
    }
}

impl std::error::Error for InapplicableKey {}

/// Declares [`SamplerKeys`] from one list of `key: Type [nullable]` entries, with the helpers
/// that visit every key (so none can be forgotten in one of them).
macro_rules! sampler_keys {
    ($( $(#[$doc:meta])+ $key:ident: $ty:ty [$nullable:literal], )+) => {
        /// The keys of a `sampler:` section, each optional: a section as written before its
        /// sampler is resolved, and a set of changes to a [`SamplerConfig`](crate::SamplerConfig)
        /// (a cascade stage's `sampler:`, `difflab sample --steps/--eta/…`), applied with
        /// [`SamplerConfig::apply`](crate::SamplerConfig::apply).
        ///
        /// Reading one rejects unknown keys and, when it has a `kind`, the keys that do not
        /// apply to that sampler.
        #[derive(Clone, Debug, Default, PartialEq, Serialize)]
        pub struct SamplerKeys {
            /// `ddpm`, `ddim` or `cold`. Unset: the config's sampler (a section without `kind`
            /// is `ddim`).
            #[serde(skip_serializing_if = "Option::is_none")]
            pub kind: Option<SamplerKind>,
            $(
                $(#[$doc])+
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $key: Option<$ty>,
            )+
        }

        impl SamplerKeys {
            /// Every key a `sampler:` section may have, `kind` first.
            pub const NAMES: &'static [&'static str] = &["kind", $(stringify!($key)),+];

            /// `self` with every key set in `later` replacing its own (a command line over a
            /// manifest).
            pub fn then(&self, later: &Self) -> Self {
                Self {
                    kind: later.kind.or(self.kind),
                    $($key: later.$key.clone().or_else(|| self.$key.clone()),)+
                }
            }

            /// The keys that are set, `kind` aside, with their values as written.
            pub fn entries(&self) -> Vec<(&'static str, String)> {
                let mut set = Vec::new();
                $(
                    if let Some(v) = &self.$key {
                        set.push((stringify!($key), show(v)));
                    }
                )+
                set
            }

            /// Unset every key that `kind` does not take.
            pub(crate) fn retain_for(&mut self, kind: SamplerKind) {
                $(
                    if !kind.takes(stringify!($key)) {
                        self.$key = None;
                    }
                )+
            }

            /// Read the value of key `name` (any but `kind`) from `map`, checked against the
            /// kind read so far; returns the value as written.
            fn read_value<'de, A: MapAccess<'de>>(
                &mut self,
                name: &'static str,
                map: &mut A,
            ) -> Result<String, A::Error> {
                match name {
                    $(
                        stringify!($key) => {
                            let seed = Checked::<$ty>::new(name, self.kind, $nullable);
                            let value = map.next_value_seed(seed)?;
                            let shown = value.as_ref().map_or_else(|| "null".to_string(), show);
                            self.$key = value;
                            Ok(shown)
                        }
                    )+
                    _ => unreachable!("KeyName yields known keys only"),
                }
            }
        }
    };
}

sampler_keys! {
    /// Denoiser evaluations (`null`: the sampler's default, T for ddpm and cold, 50 for
    /// ddim).
    steps: usize [true],
    /// DDIM η (0 = deterministic).
    eta: f64 [false],
    /// Timestep spacing (ddpm, ddim): leading, trailing or linspace.
    spacing: TimestepSpacing [false],
    /// Added to leading-spaced timesteps (ddpm, ddim).
    steps_offset: usize [false],
    /// DDIM: the step after the last visited timestep goes to ᾱ = 1 (true) or ᾱ_0.
    set_alpha_to_one: bool [false],
    /// DDPM variance: fixed_small or fixed_large.
    variance: VarianceType [false],
    /// Clamp the predicted x₀ to [−clip_sample_range, clip_sample_range].
    clip_sample: bool [false],
    /// Half-width of the clamp.
    clip_sample_range: f64 [false],
    /// Dynamic thresholding of x₀ (Imagen); takes precedence over `clip_sample`.
    thresholding: bool [false],
    /// Quantile used by dynamic thresholding.
    dynamic_thresholding_ratio: f64 [false],
    /// Upper bound of the dynamic threshold.
    sample_max_value: f64 [false],
    /// Cold Diffusion algorithm: 1 or 2.
    cold_algorithm: ColdAlgorithm [false],
}

impl SamplerKeys {
    /// No key set.
    pub fn is_empty(&self) -> bool {
        self.kind.is_none() && self.entries().is_empty()
    }

    /// The first key set that `kind` does not take, as an error.
    pub fn check(&self, kind: SamplerKind) -> Result<(), InapplicableKey> {
        match self.entries().into_iter().find(|(key, _)| !kind.takes(key)) {
            Some((key, value)) => Err(InapplicableKey {
                key,
                value,
                kind,
                kind_defaulted: false,
            }),
            None => Ok(()),
        }
    }

    /// Read a section; `default_kind` is the sampler of a section without `kind` (a config's:
    /// `ddim`), `None` for a set of changes (whose sampler is the config's, checked on apply).
    pub(crate) fn read<'de, D: Deserializer<'de>>(
        deserializer: D,
        default_kind: Option<SamplerKind>,
    ) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("SamplerKeys", Self::NAMES, KeysVisitor { default_kind })
    }
}

impl<'de> Deserialize<'de> for SamplerKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::read(deserializer, None)
    }
}

/// A value as written in YAML: strings bare (`trailing`, `2`), the rest as JSON.
fn show<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_string(),
    }
}

/// A key of a `sampler:` section; anything else is an unknown-field error.
struct KeyName(&'static str);

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = KeyName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sampler key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyName, E> {
                SamplerKeys::NAMES
                    .iter()
                    .find(|&&name| name == v)
                    .map(|&name| KeyName(name))
                    .ok_or_else(|| E::unknown_field(v, SamplerKeys::NAMES))
            }
        }
        deserializer.deserialize_identifier(NameVisitor)
    }
}

/// Reads one value and, when the sampler is already known, fails if its key does not apply to
/// it (the error then points at the value).
struct Checked<T> {
    key: &'static str,
    kind: Option<SamplerKind>,
    nullable: bool,
    _value: PhantomData<T>,
}

impl<T> Checked<T> {
    fn new(key: &'static str, kind: Option<SamplerKind>, nullable: bool) -> Self {
        Self {
            key,
            kind,
            nullable,
            _value: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de> + Serialize> DeserializeSeed<'de> for Checked<T> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<T>, D::Error> {
        if let Some(kind) = self.kind
            && !kind.takes(self.key)
        {
            // Whatever the value: the key is the mistake.
            let value = serde_json::Value::deserialize(deserializer)?;
            return Err(de::Error::custom(InapplicableKey {
                key: self.key,
                value: show(&value),
                kind,
                kind_defaulted: false,
            }));
        }
        if self.nullable {
            Option::<T>::deserialize(deserializer)
        } else {
            T::deserialize(deserializer).map(Some)
        }
    }
}

/// Reads `kind` and fails if a key read before it does not apply (the error then points at
/// `kind`'s value).
struct KindSeed<'a> {
    earlier: &'a [(&'static str, String)],
}

impl<'de> DeserializeSeed<'de> for KindSeed<'_> {
    type Value = SamplerKind;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<SamplerKind, D::Error> {
        let kind = SamplerKind::deserialize(deserializer)?;
        match self.earlier.iter().find(|(key, _)| !kind.takes(key)) {
            Some((key, value)) => Err(de::Error::custom(InapplicableKey {
                key,
                value: value.clone(),
                kind,
                kind_defaulted: false,
            })),
            None => Ok(kind),
        }
    }
}

struct KeysVisitor {
    default_kind: Option<SamplerKind>,
}

impl<'de> Visitor<'de> for KeysVisitor {
    type Value = SamplerKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sampler section: `kind` and the keys of that sampler")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SamplerKeys, A::Error> {
        let mut keys = SamplerKeys::default();
        let mut seen: Vec<&'static str> = Vec::new();
        // Keys read before `kind`, checked once it is known.
        let mut before_kind: Vec<(&'static str, String)> = Vec::new();
        while let Some(KeyName(name)) = map.next_key()? {
            if seen.contains(&name) {
                return Err(de::Error::duplicate_field(name));
            }
            seen.push(name);
            if name == "kind" {
                keys.kind = Some(map.next_value_seed(KindSeed {
                    earlier: &before_kind,
                })?);
            } else {
                let value = keys.read_value(name, &mut map)?;
                if keys.kind.is_none() {
                    before_kind.push((name, value));
                }
            }
        }
        if keys.kind.is_none()
            && let Some(kind) = self.default_kind
            && let Some((key, value)) = before_kind.into_iter().find(|(key, _)| !kind.takes(key))
        {
            return Err(de::Error::custom(InapplicableKey {
                key,
                value,
                kind,
                kind_defaulted: true,
            }));
        }
        Ok(keys)
    }
}

//! Errors for schedule construction and use.

/// A schedule, timestep or degradation setting that cannot be used, naming the key and value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    /// A configuration value outside its allowed range.
    #[error("invalid {key} = {value}: {reason}")]
    Invalid {
        /// Config key (e.g. `schedule.beta_end`).
        key: &'static str,
        /// The offending value, as written.
        value: String,
        /// What would be accepted.
        reason: String,
    },
}

impl ScheduleError {
    /// Shorthand for [`ScheduleError::Invalid`].
    pub fn invalid(key: &'static str, value: impl ToString, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

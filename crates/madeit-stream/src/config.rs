//! The one error of a method configuration's range check, shared by every method crate.

/// A configuration value outside its valid range, found by a method configuration's
/// `check()`. Every method crate's error wraps it as its `InvalidParameter` variant
/// (`madeit_merge::MergeError::InvalidParameter`,
/// `madeit_adapt::AdaptError::InvalidParameter`), with the same message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value} for `{parameter}` of method `{method}`: {reason}")]
pub struct ParameterError {
    /// Method name.
    pub method: &'static str,
    /// Parameter name.
    pub parameter: &'static str,
    /// The offending value, rendered.
    pub value: String,
    /// The valid range.
    pub reason: &'static str,
}

impl ParameterError {
    /// `parameter` of `method` is `value` (rendered with `to_string`), which breaks
    /// `reason`.
    #[must_use]
    pub fn new(
        method: &'static str,
        parameter: &'static str,
        value: impl ToString,
        reason: &'static str,
    ) -> Self {
        Self {
            method,
            parameter,
            value: value.to_string(),
            reason,
        }
    }

    /// `Ok` when `value` is finite; otherwise the error for `parameter` of `method`.
    ///
    /// # Errors
    /// A `ParameterError` reading "must be finite".
    pub fn finite(method: &'static str, parameter: &'static str, value: f64) -> Result<(), Self> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(Self::new(method, parameter, value, "must be finite"))
        }
    }

    /// `Ok` when `value` lies in `[0, 1]`; otherwise the error for `parameter` of `method`.
    ///
    /// # Errors
    /// A `ParameterError` reading "must lie in [0, 1]".
    pub fn unit_interval(
        method: &'static str,
        parameter: &'static str,
        value: f64,
    ) -> Result<(), Self> {
        if (0.0..=1.0).contains(&value) {
            Ok(())
        } else {
            Err(Self::new(method, parameter, value, "must lie in [0, 1]"))
        }
    }
}

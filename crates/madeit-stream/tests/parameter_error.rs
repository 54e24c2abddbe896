//! The shared range-check error of method configurations.

use madeit_stream::ParameterError;

#[test]
fn finite_accepts_finite_values_and_names_the_rest() {
    for v in [0.0, -1.5, 1e300] {
        assert_eq!(ParameterError::finite("m", "p", v), Ok(()), "{v}");
    }
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = ParameterError::finite("swa", "lambda", v).expect_err("rejected");
        assert_eq!(
            (e.method, e.parameter, e.reason),
            ("swa", "lambda", "must be finite")
        );
        assert_eq!(e.value, v.to_string());
    }
}

#[test]
fn unit_interval_is_closed() {
    for v in [0.0, 0.5, 1.0] {
        assert_eq!(ParameterError::unit_interval("m", "p", v), Ok(()), "{v}");
    }
    for v in [-1e-9, 1.0 + 1e-9, f64::NAN, f64::INFINITY] {
        let e = ParameterError::unit_interval("opcm", "alpha", v).expect_err("rejected");
        assert_eq!(e.reason, "must lie in [0, 1]", "{v}");
    }
}

#[test]
fn message_names_method_parameter_value_and_range() {
    let e = ParameterError::new("c_lw_adamerging", "init", 1.5, "must lie in [0, 1]");
    assert_eq!(
        e.to_string(),
        "invalid value 1.5 for `init` of method `c_lw_adamerging`: must lie in [0, 1]"
    );
}

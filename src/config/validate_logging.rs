//! Checks the `logging` section: whether the access log is on and how many lines a period
//! it may write (`access_rate`, or `none` for no bound).

use super::file::LoggingFile;
use super::types::Logging;
use super::validate::Checker;
use super::values;

pub(super) fn logging(c: &mut Checker, raw: Option<&LoggingFile>) -> Logging {
    let mut out = Logging::default();
    let Some(f) = raw else { return out };
    if let Some(on) = &f.access {
        out.access = on.value;
    }
    if let Some(rate) = &f.access_rate {
        match values::rate(&rate.value) {
            Ok(r) => out.access_rate = r,
            // The generic message speaks of refusing clients; here a zero writes nothing.
            Err(_) if rate.value.trim().starts_with("0/") => c.at(
                rate,
                "logging.access_rate",
                format!(
                    "`{}` would write no line; set logging.access: false to turn the access log off",
                    rate.value
                ),
            ),
            Err(e) => c.at(rate, "logging.access_rate", e),
        }
    }
    out
}

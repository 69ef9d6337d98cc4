//! Counters that continue across a binary upgrade: the old process reads its counter samples
//! ([`counter_samples`]) and sends them, and once it has finished its own connections, what
//! they grew by since ([`growth`]); the new one adds both to its own at every scrape
//! ([`carry_over`]), so `rate()` and `increase()` see no reset and no byte is left out. Gauges are not carried: they
//! say what this process holds now. (The connect-duration histogram restarts.)

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use prometheus::core::Collector;
use prometheus::proto::MetricType;

use super::TollgateCollector;
use crate::control::Handle;

/// One counter series: name, labels (sorted by name), value.
pub type CounterSample = (String, Vec<(String, String)>, f64);

type Key = (String, Vec<(String, String)>);
/// A series by name and labels, borrowed.
type Series<'a> = (&'a str, &'a [(String, String)]);

static CARRIED: RwLock<Option<HashMap<Key, f64>>> = RwLock::new(None);

/// Every counter series of this process as `/metrics` shows it (carried values included).
pub fn counter_samples(control: &Handle) -> Vec<CounterSample> {
    let collector = TollgateCollector {
        control: control.clone(),
        descs: Vec::new(),
    };
    let mut out = Vec::new();
    for family in collector.collect() {
        if family.get_field_type() != MetricType::COUNTER {
            continue;
        }
        for m in family.get_metric() {
            let mut labels: Vec<(String, String)> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            out.push((
                family.name().to_owned(),
                labels,
                m.get_counter().get_value(),
            ));
        }
    }
    out
}

/// Adds `samples` (the previous process's counters, or what they grew by since it sent
/// them) to this process's from now on.
pub fn carry_over(samples: impl IntoIterator<Item = CounterSample>) {
    let mut carried = CARRIED.write().unwrap_or_else(PoisonError::into_inner);
    let map = carried.get_or_insert_with(HashMap::new);
    for (name, mut labels, value) in samples {
        if value.is_finite() && value > 0.0 {
            labels.sort();
            *map.entry((name, labels)).or_default() += value;
        }
    }
}

/// What `now` counts beyond `then` (both from [`counter_samples`]), series by series.
pub fn growth(then: &[CounterSample], now: Vec<CounterSample>) -> Vec<CounterSample> {
    let before: HashMap<Series<'_>, f64> = then
        .iter()
        .map(|(n, l, v)| ((n.as_str(), l.as_slice()), *v))
        .collect();
    now.into_iter()
        .filter_map(|(name, labels, value)| {
            let was = before
                .get(&(name.as_str(), labels.as_slice()))
                .copied()
                .unwrap_or(0.0);
            (value > was).then_some((name, labels, value - was))
        })
        .collect()
}

/// What was carried over for one series (0 when nothing was).
pub(super) fn base(name: &str, pairs: &[(&str, &str)]) -> f64 {
    let carried = CARRIED.read().unwrap_or_else(PoisonError::into_inner);
    let Some(carried) = carried.as_ref().filter(|c| !c.is_empty()) else {
        return 0.0;
    };
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    carried
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

//! Counters that continue across a binary upgrade: the old process reads its counter samples
//! ([`counter_samples`]) and sends them; the new one adds them to its own at every scrape
//! ([`carry_over`]), so `rate()` and `increase()` see no reset. Gauges are not carried: they
//! say what this process holds now. (The connect-duration histogram restarts.)

use std::collections::HashMap;
use std::sync::OnceLock;

use prometheus::core::Collector;
use prometheus::proto::MetricType;

use super::TollgateCollector;
use crate::control::Handle;

/// One counter series: name, labels (sorted by name), value.
pub type CounterSample = (String, Vec<(String, String)>, f64);

type Key = (String, Vec<(String, String)>);

static CARRIED: OnceLock<HashMap<Key, f64>> = OnceLock::new();

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

/// Adds `samples` (the previous process's counters) to this process's from now on. Once per
/// process; later calls change nothing.
pub fn carry_over(samples: impl IntoIterator<Item = CounterSample>) {
    let mut map: HashMap<Key, f64> = HashMap::new();
    for (name, mut labels, value) in samples {
        if value.is_finite() && value > 0.0 {
            labels.sort();
            *map.entry((name, labels)).or_default() += value;
        }
    }
    let _ = CARRIED.set(map);
}

/// What was carried over for one series (0 when nothing was).
pub(super) fn base(name: &str, pairs: &[(&str, &str)]) -> f64 {
    let Some(carried) = CARRIED.get().filter(|c| !c.is_empty()) else {
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

//! The `process_*` families: the prometheus crate's process collector (memory, descriptors,
//! threads, start time), with `process_cpu_seconds_total` measured by tollgate instead.
//!
//! The crate's collector reads the CPU ticks of `/proc/PID/stat` (all threads, rightly) but
//! divides them by the tick rate in integers into an integer counter: a process that has
//! used less than a second shows 0, and a busy one moves in whole seconds. Here the value is
//! `getrusage(RUSAGE_SELF)`: every thread, live or ended, to the microsecond, and it needs no
//! file under `/proc`, so it is still there when descriptors run out.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Metric, MetricFamily, MetricType};

const CPU: &str = "process_cpu_seconds_total";

pub(super) struct ProcessCollector {
    crate_collector: prometheus::process_collector::ProcessCollector,
}

impl ProcessCollector {
    pub(super) fn for_self() -> ProcessCollector {
        ProcessCollector {
            crate_collector: prometheus::process_collector::ProcessCollector::for_self(),
        }
    }
}

impl Collector for ProcessCollector {
    /// The crate's descriptions, `process_cpu_seconds_total` among them: the family is the
    /// same (name, help, type), only its value is measured here.
    fn desc(&self) -> Vec<&Desc> {
        self.crate_collector.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.crate_collector.collect();
        families.retain(|f| f.name() != CPU);
        let help = self.desc().into_iter().find(|d| d.fq_name == CPU);
        if let (Some(desc), Ok(used)) = (help, crate::sys::usage::process_cpu_time()) {
            let mut c = Counter::default();
            c.set_value(used.as_secs_f64());
            let mut m = Metric::default();
            m.set_counter(c);
            let mut f = MetricFamily::default();
            f.set_name(CPU.to_owned());
            f.set_help(desc.help.clone());
            f.set_field_type(MetricType::COUNTER);
            f.mut_metric().push(m);
            families.push(f);
        }
        families
    }
}

//! The walk's unit tests: key paths and masks, and through `load_str`, every unknown key,
//! duplicate and wrong type of a file reported at once.

use super::*;

/// Every error line `load_str` reports for `text`.
fn errors(text: &str) -> Vec<String> {
    let e = crate::config::load_str(text, "t.yaml").unwrap_err();
    e.iter().map(ToString::to_string).collect()
}

const POOL: &str = "pools:\n  web:\n    backends:\n      - address: 127.0.0.1:9000\n";

#[test]
fn every_unknown_key_is_reported_with_the_key_meant() {
    let text = format!(
        "listeners:\n  web:\n    bindd: 127.0.0.1:80\n    pool: web\n    timout: {{idle: 1s}}\n{POOL}    helth_check: {{}}\nworker: 2\n"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].starts_with("t.yaml:3:5: listeners.web.bindd: unknown field `bindd`; did you mean `bind`? (valid keys: `protocol`, `bind`,"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with(
            "t.yaml:5:5: listeners.web.timout: unknown field `timout`; did you mean `timeouts`?"
        ),
        "{e:#?}"
    );
    assert!(e[2].starts_with("t.yaml:10:5: pools.web.helth_check: unknown field `helth_check`; did you mean `health_check`?"), "{e:#?}");
    assert!(e[3].starts_with("t.yaml:11:1: worker: unknown field `worker`; did you mean `workers`? (valid keys: `workers`,"), "{e:#?}");
}

#[test]
fn every_duplicate_key_is_reported_at_its_place() {
    let e = errors(&format!(
        "workers: 1\nworkers: 2\nlisteners:\n  web:\n    bind: 127.0.0.1:80\n    pool: web\n    pool: web\n{POOL}"
    ));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(
        e[0],
        "t.yaml:2:1: workers: duplicate key `workers` (first at line 1, column 1)"
    );
    assert!(
        e[1].starts_with("t.yaml:7:5: listeners.web.pool: duplicate key"),
        "{e:#?}"
    );
}

#[test]
fn every_wrong_type_is_reported_and_the_rest_still_validated() {
    let text = format!(
        "workers: [1, 2]\nlisteners:\n  web:\n    bind: 127.0.0.1:80\n    pool: web\n    limits:\n      max_connections: abc\n    timeouts: {{idle: 5}}\n{POOL}        weight: -1\n"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].starts_with(
            "t.yaml:1:10: workers: invalid type: a sequence, expected `auto` or a number"
        ),
        "{e:#?}"
    );
    assert_eq!(
        e[1],
        "t.yaml:7:24: listeners.web.limits.max_connections: invalid type: the string \"abc\", expected a whole number"
    );
    // A bad value the walk took is still checked by validation.
    assert!(
        e[2].starts_with("t.yaml:8:22: listeners.web.timeouts.idle: `5` is not a duration"),
        "{e:#?}"
    );
    assert_eq!(
        e[3],
        "t.yaml:13:17: pools.web.backends[0].weight: -1 is negative; expected a whole number"
    );
}

#[test]
fn a_refused_pool_is_not_reported_again_as_missing() {
    let e = errors(
        "listeners:\n  web:\n    bind: 127.0.0.1:80\n    pool: web\npools:\n  web: [127.0.0.1:9000]\n",
    );
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("t.yaml:6:8: pools.web: invalid type: a sequence, expected a mapping"),
        "{e:#?}"
    );
}

#[test]
fn keys_that_are_not_names_are_errors() {
    let e = errors(&format!(
        "listeners:\n  ~: {{bind: 127.0.0.1:80, pool: web}}\n{POOL}"
    ));
    assert!(
        e[0].starts_with("t.yaml:2:3: listeners: a key must be a name, not null"),
        "{e:#?}"
    );
}

#[test]
fn key_paths_nest() {
    assert_eq!(parent("a.b[2]"), "a.b");
    assert_eq!(parent("a.b"), "a");
    assert_eq!(parent("a"), "");
    assert!(under("a.b[2].c", "a.b"));
    assert!(under("a.b", "a.b"));
    assert!(!under("a.bc", "a.b"));
    assert!(under("anything", ""));
}

#[test]
fn a_refused_setting_masks_its_record_and_the_records_above() {
    let mut w = Walk::new("", "t");
    w.refused("listeners.web.limits.max_connections", false, false);
    assert!(w.masks("listeners.web.limits.per_source.max_tracked_sources"));
    assert!(w.masks("listeners.web"));
    assert!(!w.masks("listeners.web.bind"));
    assert!(!w.masks("listeners.api.limits.max_connections"));
}

#[test]
fn a_refused_entry_masks_only_itself_and_what_counts_entries() {
    let mut w = Walk::new("", "t");
    w.refused("pools.web.backends[0]", false, true);
    assert!(w.masks("pools.web.backends"));
    assert!(w.masks("pools.web.backends[0].address"));
    assert!(!w.masks("pools.web.backends[1].address"));
}

#[test]
fn a_refused_top_level_setting_masks_only_itself() {
    let mut w = Walk::new("", "t");
    w.refused("workers", false, false);
    assert!(w.masks("workers"));
    assert!(!w.masks("listeners.web.pool"));
    w.refused("pools", true, false);
    assert!(w.masks("anything"));
    assert!(w.masks("listeners.web.pool"));
}

#[test]
fn a_misspelt_key_hides_only_what_its_absence_causes() {
    // `pol` for `pool`: "a pool is required" would be no news.
    let e = errors(&format!(
        "listeners:\n  web:\n    bind: 127.0.0.1:80\n    pol: web\n{POOL}"
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    // With `pool` there as well, its own error still counts.
    let e = errors(&format!(
        "listeners:\n  web:\n    bind: 127.0.0.1:80\n    pol: web\n    pool: nope\n{POOL}"
    ));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[1].starts_with("t.yaml:5:11: listeners.web.pool: no pool named `nope`"),
        "{e:#?}"
    );
}
